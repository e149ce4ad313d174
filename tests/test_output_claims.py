"""One active resource per output location (operator side): the second one fails OutputPathInUse."""

from __future__ import annotations

import pytest
import yaml

from kmeans_partition.k8s_http import load_api_client
from kmeans_partition.operator import labels as L
from kmeans_partition.operator.kube_api import KubeApi
from kmeans_partition.operator.output_claims import normalise, overlaps
from kmeans_partition.operator.reconcile import reconcile

from k8s.fake_api import FakeApi
from k8s.harness import kube  # noqa: F401  (fixture)
from test_builders import CPU
from test_e2e_operator import CRD_FILE

DASK = L.dask_cluster_name


@pytest.mark.parametrize("path, normal", [
    ("s3://bkt/out/", "s3://bkt/out"), ("S3A://bkt//out///", "s3://bkt/out"),
    ("simplecache::s3://bkt/out", "s3://bkt/out"), ("gcs://b/o", "gs://b/o"), ("abfss://c/o/", "abfs://c/o"),
])
def test_normalise(path, normal):
    assert normalise(path) == normal


@pytest.mark.parametrize("a, b, overlap", [
    ("s3://bkt/out", "s3://bkt/out/", True),
    ("s3://bkt/out", "s3://bkt/out/run1", True),  # one inside the other
    ("s3://bkt/out/run1/", "s3://bkt/out", True),
    ("s3://bkt/out", "s3://bkt/out2", False),  # a shared prefix is not a shared folder
    ("s3://bkt/out", "gs://bkt/out", False),
    ("s3://bkt/out", "s3a://bkt/out", True),
])
def test_overlaps(a, b, overlap):
    assert overlaps(a, b) is overlap and overlaps(b, a) is overlap


def _spec(output: str, endpoint: str = None) -> dict:
    options = {"endpoint_url": endpoint} if endpoint else {}
    return {**CPU, "outputPath": output, "storage": {"secretRef": {"name": "s3-creds"}, "options": options}}


def _phase(api, name, namespace="default"):
    return api.resource(name, namespace)["status"]["phase"]


def _failed(api, name, namespace="default"):
    return next(c for c in api.resource(name, namespace)["status"]["conditions"] if c["type"] == "Failed")


def step(api, name, namespace="default"):
    return reconcile(api.resource(name, namespace), api)


def test_the_second_resource_on_an_output_fails_and_names_the_first_across_namespaces():
    api = FakeApi()
    api.add_resource("first", _spec("s3://bucket/out/"), namespace="team-a", uid="u1")
    step(api, "first", "team-a")
    api.add_resource("second", _spec("s3://bucket/out/run2"), namespace="team-b", uid="u2",
                     created="2030-01-01T00:05:00Z")
    creates = len(api.create_calls)
    outcome = step(api, "second", "team-b")
    assert _phase(api, "second", "team-b") == "Failed"
    failed = _failed(api, "second", "team-b")
    assert failed["reason"] == "OutputPathInUse"
    assert "KMeansPartition team-a/first" in failed["message"] and "s3://bucket/out/" in failed["message"]
    assert len(api.create_calls) == creates  # the second created nothing
    assert [(e.type, e.reason) for e in outcome.events] == [("Warning", "OutputPathInUse")]
    assert step(api, "first", "team-a").status["phase"] == "Pending"  # the first goes on


def test_of_two_new_resources_the_older_wins_whichever_is_reconciled_first():
    api = FakeApi()
    api.add_resource("young", _spec("s3://bucket/out"), uid="u2", created="2030-01-01T00:00:09Z")
    api.add_resource("old", _spec("s3://bucket/out"), uid="u1", created="2030-01-01T00:00:01Z")
    step(api, "young")
    step(api, "old")
    assert (_phase(api, "young"), _phase(api, "old")) == ("Failed", "Pending")
    assert "KMeansPartition default/old" in _failed(api, "young")["message"]
    assert f"DaskCluster/{DASK('old')}" in api.create_calls and f"DaskCluster/{DASK('young')}" not in api.create_calls


