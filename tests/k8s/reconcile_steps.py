"""Shared steps for the reconcile tests: one resource on a `FakeApi`, children made ready or finished."""

from __future__ import annotations

import datetime
import itertools

import pytest

from kmeans_partition.operator import labels as L
from kmeans_partition.operator.reconcile import reconcile

from k8s.fake_api import FakeApi
NAME = "docs"
SPEC = {
    "nClusters": 4,
    "idField": "id",
    "embeddingField": "embedding",
    "inputPath": ["s3://bucket/in/"],
    "outputPath": "s3://bucket/out/",
    "cluster": {"workers": 2},
}
DASK, JOB = L.dask_cluster_name(NAME), L.job_name(NAME)
START = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)


def clock():
    """A new timestamp one second later at each call."""
    counter = itertools.count()
    return lambda: at(next(counter))


def at(seconds: float) -> str:
    """The RFC 3339 timestamp `seconds` after 2030-01-01T00:00:00Z."""
    return (START + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def api():
    fake = FakeApi()
    fake.add_resource(NAME, SPEC)
    return fake


def step(api, now=None):
    return reconcile(api.resource(NAME), api, now=now or clock())


def conditions(api):
    return {c["type"]: c for c in api.resource(NAME)["status"]["conditions"]}


def scheduler_pod(api, ready=True):
    api.objects[("Pod", "default", f"{DASK}-scheduler-abc")] = {
        "kind": "Pod",
        "metadata": {"name": f"{DASK}-scheduler-abc", "labels": {"dask.org/cluster-name": DASK,
                                                                 "dask.org/component": "scheduler"}},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def dask_running(api):
    api.set_status("DaskCluster", DASK, {"phase": "Running"})
    scheduler_pod(api)


def job_active(api):
    api.set_status("Job", JOB, {"active": 1, "startTime": "2030-01-01T01:00:00Z"})


def job_finished(api, type_, reason="", message=""):
    cond = {"type": type_, "status": "True", "reason": reason, "message": message}
    api.set_status("Job", JOB, {"conditions": [cond], "completionTime": "2030-01-01T02:00:00Z",
                                "startTime": "2030-01-01T01:00:00Z"})
