"""The emulated Kubernetes API: each kmock 0.8 gap we fixed, then kopf end to end."""

from __future__ import annotations

import importlib.metadata
import json
import tomllib
import urllib.request
from pathlib import Path

import kubernetes
import pytest

from k8s.harness import KubeAPIError, kopf_failures, kube, run_kopf, wait_for  # noqa: F401  (fixture)

CM = ("v1", "configmaps", "default")
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_kmock_is_the_exact_version_the_test_extra_pins():
    """tests/k8s/ builds on kmock internals, so the test extra pins kmock exactly."""
    extra = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["test"]
    (pin,) = [req for req in extra if req.startswith("kmock")]
    assert pin == f"kmock=={importlib.metadata.version('kmock')}", pin


@pytest.fixture
def api(kube):
    client = kubernetes.config.new_client_from_config(config_file=kube.kubeconfig)
    yield client
    client.close()


def config_map(name, labels=None, owners=None, finalizers=None):
    meta = {"name": name, "labels": labels or {}}
    if owners:
        meta["ownerReferences"] = [
            {"apiVersion": o["apiVersion"], "kind": o["kind"], "name": o["metadata"]["name"],
             "uid": o["metadata"]["uid"]} for o in owners]
    if finalizers:
        meta["finalizers"] = finalizers
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": "v"}}


def watch_events(kube, path, **params):
    """All events of a watch that the server ends after `timeoutSeconds` (1 s)."""
    query = "&".join(f"{k}={v}" for k, v in {"watch": "true", "timeoutSeconds": 1, **params}.items())
    with urllib.request.urlopen(f"{kube.url}{path}?{query}", timeout=10) as response:
        return [json.loads(line) for line in response.read().splitlines() if line.strip()]


def test_namespaces_are_a_cluster_scoped_resource(kube, api):
    core = kubernetes.client.CoreV1Api(api)
    assert [ns.metadata.name for ns in core.list_namespace().items] == ["default"]
    assert core.read_namespace("default").metadata.uid
    core.create_namespace({"metadata": {"name": "other"}})
    assert {n["metadata"]["name"] for n in kube.request("GET", "/api/v1/namespaces")["items"]} == {"default", "other"}


def test_trailing_slash_discovery_paths(kube):
    assert kube.request("GET", "/version/")["major"] == "1"
    assert "batch" in {group["name"] for group in kube.request("GET", "/apis/")["groups"]}
    assert kube.request("GET", "/api/")["versions"] == ["v1"]
    core = kube.request("GET", "/api/v1/")
    assert core["groupVersion"] == "v1"
    assert {"name": "namespaces", "namespaced": False} .items() <= next(
        r for r in core["resources"] if r["name"] == "namespaces").items()


