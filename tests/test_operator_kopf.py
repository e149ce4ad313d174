"""The operator's kopf handlers running for real against the emulated API server."""

from __future__ import annotations

import contextlib
import importlib
import urllib.request

import kopf
import pytest

from kmeans_partition.operator import labels as L
from kmeans_partition.operator.crd import build_crd
from kmeans_partition.spec import API_GROUP, API_VERSION, KIND, PLURAL

from k8s.harness import kopf_failures, kube, run_kopf, wait_for  # noqa: F401  (fixture)
from k8s.kubelet import free_port

RES = f"{API_GROUP}/{API_VERSION}"
NAME = "docs"
DASK, JOB = L.dask_cluster_name(NAME), L.job_name(NAME)
SPEC = {
    "nClusters": 4, "idField": "id", "embeddingField": "embedding",
    "inputPath": ["s3://bucket/in/"], "outputPath": "s3://bucket/out/", "cluster": {"workers": 2},
}
CHILDREN = [("v1", "configmaps", "docs-spec"), ("v1", "serviceaccounts", "docs-runner"),
            ("rbac.authorization.k8s.io/v1", "roles", "docs-runner"),
            ("rbac.authorization.k8s.io/v1", "rolebindings", "docs-runner"),
            ("networking.k8s.io/v1", "networkpolicies", DASK),
            ("kubernetes.dask.org/v1", "daskclusters", DASK)]


@contextlib.contextmanager
def fresh_handlers():
    """This project's handlers in a fresh default registry (restored after); yields the registry."""
    previous = kopf.get_default_registry()
    from kopf._core.intents.registries import SmartOperatorRegistry  # kopf's default: with fallback logins

    registry = SmartOperatorRegistry()
    kopf.set_default_registry(registry)
    handlers = importlib.import_module("kmeans_partition.operator.handlers")
    importlib.reload(handlers)
    handlers.reset_api()
    try:
        yield registry
    finally:
        handlers.reset_api()
        kopf.set_default_registry(previous)


@contextlib.contextmanager
def operator(kube, extra_args=()):
    """kopf with only this project's handlers; after the block, kopf logged no errors."""
    with fresh_handlers():
        with run_kopf(kube, "kmeans_partition.operator.handlers", extra_env={"KMP_RECONCILE_INTERVAL": "2"},
                      extra_args=extra_args) as runner:
            yield runner
    assert kopf_failures(runner.output) == [], runner.output[-4000:]


def resource(kube):
    return kube.get(RES, PLURAL, "default", NAME)


def phase(kube):
    return ((resource(kube) or {}).get("status") or {}).get("phase")


