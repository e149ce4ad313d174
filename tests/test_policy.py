"""Operator policy: settings -> rules -> a Failed/PolicyViolation resource with nothing created."""

from __future__ import annotations

import pytest
import yaml

from kmeans_partition.operator import handlers
from kmeans_partition.operator import labels as L
from kmeans_partition.operator.policy import Policy, image_allowed, violations
from kmeans_partition.operator.reconcile import reconcile
from kmeans_partition.spec import API_GROUP, API_VERSION, KIND, PLURAL, parse_resource_spec

from k8s.fake_api import FakeApi
from k8s.harness import kube, kopf_failures, run_kopf, wait_for  # noqa: F401  (fixture)
from test_builders import CPU, GPU
from test_e2e_operator import CRD_FILE

STRICT = Policy(allowed_image_prefixes=("registry.local/ml/",), max_workers=4, max_gpus=4,
                allowed_priority_classes=("batch-low",), allow_tolerations=False, allow_affinity=False,
                require_tls=True)


def test_policy_from_settings(monkeypatch):
    assert Policy.from_settings({}) == Policy()
    env = {"KMP_POLICY_ALLOWED_IMAGE_PREFIXES": "registry.local/ml/, ghcr.io/org/kmp",
           "KMP_POLICY_MAX_WORKERS": "4", "KMP_POLICY_MAX_GPUS": "0",
           "KMP_POLICY_ALLOWED_PRIORITY_CLASSES": "batch-low,batch-high", "KMP_POLICY_ALLOW_TOLERATIONS": "false",
           "KMP_POLICY_ALLOW_AFFINITY": "False", "KMP_POLICY_SECRET_LABEL": "kmeanspartition.dev/storage=true",
           "KMP_POLICY_REQUIRE_TLS": "true"}
    assert Policy.from_settings(env) == Policy(
        allowed_image_prefixes=("registry.local/ml/", "ghcr.io/org/kmp"), max_workers=4, max_gpus=0,
        allowed_priority_classes=("batch-low", "batch-high"), allow_tolerations=False, allow_affinity=False,
        secret_label=("kmeanspartition.dev/storage", "true"), require_tls=True)
    assert Policy.from_settings({"KMP_POLICY_SECRET_LABEL": "team"}).secret_label == ("team", None)


@pytest.mark.parametrize("name, value, expects", [
    ("KMP_POLICY_MAX_WORKERS", "-1", "a non-negative integer"),
    ("KMP_POLICY_ALLOW_TOLERATIONS", "perhaps", "true or false"),
    ("KMP_POLICY_SECRET_LABEL", "a=1,b=2", "key=value or key"),
    ("KMP_POLICY_ALLOWED_IMAGE_PREFIXES", " , ", "a comma-separated list"),
])
def test_a_malformed_setting_names_the_variable(name, value, expects):
    with pytest.raises(ValueError, match=f"{name} must be {expects}"):
        Policy.from_settings({name: value})


@pytest.mark.parametrize("image, allowed", [
    ("registry.local/ml/kmp:1", True), ("registry.local/ml", False), ("registry.local/ml-evil/kmp:1", False),
    ("ghcr.io/org/kmp:2", True), ("ghcr.io/org/kmp@sha256:ab", True), ("ghcr.io/org/kmpx:1", False),
    ("ghcr.io/org/kmp", True), ("docker.io/library/python:3", False),
])
def test_image_prefixes_match_on_boundaries(image, allowed):
    assert image_allowed(image, ("registry.local/ml/", "ghcr.io/org/kmp")) is allowed


def test_no_policy_allows_everything():
    assert violations(parse_resource_spec(GPU), Policy()) == []


def test_every_rule_names_its_field():
    found = violations(parse_resource_spec({**GPU, "cluster": {**GPU["cluster"], "tls": False}}), STRICT)
    fields = [problem.split(":", 1)[0] for problem in found]
    assert fields == ["cluster.image", "cluster.gpusPerWorker", "cluster.priorityClassName", "cluster.tolerations",
                      "cluster.affinity", "cluster.tls"]
    assert "3 workers x 2 GPUs = 6 GPUs is more than the 4 allowed" in found[1]
    many = violations(parse_resource_spec({**CPU, "cluster": {"workers": 5}}), STRICT)
    assert many == ["cluster.workers: 5 is more than the 4 allowed per resource (KMP_POLICY_MAX_WORKERS)"]


def test_within_the_policy_is_allowed():
    data = {**GPU, "cluster": {**GPU["cluster"], "workers": 2, "image": "registry.local/ml/kmp:gpu",
                               "priorityClassName": "batch-low", "tolerations": [], "affinity": None}}
    assert violations(parse_resource_spec(data), STRICT) == []
    default_image = {**CPU, "cluster": {"workers": 4}}  # no cluster.image: the operator's own, always allowed
    assert violations(parse_resource_spec(default_image), STRICT) == []


def test_the_operators_tls_variables_cannot_be_overridden_through_cluster_env():
    data = {**CPU, "cluster": {"env": [{"name": "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION", "value": "False"}]}}
    assert violations(parse_resource_spec(data), Policy()) == [
        "cluster.env[0].name: DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION is set by the operator for the "
        "cluster's TLS"]
    data["cluster"]["tls"] = False  # without TLS the operator sets none of them
    assert violations(parse_resource_spec(data), Policy()) == []