def test_server_sets_identity_and_versions(kube):
    created = kube.create(config_map("a"))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1 and int(meta["resourceVersion"]) > 0
    patched = kube.patch(*CM, "a", {"data": {"k": "w"}})
    assert patched["metadata"]["uid"] == meta["uid"]
    assert int(patched["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert patched["metadata"]["generation"] == 2
    same = kube.patch(*CM, "a", {"data": {"k": "w"}})  # a no-op write bumps nothing
    assert same["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]


def test_create_answers_201_and_the_client_returns_the_object(kube, api):
    request = urllib.request.Request(
        f"{kube.url}/api/v1/namespaces/default/configmaps", method="POST",
        data=json.dumps(config_map("raw")).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        assert response.status == 201
    made = kubernetes.client.CoreV1Api(api).create_namespaced_config_map("default", config_map("typed"))
    assert made is not None and made.metadata.name == "typed" and made.metadata.uid
    with pytest.raises(kubernetes.client.ApiException) as err:
        kubernetes.client.CoreV1Api(api).create_namespaced_config_map("default", config_map("typed"))
    assert err.value.status == 409
    generated = kube.create({**config_map(""), "metadata": {"generateName": "gen-"}})
    assert generated["metadata"]["name"].startswith("gen-") and len(generated["metadata"]["name"]) > 4


def test_failed_json_patch_test_is_422_and_stale_versions_conflict(kube):
    version = kube.create(config_map("a"))["metadata"]["resourceVersion"]
    kube.patch(*CM, "a", {"data": {"k": "newer"}})
    stale = [{"op": "test", "path": "/metadata/resourceVersion", "value": version},
             {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]}]
    with pytest.raises(KubeAPIError) as err:
        kube.request("PATCH", "/api/v1/namespaces/default/configmaps/a", stale,
                     content_type="application/json-patch+json")
    assert err.value.status == 422
    current = kube.get(*CM, "a")["metadata"]["resourceVersion"]
    fresh = [dict(stale[0], value=current), stale[1]]
    patched = kube.request("PATCH", "/api/v1/namespaces/default/configmaps/a", fresh,
                           content_type="application/json-patch+json")
    assert patched["metadata"]["finalizers"] == ["x/y"]
    with pytest.raises(KubeAPIError) as err:
        kube.patch(*CM, "a", {"metadata": {"resourceVersion": version}, "data": {"k": "lost"}})
    assert err.value.status == 409


def test_watch_honours_resource_version(kube):
    kube.create(config_map("old"))
    listing = kube.request("GET", "/api/v1/namespaces/default/configmaps")
    kube.patch(*CM, "old", {"data": {"k": "changed"}})
    kube.create(config_map("new"))
    since = watch_events(kube, "/api/v1/namespaces/default/configmaps",
                         resourceVersion=listing["metadata"]["resourceVersion"])
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in since] == [("MODIFIED", "old"), ("ADDED", "new")]
    fresh = watch_events(kube, "/api/v1/namespaces/default/configmaps")
    assert sorted((e["type"], e["object"]["metadata"]["name"]) for e in fresh) == [("ADDED", "new"), ("ADDED", "old")]


def test_status_is_a_subresource(kube, api):
    jobs = kubernetes.client.BatchV1Api(api)
    job = {"metadata": {"name": "j"}, "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}],
                                                                     "restartPolicy": "Never"}}},
           "status": {"active": 5}}
    created = kube.request("POST", "/apis/batch/v1/namespaces/default/jobs", job)
    assert "status" not in created  # create drops the status
    main = kube.patch("batch/v1", "jobs", "default", "j", {"status": {"active": 1}, "metadata": {"labels": {"a": "b"}}})
    assert "status" not in main and main["metadata"]["labels"] == {"a": "b"}
    assert main["metadata"]["generation"] == 1  # labels are metadata
    status = kube.patch("batch/v1", "jobs", "default", "j", {"status": {"succeeded": 1}, "spec": {"parallelism": 9}},
                        subresource="status")
    assert status["status"] == {"succeeded": 1} and "parallelism" not in status["spec"]
    assert status["metadata"]["generation"] == 1
    spec = kube.patch("batch/v1", "jobs", "default", "j", {"spec": {"parallelism": 2}})
    assert spec["metadata"]["generation"] == 2 and spec["status"] == {"succeeded": 1}
    assert jobs.read_namespaced_job_status("j", "default").status.succeeded == 1
    kube.create(config_map("plain"))
    with pytest.raises(KubeAPIError) as err:  # a kind without a status subresource
        kube.patch(*CM, "plain", {"status": {}}, subresource="status")
    assert err.value.status == 404


def test_label_and_field_selectors(kube, api):
    for name, labels in {"a": {"app": "x", "tier": "db"}, "b": {"app": "y"}, "c": {}}.items():
        kube.create(config_map(name, labels))

    def names(selector):
        return sorted(o["metadata"]["name"] for o in kube.list(*CM, label_selector=selector))

    assert names("app=x") == ["a"] and names("app!=x") == ["b", "c"]
    assert names("app in (x, y)") == ["a", "b"] and names("app notin (x)") == ["b", "c"]
    assert names("app") == ["a", "b"] and names("!app") == ["c"] and names("app=x,tier=db") == ["a"]
    core = kubernetes.client.CoreV1Api(api)
    assert [c.metadata.name for c in core.list_namespaced_config_map("default", field_selector="metadata.name=b").items] == ["b"]
    events = watch_events(kube, "/api/v1/namespaces/default/configmaps", labelSelector="app%3Dy")
    assert [e["object"]["metadata"]["name"] for e in events] == ["b"]


