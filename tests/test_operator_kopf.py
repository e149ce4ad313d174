"""The operator's kopf handlers running for real against the emulated API server."""

from __future__ import annotations

import contextlib
import importlib

import kopf
import pytest
from kube_support import kube, run_kopf, wait_for  # noqa: F401  (fixture)

from kmeans_partition.operator import labels as L
from kmeans_partition.operator.crd import build_crd
from kmeans_partition.runner.spec import API_GROUP, API_VERSION, KIND, PLURAL

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
            ("kubernetes.dask.org/v1", "daskclusters", DASK)]


@contextlib.contextmanager
def operator(kube):
    """kopf with only this project's handlers (a fresh default registry, restored after)."""
    previous = kopf.get_default_registry()
    from kopf._core.intents.registries import SmartOperatorRegistry  # kopf's default: with fallback logins

    kopf.set_default_registry(SmartOperatorRegistry())
    handlers = importlib.import_module("kmeans_partition.operator.handlers")
    importlib.reload(handlers)
    handlers.reset_api()
    try:
        with run_kopf(kube, "kmeans_partition.operator.handlers", extra_env={"KMP_RECONCILE_INTERVAL": "2"}) as runner:
            yield runner
    finally:
        handlers.reset_api()
        kopf.set_default_registry(previous)


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


def test_lifecycle_restart_and_delete(kube):
    created = create_resource(kube)
    with operator(kube):
        wait_for(lambda: all(kube.get(v, p, "default", n) for v, p, n in CHILDREN), message="children")
        wait_for(lambda: phase(kube) == "Pending", message="Pending")
        for api_version, plural, name in CHILDREN:
            owner = kube.get(api_version, plural, "default", name)["metadata"]["ownerReferences"][0]
            assert owner["uid"] == created["metadata"]["uid"] and owner["kind"] == KIND
        assert kube.get("batch/v1", "jobs", "default", JOB) is None
        dask_cluster_running(kube)
        wait_for(lambda: kube.get("batch/v1", "jobs", "default", JOB), message="Job created")
        wait_for(lambda: (condition(kube, "DaskClusterReady") or {}).get("status") == "True", message="ready")
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