def test_a_started_resource_holds_the_output_against_an_older_newcomer():
    api = FakeApi()
    api.add_resource("running", _spec("s3://bucket/out"), uid="u1", created="2030-01-01T00:09:00Z")
    step(api, "running")  # started: status.daskCluster set
    api.add_resource("older", _spec("s3://bucket/out"), uid="u2", created="2030-01-01T00:00:00Z")
    step(api, "older")
    assert _phase(api, "older") == "Failed" and "default/running" in _failed(api, "older")["message"]


@pytest.mark.parametrize("finish", ["Succeeded", "Failed", "deleting"])
def test_a_finished_or_deleted_resource_releases_the_output(finish):
    api = FakeApi()
    api.add_resource("before", _spec("s3://bucket/out"), uid="u1")
    step(api, "before")
    if finish == "deleting":
        api.objects[("KMeansPartition", "default", "before")]["metadata"]["deletionTimestamp"] = "2030-01-01T01:00:00Z"
    else:
        api.objects[("KMeansPartition", "default", "before")]["status"]["phase"] = finish
    api.add_resource("after", _spec("s3://bucket/out"), uid="u2", created="2030-01-01T02:00:00Z")
    step(api, "after")
    assert _phase(api, "after") == "Pending" and f"DaskCluster/{DASK('after')}" in api.create_calls


def test_different_outputs_and_different_endpoints_do_not_conflict():
    api = FakeApi()
    api.add_resource("a", _spec("s3://bucket/out", "http://minio-a:9000"), uid="u1")
    api.add_resource("b", _spec("s3://bucket/out", "http://minio-b:9000"), uid="u2", created="2030-01-01T00:01:00Z")
    api.add_resource("c", _spec("s3://bucket/out2"), uid="u3", created="2030-01-01T00:02:00Z")
    for name in ("a", "b", "c"):
        step(api, name)
    assert [_phase(api, name) for name in ("a", "b", "c")] == ["Pending"] * 3
    api.add_resource("d", _spec("s3://bucket/out/x"), uid="u4", created="2030-01-01T00:03:00Z")  # no endpoint
    step(api, "d")
    assert _phase(api, "d") == "Failed"  # might be either store: refused


def test_namespaced_rbac_compares_within_the_namespace():
    """Without cluster-wide list the operator sees only the resource's namespace (documented limit)."""
    api = FakeApi(namespaced_rbac=True)
    api.add_resource("a", _spec("s3://bucket/out"), namespace="team-a", uid="u1")
    step(api, "a", "team-a")
    api.add_resource("b", _spec("s3://bucket/out"), namespace="team-b", uid="u2", created="2030-01-01T00:01:00Z")
    step(api, "b", "team-b")
    assert _phase(api, "b", "team-b") == "Pending"  # not visible from team-b's namespace
    api.add_resource("c", _spec("s3://bucket/out"), namespace="team-a", uid="u3", created="2030-01-01T00:02:00Z")
    step(api, "c", "team-a")
    assert _phase(api, "c", "team-a") == "Failed" and "team-a/a" in _failed(api, "c", "team-a")["message"]
    assert ("KMeansPartition", None) in api.list_calls and ("KMeansPartition", "team-a") in api.list_calls


def test_cluster_wide_list_through_the_real_client(kube, monkeypatch):  # noqa: F811
    """KubeApi lists KMeansPartitions of every namespace (namespace None) from an API server."""
    kube.install_crd(yaml.safe_load(CRD_FILE.read_text()))
    for namespace in ("team-a", "team-b"):
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        kube.create({"apiVersion": "kmeanspartition.dev/v1alpha1", "kind": "KMeansPartition",
                     "metadata": {"name": f"r-{namespace}", "namespace": namespace}, "spec": _spec("s3://b/o")})
    monkeypatch.setenv("KUBECONFIG", kube.kubeconfig)
    api = KubeApi(load_api_client())
    listed = api.list("kmeanspartition.dev/v1alpha1", "KMeansPartition", None, {})
    assert sorted(item["metadata"]["name"] for item in listed) == ["r-team-a", "r-team-b"]
    body = api.get("kmeanspartition.dev/v1alpha1", "KMeansPartition", "team-b", "r-team-b")
    reconcile(body, api)
    body = api.get("kmeanspartition.dev/v1alpha1", "KMeansPartition", "team-b", "r-team-b")
    assert body["status"]["phase"] == "Failed" and "team-a/r-team-a" in body["status"]["conditions"][-1]["message"]