def condition(kube, type_):
    for cond in ((resource(kube) or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return cond
    return None


def create_resource(kube, spec=SPEC):
    kube.install_crd(build_crd())
    return kube.create({"apiVersion": RES, "kind": KIND, "metadata": {"name": NAME, "namespace": "default"},
                        "spec": spec})


def dask_cluster_running(kube):
    """What the dask-kubernetes operator and kubelet do: a Ready scheduler pod, phase Running."""
    cluster = kube.get("kubernetes.dask.org/v1", "daskclusters", "default", DASK)
    kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": f"{DASK}-scheduler", "namespace": "default",
        "labels": {"dask.org/cluster-name": DASK, "dask.org/component": "scheduler"},
        "ownerReferences": [{"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskCluster", "name": DASK,
                             "uid": cluster["metadata"]["uid"]}]},
        "spec": {"containers": [{"name": "scheduler", "image": "x"}]}})
    kube.patch("v1", "pods", "default", f"{DASK}-scheduler",
               {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, "status")
    kube.patch("kubernetes.dask.org/v1", "daskclusters", "default", DASK, {"status": {"phase": "Running"}}, "status")


def uids(kube):
    return {plural: (kube.get(v, plural, "default", name) or {}).get("metadata", {}).get("uid")
            for v, plural, name in CHILDREN}


def events_of(kube, uid):
    return [e for e in kube.list("v1", "events", "default") if (e.get("involvedObject") or {}).get("uid") == uid]


def test_lifecycle_restart_and_delete(kube):
    created = create_resource(kube)
    port = free_port()
    with operator(kube, extra_args=("--liveness", f"http://127.0.0.1:{port}/healthz")):
        probe = wait_for(lambda: _get_ok(f"http://127.0.0.1:{port}/healthz"), message="liveness endpoint")
        assert probe == 200
        wait_for(lambda: all(kube.get(v, p, "default", n) for v, p, n in CHILDREN), message="children")
        wait_for(lambda: phase(kube) == "Pending", message="Pending")
        for api_version, plural, name in CHILDREN:
            owner = kube.get(api_version, plural, "default", name)["metadata"]["ownerReferences"][0]
            assert owner["uid"] == created["metadata"]["uid"] and owner["kind"] == KIND
        assert kube.get("batch/v1", "jobs", "default", JOB) is None
        dask_cluster_running(kube)
        wait_for(lambda: kube.get("batch/v1", "jobs", "default", JOB), message="Job created")
        wait_for(lambda: (condition(kube, "DaskClusterReady") or {}).get("status") == "True", message="ready")
        uid = created["metadata"]["uid"]
        reasons = wait_for(lambda: {"Created", "DaskClusterReady"} <= {e["reason"] for e in events_of(kube, uid)}
                           and {e["reason"] for e in events_of(kube, uid)}, message="core/v1 Events")
        assert all(e["involvedObject"]["kind"] == KIND for e in events_of(kube, uid)), reasons
    before = uids(kube)
    job_uid = kube.get("batch/v1", "jobs", "default", JOB)["metadata"]["uid"]

    with operator(kube):  # restarted: resumes, creates nothing new
        kube.patch("batch/v1", "jobs", "default", JOB, {"status": {"active": 1}}, "status")
        wait_for(lambda: phase(kube) == "Running", message="Running")
        kube.patch(RES, PLURAL, "default", NAME, {"status": {"progress": {"stage": "fitting", "iteration": 3}}}, "status")
        kube.patch("batch/v1", "jobs", "default", JOB, {"status": {"active": 0, "conditions": [
            {"type": "Complete", "status": "True", "reason": "", "message": ""}]}}, "status")
        wait_for(lambda: phase(kube) == "Succeeded", message="Succeeded")
        wait_for(lambda: kube.get("kubernetes.dask.org/v1", "daskclusters", "default", DASK) is None,
                 message="DaskCluster deleted")
        status = resource(kube)["status"]
        assert status["progress"] == {"stage": "fitting", "iteration": 3}
        assert status["job"] == JOB and status["completionTime"]
        assert kube.get("batch/v1", "jobs", "default", JOB)["metadata"]["uid"] == job_uid
        assert {k: v for k, v in uids(kube).items() if k != "daskclusters"} == {
            k: v for k, v in before.items() if k != "daskclusters"}

        kube.delete(RES, PLURAL, "default", NAME)
        wait_for(lambda: resource(kube) is None, message="resource gone (finalizer released)")
        wait_for(lambda: all(kube.get(v, p, "default", n) is None for v, p, n in CHILDREN)
                 and kube.get("batch/v1", "jobs", "default", JOB) is None, message="children gone")


def _get_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except OSError:
        return None


def test_configure_sets_watch_timeouts_and_annotation_storage():
    with fresh_handlers():
        handlers = importlib.import_module("kmeans_partition.operator.handlers")
        settings = kopf.OperatorSettings()
        handlers.configure(settings=settings)
    assert settings.watching.server_timeout == 240 and settings.watching.client_timeout == 300
    assert settings.watching.server_timeout < settings.watching.client_timeout
    assert settings.watching.connect_timeout == 10 and settings.networking.request_timeout == 60
    assert settings.persistence.finalizer == f"{API_GROUP}/finalizer"
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)


def test_delete_handler_adds_no_finalizer_of_its_own():
    with fresh_handlers() as registry:
        (on_delete,) = [h for h in registry._changing.get_all_handlers() if h.id.endswith("on_delete")]
        assert on_delete.requires_finalizer is False  # optional=True: deletion never waits on it


def test_invalid_spec_fails_without_children(kube):
    create_resource(kube, {**SPEC, "nClusters": 0})
    with operator(kube):
        failed = wait_for(lambda: condition(kube, "Failed"), message="Failed condition")
    assert failed["reason"] == "InvalidSpec" and "nClusters" in failed["message"]
    assert phase(kube) == "Failed"
    assert all(kube.get(v, p, "default", n) is None for v, p, n in CHILDREN)


@pytest.mark.parametrize("reason", ["BackoffLimitExceeded"])
def test_job_failure_reaches_status(kube, reason):
    create_resource(kube, {**SPEC, "cleanupPolicy": "OnSuccess"})
    with operator(kube):
        wait_for(lambda: kube.get("kubernetes.dask.org/v1", "daskclusters", "default", DASK), message="DaskCluster")
        dask_cluster_running(kube)
        wait_for(lambda: kube.get("batch/v1", "jobs", "default", JOB), message="Job")
        kube.patch("batch/v1", "jobs", "default", JOB, {"status": {"conditions": [
            {"type": "Failed", "status": "True", "reason": reason, "message": "Job has reached the backoff limit"}]}},
            "status")
        failed = wait_for(lambda: condition(kube, "Failed"), message="Failed")
    assert failed["reason"] == reason and phase(kube) == "Failed"
    assert kube.get("kubernetes.dask.org/v1", "daskclusters", "default", DASK) is not None  # OnSuccess keeps it
