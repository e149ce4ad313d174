"""`kmeans-partition render`: the children the operator would create, equal to what the reconcile creates."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from k8s.harness import kube  # noqa: F401  (fixture)

from kmeans_partition.cli import main
from kmeans_partition.k8s_http import load_api_client
from kmeans_partition.operator import labels as L
from kmeans_partition.operator.crd import build_crd
from kmeans_partition.operator.kube_api import KubeApi
from kmeans_partition.operator.reconcile import reconcile
from kmeans_partition.operator.render import PLACEHOLDER_UID
from kmeans_partition.spec import API_GROUP, API_VERSION, PLURAL

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
KINDS = ["ConfigMap", "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy", "Secret", "DaskCluster", "Job"]
SERVER_SET = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields")
PLURALS = {"ConfigMap": "configmaps", "ServiceAccount": "serviceaccounts", "Role": "roles",
           "RoleBinding": "rolebindings", "NetworkPolicy": "networkpolicies", "DaskCluster": "daskclusters", "Job": "jobs",
           "Secret": "secrets"}


def render(capsys, *args: str) -> list[dict]:
    assert main(["render", *args]) == 0
    return list(yaml.safe_load_all(capsys.readouterr().out))


def without_server_fields(obj: dict) -> dict:
    clone = copy.deepcopy(obj)
    clone.pop("status", None)
    for key in SERVER_SET:
        clone["metadata"].pop(key, None)
    return clone


@pytest.mark.parametrize("example", ["kmeanspartition-cpu.yaml", "kmeanspartition-gpu.yaml"])
def test_output_is_yaml_documents_one_per_child(capsys, example):
    path = EXAMPLES / example
    assert main(["render", "-f", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("---\n") and out.count("\n---\n") == len(KINDS) - 1
    docs = list(yaml.safe_load_all(out))
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
    assert [doc["kind"] for doc in docs] == KINDS
    for doc in docs:
        assert doc["metadata"]["namespace"] == "default"
        assert doc["metadata"]["ownerReferences"] == [L.owner_reference(name, PLACEHOLDER_UID)]


def test_namespace_name_and_image_flags(capsys):
    docs = render(capsys, "-f", str(EXAMPLES / "kmeanspartition-cpu.yaml"), "--namespace", "team-a",
                  "--name", "other", "--default-image", "registry.local/kmp:9")
    by_kind = {doc["kind"]: doc for doc in docs}
    assert {doc["metadata"]["namespace"] for doc in docs} == {"team-a"}
    assert by_kind["Job"]["metadata"]["name"] == L.job_name("other")
    assert by_kind["DaskCluster"]["metadata"]["name"] == L.dask_cluster_name("other")
    runner = by_kind["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert runner["image"] == "registry.local/kmp:9"
    assert {"name": "KMP_NAMESPACE", "value": "team-a"} in runner["env"]
    spec_file = yaml.safe_load(by_kind["ConfigMap"]["data"]["spec.yaml"])
    assert spec_file["metadata"] == {"name": "other", "namespace": "team-a"}


def write(tmp_path, doc) -> str:
    path = tmp_path / "cr.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def good_doc() -> dict:
    return yaml.safe_load((EXAMPLES / "kmeanspartition-cpu.yaml").read_text())


@pytest.mark.parametrize(
    "change, needle",
    [(lambda d: d["spec"].update(nClusters=0), "nClusters"),
     (lambda d: d["spec"].pop("outputPath"), "outputPath"),
     (lambda d: d["spec"]["cluster"].update(workers="many"), "cluster.workers"),
     (lambda d: d["spec"].update(storageOptions={"anon": True}), "storageOptions"),
     (lambda d: d.pop("metadata"), "metadata.name"),
     (lambda d: d.update(kind="ConfigMap"), "expected a KMeansPartition manifest")],
)
def test_bad_manifest_is_an_error_naming_the_field(tmp_path, capsys, change, needle):
    doc = good_doc()
    change(doc)
    assert main(["render", "-f", write(tmp_path, doc)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and needle in captured.err


def test_render_equals_what_the_reconcile_creates(kube, monkeypatch, tmp_path, capsys):  # noqa: F811
    """Drive the reconcile against the emulated API server until every child exists, then compare."""
    doc = good_doc()
    name = doc["metadata"]["name"]
    shuffled = tmp_path / "shuffled.yaml"  # free-form maps in another key order: the same children
    shuffled.write_text(yaml.safe_dump(doc, sort_keys=True))
    rendered = render(capsys, "-f", str(EXAMPLES / "kmeanspartition-cpu.yaml"))
    assert render(capsys, "-f", str(shuffled)) == rendered

    kube.install_crd(build_crd())
    stored = kube.create({**doc, "metadata": {"name": name, "namespace": "default"}})
    monkeypatch.setenv("KUBECONFIG", kube.kubeconfig)
    api = KubeApi(load_api_client())
    resource = lambda: kube.get(f"{API_GROUP}/{API_VERSION}", PLURAL, "default", name)  # noqa: E731
    created = reconcile(resource(), api).created
    dask = L.dask_cluster_name(name)
    kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": f"{dask}-scheduler", "namespace": "default",
        "labels": {"dask.org/cluster-name": dask, "dask.org/component": "scheduler"}},
        "spec": {"containers": [{"name": "scheduler", "image": "x"}]}})
    kube.patch("v1", "pods", "default", f"{dask}-scheduler",
               {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, "status")
    kube.patch("kubernetes.dask.org/v1", "daskclusters", "default", dask, {"status": {"phase": "Running"}}, "status")
    created += reconcile(resource(), api).created

    assert created == [f"{d['kind']}/{d['metadata']['name']}" for d in rendered]
    uid = stored["metadata"]["uid"]
    for want in rendered:
        for ref in want["metadata"]["ownerReferences"]:
            assert ref["uid"] == PLACEHOLDER_UID
            ref["uid"] = uid
        if want["kind"] == "Job":  # the runner records the resource's uid as its output's owner
            (owner,) = [e for e in want["spec"]["template"]["spec"]["containers"][0]["env"]
                        if e["name"] == "KMP_OWNER_UID"]
            assert owner["value"] == PLACEHOLDER_UID
            owner["value"] = uid
        got = kube.get(want["apiVersion"], PLURALS[want["kind"]], "default", want["metadata"]["name"])
        if want["kind"] == "Secret":  # rendered: placeholders; created: the generated material, same keys
            assert set(want.pop("stringData")) == set(got.pop("data")) == {"ca.crt", "tls.crt", "tls.key"}
        assert without_server_fields(got) == want, want["kind"]


def test_the_tls_secret_is_rendered_with_placeholders_and_says_so(capsys):
    assert main(["render", "-f", str(EXAMPLES / "kmeanspartition-cpu.yaml")]) == 0
    out = capsys.readouterr().out
    assert "BEGIN" not in out and "PRIVATE KEY-----" not in out
    secret_doc = next(doc for doc in out.split("---\n") if "kind: Secret" in doc)
    assert secret_doc.startswith("# The operator generates this resource's CA and certificate")
    secret = yaml.safe_load(secret_doc)
    assert secret["type"] == "kubernetes.io/tls" and "data" not in secret
    assert all(value.startswith("<generated by the operator") for value in secret["stringData"].values())


def test_tls_false_renders_no_secret(tmp_path, capsys):
    doc = good_doc()
    doc["spec"].setdefault("cluster", {})["tls"] = False
    kinds = [child["kind"] for child in render(capsys, "-f", write(tmp_path, doc))]
    assert kinds == [kind for kind in KINDS if kind != "Secret"]