def test_created_crds_register_in_discovery(kube, api):
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "widgets.example.com"},
           "spec": {"group": "example.com", "scope": "Namespaced",
                    "names": {"kind": "Widget", "plural": "widgets", "shortNames": ["wd"]},
                    "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}}}]}}
    with pytest.raises(KubeAPIError):
        kube.request("GET", "/apis/example.com/v1")
    installed = kube.install_crd(crd)
    assert {c["type"] for c in installed["status"]["conditions"]} == {"Established", "NamesAccepted"}
    listing = kube.request("GET", "/apis/example.com/v1")
    assert {r["name"] for r in listing["resources"]} == {"widgets", "widgets/status"}
    assert "example.com" in {g["name"] for g in kube.request("GET", "/apis")["groups"]}
    kubernetes.client.CustomObjectsApi(api).create_namespaced_custom_object(
        "example.com", "v1", "default", "widgets", {"apiVersion": "example.com/v1", "kind": "Widget",
                                                    "metadata": {"name": "w"}, "spec": {}})
    assert kube.get("example.com/v1", "widgets", "default", "w")["kind"] == "Widget"
    kube.delete("apiextensions.k8s.io/v1", "customresourcedefinitions", None, "widgets.example.com")
    with pytest.raises(KubeAPIError) as err:
        kube.request("GET", "/apis/example.com/v1/namespaces/default/widgets/w")
    assert err.value.status == 404


def test_finalizers_hold_deletion_until_removed(kube):
    kube.create(config_map("held", finalizers=["example.com/hold"]))
    start = kube.request("GET", "/api/v1/namespaces/default/configmaps")["metadata"]["resourceVersion"]
    kube.delete(*CM, "held")
    marked = kube.get(*CM, "held")
    assert marked["metadata"]["deletionTimestamp"] and marked["metadata"]["finalizers"] == ["example.com/hold"]
    kube.patch(*CM, "held", {"metadata": {"finalizers": None}})
    assert kube.get(*CM, "held") is None
    events = watch_events(kube, "/api/v1/namespaces/default/configmaps", resourceVersion=start)
    assert [e["type"] for e in events] == ["MODIFIED", "MODIFIED", "DELETED"]


def test_garbage_collection_follows_owner_references(kube):
    owner = kube.create(config_map("owner"))
    child = kube.create(config_map("child", owners=[owner]))
    kube.create(config_map("grandchild", owners=[child]))
    kube.create(config_map("held-child", owners=[owner], finalizers=["example.com/hold"]))
    other = kube.create(config_map("other-owner"))
    kube.create(config_map("shared", owners=[owner, other]))
    kube.delete(*CM, "owner")
    remaining = {o["metadata"]["name"]: o for o in kube.list(*CM)}
    assert set(remaining) == {"held-child", "other-owner", "shared"}
    assert remaining["held-child"]["metadata"]["deletionTimestamp"]
    orphan_owner = kube.create(config_map("orphan-owner"))
    kube.create(config_map("orphan", owners=[orphan_owner]))
    kube.request("DELETE", "/api/v1/namespaces/default/configmaps/orphan-owner",
                 {"propagationPolicy": "Orphan"})
    assert kube.get(*CM, "orphan")["metadata"].get("ownerReferences") == []


SMOKE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "smokes.smoke.example.com"},
    "spec": {"group": "smoke.example.com", "scope": "Namespaced",
             "names": {"kind": "Smoke", "plural": "smokes", "singular": "smoke"},
             "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}}}]},
}


def test_kopf_operator_end_to_end(kube):
    kube.install_crd(SMOKE_CRD)
    smoke = ("smoke.example.com/v1", "smokes", "default", "s1")
    with run_kopf(kube, "k8s.smoke_handlers") as runner:
        kube.create({"apiVersion": "smoke.example.com/v1", "kind": "Smoke",
                     "metadata": {"name": "s1"}, "spec": {"greeting": "hi"}})
        ready = wait_for(lambda: (o := kube.get(*smoke)) and o.get("status", {}).get("phase") == "Ready" and o,
                         message="status.phase=Ready")
        assert ready["metadata"]["finalizers"]
        child = wait_for(lambda: kube.get(*CM, "s1-child"), message="child ConfigMap")
        assert child["data"] == {"greeting": "hi"}
        assert child["metadata"]["ownerReferences"][0]["uid"] == ready["metadata"]["uid"]
        kube.delete(*smoke)
        wait_for(lambda: kube.get(*smoke) is None, message="the resource to be gone")
        assert kube.get(*CM, "s1-deleted") is not None  # the delete handler ran before removal
        assert kube.get(*CM, "s1-child") is None  # garbage-collected with its owner
    assert not kopf_failures(runner.output), runner.output[-3000:]


def test_kopf_restarted_between_create_and_delete(kube):
    """A second kopf run resumes from the stored state: no duplicate child, finalizer honoured."""
    kube.install_crd(SMOKE_CRD)
    smoke = ("smoke.example.com/v1", "smokes", "default", "s2")
    with run_kopf(kube, "k8s.smoke_handlers"):
        kube.create({"apiVersion": "smoke.example.com/v1", "kind": "Smoke",
                     "metadata": {"name": "s2"}, "spec": {"greeting": "again"}})
        wait_for(lambda: (kube.get(*smoke) or {}).get("status", {}).get("phase") == "Ready", message="Ready")
    kube.delete(*smoke)  # no operator running: the finalizer holds the object
    assert kube.get(*smoke)["metadata"]["deletionTimestamp"]
    with run_kopf(kube, "k8s.smoke_handlers") as runner:
        wait_for(lambda: kube.get(*smoke) is None, message="the resource to be gone")
    assert [c["metadata"]["name"] for c in kube.list(*CM)] == ["s2-deleted"]
    assert not kopf_failures(runner.output), runner.output[-3000:]
