"""The Helm chart as shipped (its optional dask operator dependency vendored), checked
offline with the real helm v4 binary. The vendored dependency itself: test_chart_dask_operator.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from k8s.chart import (
    CHART_CRD_DIR, CHART_DIR, CLUSTER_SCOPED_RESOURCES, CRD_DIR, SYNC_SCRIPT,
    grants, helm, of_kind, render, rules_of, the_deployment,
)
from k8s.tools import FETCH_SCRIPT, k8s_tools

KUBERNETES_VERSION = "1.33"  # kubernetes-validate schema set; matches the fetched kubectl
GROUP = "kmeanspartition.dev"

# (values, expected watch namespace or None for cluster-wide)
MODES = {
    "cluster-wide": ((), None),
    "watch-namespace": (("watchNamespace=team-a",), "team-a"),
    "release-namespace": (("clusterWide=false",), "kmp-system"),
}

# What the operator does in a watched namespace (api group, resource, verb), from its code:
# kopf lists/watches the resource and patches its metadata, reconcile GETs it and merge-
# patches status (also the runner Role's only verb, which the operator must hold to grant);
# kopf watches Jobs and DaskClusters (on.event); children (NetworkPolicy and the Dask TLS
# Secret included) are get/create/delete by name (the storage Secret's label check is a get);
# pods are listed by label; kopf posts core/v1 Events.
OPERATOR_NEEDS = {
    *[(GROUP, "kmeanspartitions", verb) for verb in ("get", "list", "watch", "patch")],
    (GROUP, "kmeanspartitions/status", "patch"),
    *[(group, resource, verb)
      for group, resource in [("kubernetes.dask.org", "daskclusters"), ("batch", "jobs")]
      for verb in ("get", "list", "watch", "create", "delete")],
    *[(group, resource, verb)
      for group, resource in [("", "configmaps"), ("", "serviceaccounts"),
                              ("rbac.authorization.k8s.io", "roles"),
                              ("rbac.authorization.k8s.io", "rolebindings"),
                              ("networking.k8s.io", "networkpolicies"), ("", "secrets")]
      for verb in ("get", "create", "delete")],
    ("", "pods", "list"),
    ("", "events", "create"),
}


@pytest.fixture(scope="module")
def chart() -> Path:
    """The chart directory itself, never a trimmed copy."""
    return CHART_DIR


@pytest.fixture(scope="module", params=sorted(MODES))
def mode(request, chart):
    sets, watch_namespace = MODES[request.param]
    return render(chart, *sets), watch_namespace


def test_real_helm_v4_and_kubectl_binaries():
    """kubectl is only version-checked here: every kubectl verb that could check the rendered
    manifests (`create/apply --dry-run=client -f`, `--validate`) first asks an API server for
    its discovery data (tried: "unable to recognize ...: connection refused" offline), and
    there is no server here. Offline checks use helm (lint/template) plus kubernetes-validate
    (the API's OpenAPI schemas); kubectl comes in the same download as helm, for use against a
    real cluster (docs/deploy.md)."""
    tools = k8s_tools()
    assert helm("version", "--short").stdout.startswith("v4.")
    kubectl = subprocess.run([str(tools["kubectl"]), "version", "--client"],
                             capture_output=True, text=True, check=True)
    assert "Client Version: v1." in kubectl.stdout


def test_fetch_script_is_idempotent_once_tools_exist():
    k8s_tools()
    result = subprocess.run(["bash", str(FETCH_SCRIPT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "helm:    v4." in result.stdout and "kubectl: Client Version: v1." in result.stdout
    assert "packing" not in result.stderr  # nothing fetched again


@pytest.mark.parametrize("sets", [(), ("watchNamespace=team-a",), ("clusterWide=false",),
                                  ("rbac.kopfPeering=true", "rbac.kopfScanning=false"),
                                  ("daskOperator.enabled=true",)])
def test_lint_strict_passes(chart, sets):
    args = ["lint", "--strict", str(chart)]
    for item in sets:
        args += ["--set", item]
    result = helm(*args)
    assert "0 chart(s) failed" in result.stdout + result.stderr


def test_lint_of_the_shipped_chart_finds_nothing_to_warn_about(chart):
    result = helm("lint", "--strict", str(chart), check=False)
    findings = [line for line in result.stdout.splitlines() if re.match(r"\[(WARNING|ERROR)\]", line)]
    assert result.returncode == 0 and findings == [], result.stdout + result.stderr


def test_crds_are_byte_identical_to_top_level():
    top = {p.name: p.read_bytes() for p in sorted(CRD_DIR.glob("*.yaml"))}
    in_chart = {p.name: p.read_bytes() for p in sorted(CHART_CRD_DIR.glob("*.yaml"))}
    assert top, f"no CRDs in {CRD_DIR}"
    assert in_chart == top, f"charts/kmeans-partition/crds/ differs from crds/: run {SYNC_SCRIPT}"


def test_mode_selects_rbac_kinds_and_operator_args(mode):
    docs, watch_namespace = mode
    args = the_deployment(docs)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "operator"
    if watch_namespace is None:
        assert "--all-namespaces" in args and "--namespace" not in args
        assert not of_kind(docs, "Role") and not of_kind(docs, "RoleBinding")
        assert {d["metadata"]["name"] for d in of_kind(docs, "ClusterRoleBinding")} == {
            "kmp-system-kmp-kmeans-partition", "kmp-system-kmp-kmeans-partition-kopf-scanning"}
    else:
        assert args[args.index("--namespace") + 1] == watch_namespace
        assert "--all-namespaces" not in args
        (role,) = of_kind(docs, "Role")
        (binding,) = of_kind(docs, "RoleBinding")
        assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == watch_namespace
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": role["metadata"]["name"]}
        (cluster_role,) = of_kind(docs, "ClusterRole")
        assert cluster_role["metadata"]["name"].endswith("-kopf-scanning")


def _granted(rules: list[dict]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_operator_gets_every_permission_it_needs(mode):
    docs, watch_namespace = mode
    kind = "ClusterRole" if watch_namespace is None else "Role"
    (role,) = [d for d in of_kind(docs, kind) if not d["metadata"]["name"].endswith("-kopf-scanning")]
    assert _granted(role["rules"]) == OPERATOR_NEEDS  # exactly: nothing missing, nothing extra
    rules = rules_of(docs, kind)
    all_cluster_rules = rules_of(docs, "ClusterRole")
    assert grants(all_cluster_rules, "apiextensions.k8s.io", "customresourcedefinitions", "watch")
    # kopf lists/watches namespaces only when it is not cluster-wide.
    assert grants(all_cluster_rules, "", "namespaces", "watch") == (watch_namespace is not None)


def test_bindings_name_the_operator_service_account(mode):
    docs, _ = mode
    (account,) = of_kind(docs, "ServiceAccount")
    deployment = the_deployment(docs)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    for binding in of_kind(docs, "RoleBinding") + of_kind(docs, "ClusterRoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                        "namespace": "kmp-system"}]


@pytest.mark.parametrize("extra", [(), ("rbac.kopfPeering=true",)])
@pytest.mark.parametrize("mode_name", sorted(MODES))
def test_no_cluster_scoped_rule_in_a_role_and_no_wildcards(chart, mode_name, extra):
    docs = render(chart, *MODES[mode_name][0], *extra)
    for rule in rules_of(docs, "Role"):
        assert not CLUSTER_SCOPED_RESOURCES & set(rule["resources"]), rule
    for rule in rules_of(docs, "Role") + rules_of(docs, "ClusterRole"):
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
        if "secrets" in rule["resources"]:  # by name only: no rule lets the operator list or watch Secrets
            assert rule["resources"] == ["secrets"] and set(rule["verbs"]) == {"get", "create", "delete"}, rule


def test_kopf_peering_rules_follow_the_mode(chart):
    namespaced = render(chart, "watchNamespace=team-a", "rbac.kopfPeering=true")
    clusterwide = render(chart, "rbac.kopfPeering=true")
    assert grants(rules_of(namespaced, "Role"), "kopf.dev", "kopfpeerings", "patch")
    assert grants(rules_of(clusterwide, "ClusterRole"), "kopf.dev", "clusterkopfpeerings", "patch")
    assert not grants(rules_of(render(chart), "ClusterRole"), "kopf.dev", "clusterkopfpeerings", "get")


def test_deployment_runs_one_hardened_replica(mode):
    docs, _ = mode
    deployment = the_deployment(docs)
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert container["image"] == "ghcr.io/kmeans-partition/kmeans-partition:0.1.0"


def test_liveness_probe_hits_the_kopf_liveness_endpoint(chart):
    deployment = the_deployment(render(chart, "operator.livenessPort=9090"))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--liveness") + 1] == "http://0.0.0.0:9090/healthz"
    probe = container["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe["path"] == "/healthz"
    assert ports[probe["port"]] == 9090


def test_image_values_reach_the_operator(chart):
    deployment = the_deployment(render(
        chart, "image.repository=registry.example/kmp", "image.tag=9.9.9", "image.pullPolicy=Always"))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/kmp:9.9.9"
    assert container["imagePullPolicy"] == "Always"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KMP_DEFAULT_IMAGE"] == "registry.example/kmp:9.9.9"


def test_every_object_has_recommended_labels(mode):
    docs, _ = mode
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "kmeans-partition"
        assert labels["app.kubernetes.io/instance"] == "kmp"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


@pytest.mark.parametrize("mode_name", sorted(MODES))
def test_rendered_manifests_validate_against_kubernetes_schemas(chart, mode_name):
    docs = render(chart, *MODES[mode_name][0], "rbac.kopfPeering=true", crds=True)
    builtin = [d for d in docs if not d["apiVersion"].startswith(GROUP)]
    assert {d["kind"] for d in builtin} >= {"Deployment", "ServiceAccount", "ClusterRole",
                                            "ClusterRoleBinding", "CustomResourceDefinition"}
    problems = []
    for doc in builtin:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(p) for p in error.path)
            problems.append(f"{doc['kind']} {doc['metadata']['name']}: {where}: {error.message}")
    assert problems == []


def test_kubernetes_validate_catches_a_broken_manifest(chart):
    """The validator used above is not vacuous: a misspelled field fails."""
    deployment = the_deployment(render(chart))
    deployment["spec"]["replicaz"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("bad, path", [
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("unknownKey=1", "unknownKey"),
    ("watchNamespace=Team_A", "/watchNamespace"),
    ("securityContext.runAsUser=0", "/securityContext/runAsUser"),
    ("operator.livenessPort=80", "/operator/livenessPort"),
    ("rbac.extra=true", "extra"),
])
def test_values_schema_rejects_bad_values(chart, bad, path):
    result = helm("template", "kmp", str(chart), "--set", bad, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert path in result.stderr


def _leaf_paths(values: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            paths += _leaf_paths(value, path + ".")
        else:
            paths.append(path)
    return paths


def _resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_values_schema_is_strict_and_covers_every_value():
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    for path in _leaf_paths(values):
        node = schema
        for key in path.split("."):
            node = _resolve(schema, node)
            if isinstance(node.get("additionalProperties"), dict):  # a typed map: any key
                break
            assert node.get("additionalProperties") is False, f"{path}: parent of {key} not strict"
            assert key in node["properties"], f"{path} missing from values.schema.json"
            node = node["properties"][key]


def test_notes_explain_apply_watch_and_output(chart):
    for sets, namespace_hint in [((), "<namespace>"), (("watchNamespace=team-a",), "team-a")]:
        args = ["install", "kmp", str(chart), "--dry-run=client", "--namespace", "kmp-system"]
        for item in sets:
            args += ["--set", item]
        notes = helm(*args).stdout.split("NOTES:", 1)[1]
        assert f"kubectl -n {namespace_hint} apply -f examples/kmeanspartition-cpu.yaml" in notes
        assert "get kmp -w" in notes
        assert "centroid=<N>/" in notes
        assert "kubectl apply --server-side -f" in notes


def test_one_release_per_namespace_never_collides_on_cluster_scoped_names(chart):
    names = []
    for namespace in ("team-a", "team-b"):
        docs = render(chart, "clusterWide=false", namespace=namespace)
        names.append({d["metadata"]["name"] for d in docs
                      if d["kind"] in ("ClusterRole", "ClusterRoleBinding")})
    assert names[0] and names[1] and not names[0] & names[1]


def test_kube_version_covers_what_the_crd_uses(chart):
    """CEL rules with `fieldPath` need Kubernetes >= 1.28 (the field was added to ValidationRule there)."""
    from kmeans_partition.operator.crd import SPEC_RULES

    metadata = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    minimum = re.fullmatch(r">=\s*1\.(\d+)\.\d+(-0)?", metadata["kubeVersion"])
    assert minimum, metadata["kubeVersion"]
    if any("fieldPath" in rule for rule in SPEC_RULES):
        assert int(minimum.group(1)) >= 28
    result = helm("template", "kmp", str(chart), "--kube-version", "1.27.9", check=False)
    assert result.returncode != 0 and "kubeVersion" in result.stderr + result.stdout, result.stderr
    assert helm("template", "kmp", str(chart), "--kube-version", "1.28.0", check=False).returncode == 0