def _failed(api, name="docs", namespace="default"):
    status = api.resource(name, namespace)["status"]
    return status["phase"], next(c for c in status["conditions"] if c["type"] == "Failed")


def test_a_violation_fails_the_resource_before_any_child():
    api = FakeApi()
    api.add_resource("docs", {**CPU, "cluster": {"workers": 9, "tolerations": [{"operator": "Exists"}]}})
    outcome = reconcile(api.resource("docs"), api, policy=STRICT)
    phase, failed = _failed(api)
    assert phase == "Failed" and failed["reason"] == "PolicyViolation"
    assert "cluster.workers: 9 is more than the 4 allowed" in failed["message"]
    assert "cluster.tolerations: not allowed" in failed["message"]
    assert api.create_calls == [] and api.kinds() == []
    assert [(e.type, e.reason) for e in outcome.events] == [("Warning", "PolicyViolation")]
    reconcile(api.resource("docs"), api, policy=STRICT)
    assert api.create_calls == []  # Failed is final


def test_a_started_resource_is_not_judged_again():
    """The policy applies before the first child; changing the operator's settings never kills a running job."""
    api = FakeApi()
    api.add_resource("docs", {**CPU, "cluster": {"workers": 9}})
    reconcile(api.resource("docs"), api)
    reconcile(api.resource("docs"), api, policy=STRICT)
    assert api.resource("docs")["status"]["phase"] == "Pending"


SECRET_LABEL = Policy(secret_label=("kmeanspartition.dev/storage", "true"))
SECRET = "s3-creds"  # storage.secretRef of CPU


def _secret(api, labels):
    api.objects[("Secret", "default", SECRET)] = {"metadata": {"name": SECRET, "namespace": "default",
                                                               "labels": labels}}


def test_a_storage_secret_without_the_label_is_refused():
    api = FakeApi()
    api.add_resource("docs", CPU)
    _secret(api, {"kmeanspartition.dev/storage": "false"})
    reconcile(api.resource("docs"), api, policy=SECRET_LABEL)
    phase, failed = _failed(api)
    assert phase == "Failed" and failed["reason"] == "PolicyViolation"
    assert failed["message"].startswith("storage.secretRef: Secret default/s3-creds lacks the label "
                                        "kmeanspartition.dev/storage=true")
    assert api.create_calls == []


def test_a_labelled_secret_is_used_and_a_missing_one_is_waited_for():
    api = FakeApi()
    api.add_resource("docs", CPU)
    reconcile(api.resource("docs"), api, policy=SECRET_LABEL)
    status = api.resource("docs")["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "DaskClusterReady")
    assert status["phase"] == "Pending" and ready["reason"] == "WaitingForSecret" and api.create_calls == []
    _secret(api, {"kmeanspartition.dev/storage": "true", "other": "x"})
    reconcile(api.resource("docs"), api, policy=SECRET_LABEL)
    assert f"DaskCluster/{L.dask_cluster_name('docs')}" in api.create_calls


def test_a_secret_that_never_comes_fails_at_the_ready_deadline():
    api = FakeApi()
    api.add_resource("docs", {**CPU, "cluster": {"readyTimeoutSeconds": 60}})
    times = iter(["2030-01-01T00:00:00Z"] * 3 + ["2030-01-01T00:02:00Z"] * 9)
    reconcile(api.resource("docs"), api, policy=SECRET_LABEL, now=lambda: next(times))
    reconcile(api.resource("docs"), api, policy=SECRET_LABEL, now=lambda: next(times))
    phase, failed = _failed(api)
    assert phase == "Failed" and failed["reason"] == "DaskClusterNotReady"
    assert "last: WaitingForSecret: storage.secretRef: Secret default/s3-creds does not exist" in failed["message"]


def test_kopf_operator_reads_the_policy_from_its_environment(kube, tmp_path):  # noqa: F811
    """The operator process as deployed: KMP_POLICY_* env -> the resource Failed, nothing created."""
    kube.install_crd(yaml.safe_load(CRD_FILE.read_text()))
    handlers.reset_api()
    resource = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "metadata": {"name": "big"},
                "spec": {**CPU, "cluster": {"workers": 50}}}
    with run_kopf(kube, "kmeans_partition.operator.handlers", extra_env={"KMP_POLICY_MAX_WORKERS": "8"}) as operator:
        kube.create(resource)
        final = wait_for(lambda: (kube.get(f"{API_GROUP}/{API_VERSION}", PLURAL, "default", "big") or {})
                         .get("status", {}).get("phase") == "Failed" and
                         kube.get(f"{API_GROUP}/{API_VERSION}", PLURAL, "default", "big"), timeout=30,
                         message="the resource to fail")
    failed = next(c for c in final["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PolicyViolation" and "cluster.workers: 50 is more than the 8 allowed" in failed["message"]
    assert kube.list("v1", "configmaps", "default") == [] and kube.list("kubernetes.dask.org/v1", "daskclusters", "default") == []
    assert not kopf_failures(operator.output), operator.output[-3000:]
