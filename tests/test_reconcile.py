"""Level-based reconcile against an in-memory API: children, conditions, cleanup, restarts."""

from __future__ import annotations

import pytest

from kmeans_partition.operator import labels as L
from kmeans_partition.operator.reconcile import delete_children, reconcile

from k8s.fake_api import FakeApi
from k8s.reconcile_steps import (  # noqa: F401  (api: a fixture)
    DASK, JOB, NAME, SPEC, api, clock, conditions, dask_running, job_active, job_finished, scheduler_pod, step,
)


def test_children_created_once_with_owner_references(api):
    first = step(api)
    assert sorted(first.created) == sorted(
        ["ConfigMap/docs-spec", "ServiceAccount/docs-runner", "Role/docs-runner", "RoleBinding/docs-runner",
         f"NetworkPolicy/{DASK}", f"Secret/{L.tls_secret_name(NAME)}", f"DaskCluster/{DASK}"]
    )
    assert not any(ref.startswith("Job/") for ref in first.created), "Job must wait for the DaskCluster"
    second = step(api)
    assert second.created == []
    assert api.create_calls == first.created  # no duplicate create attempts either
    for (kind, _, name), obj in api.objects.items():
        if kind != "KMeansPartition":
            assert obj["metadata"]["ownerReferences"][0]["uid"] == "kmp-uid", name
    status = api.resource(NAME)["status"]
    assert status["phase"] == "Pending" and status["daskCluster"] == DASK and status["observedGeneration"] == 1
    assert conditions(api)["DaskClusterReady"]["status"] == "False"
    assert any(e.reason == "Created" for e in first.events)


def test_full_lifecycle_to_success(api):
    step(api)
    dask_running(api)
    out = step(api)
    assert out.created == [f"Job/{JOB}"]
    assert conditions(api)["DaskClusterReady"]["status"] == "True"
    assert api.resource(NAME)["status"]["job"] == JOB
    assert [e.reason for e in out.events] == ["Created", "DaskClusterReady"]

    job_active(api)
    out = step(api)
    status = api.resource(NAME)["status"]
    assert status["phase"] == "Running" and status["startTime"] == "2030-01-01T01:00:00Z"
    assert [e.reason for e in out.events] == ["Running"]

    api.patch_status("", "KMeansPartition", "default", NAME, {"progress": {"stage": "fitting", "iteration": 7}})
    step(api)
    assert api.resource(NAME)["status"]["progress"] == {"stage": "fitting", "iteration": 7}

    job_finished(api, "Complete")
    api.patch_status("", "KMeansPartition", "default", NAME, {"result": {"nRows": 10}})
    out = step(api)
    status = api.resource(NAME)["status"]
    assert status["phase"] == "Succeeded"
    assert status["completionTime"] == "2030-01-01T02:00:00Z"
    assert status["result"] == {"nRows": 10} and status["progress"]["iteration"] == 7
    cond = conditions(api)
    assert cond["Succeeded"]["status"] == "True" and cond["Running"]["status"] == "False"
    assert out.deleted == [f"DaskCluster/{DASK}"]
    assert f"DaskCluster/{DASK}" not in api.kinds() and f"Job/{JOB}" in api.kinds()
    assert {e.reason for e in out.events} >= {"Succeeded", "Deleted"}

    api.objects.pop(("Job", "default", JOB))  # the Job's TTL removes it later
    out = step(api)
    assert out.created == [] and out.events == [] and not out.patched
    assert api.resource(NAME)["status"]["phase"] == "Succeeded"


def test_cleanup_never_keeps_the_cluster(api):
    api.add_resource(NAME, {**SPEC, "cleanupPolicy": "Never"})
    step(api)
    dask_running(api)
    step(api)
    job_finished(api, "Complete")
    out = step(api)
    assert out.deleted == [] and f"DaskCluster/{DASK}" in api.kinds()


@pytest.mark.parametrize("stage", ["created", "dask-ready", "job-active", "job-complete"])
def test_operator_restart_at_each_stage_creates_no_duplicates(api, stage):
    actions = {"dask-ready": dask_running, "job-active": job_active,
               "job-complete": lambda a: job_finished(a, "Complete")}
    step(api)
    for name in ["dask-ready", "job-active", "job-complete"][: ["created", "dask-ready", "job-active", "job-complete"].index(stage)]:
        actions[name](api)
        step(api)
    children = api.kinds()
    calls = list(api.create_calls)
    restarted = FakeApi()  # a fresh operator process: same cluster state, no memory
    restarted.objects = api.objects
    out = reconcile(restarted.resource(NAME), restarted, now=clock())
    assert restarted.create_calls == [] and out.created == []
    assert api.kinds() == children and api.create_calls == calls
    expected = {"created": "Pending", "dask-ready": "Pending", "job-active": "Running", "job-complete": "Succeeded"}
    assert restarted.resource(NAME)["status"]["phase"] == expected[stage]


def test_job_waits_for_a_ready_scheduler_pod_not_just_phase_running(api):
    step(api)
    api.set_status("DaskCluster", DASK, {"phase": "Running"})  # the Service exists; the scheduler may not
    step(api)
    assert conditions(api)["DaskClusterReady"]["reason"] == "SchedulerNotReady"
    scheduler_pod(api, ready=False)
    step(api)
    assert f"Job/{JOB}" not in api.kinds() and conditions(api)["DaskClusterReady"]["status"] == "False"
    api.objects[("Pod", "default", "other-scheduler")] = {  # another cluster's ready scheduler: not ours
        "kind": "Pod", "metadata": {"name": "other-scheduler", "labels": {
            "dask.org/cluster-name": "other-dask", "dask.org/component": "scheduler"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    step(api)
    assert f"Job/{JOB}" not in api.kinds()
    scheduler_pod(api, ready=True)
    out = step(api)
    assert out.created == [f"Job/{JOB}"] and conditions(api)["DaskClusterReady"]["status"] == "True"


def test_last_transition_time_moves_only_on_flips(api):
    step(api, now=lambda: "2030-01-01T00:00:00Z")
    before = conditions(api)["DaskClusterReady"]["lastTransitionTime"]
    step(api, now=lambda: "2030-01-01T00:05:00Z")
    assert conditions(api)["DaskClusterReady"]["lastTransitionTime"] == before
    dask_running(api)
    step(api, now=lambda: "2030-01-01T00:09:00Z")
    assert conditions(api)["DaskClusterReady"]["lastTransitionTime"] == "2030-01-01T00:09:00Z"


def test_foreign_object_with_the_same_name_is_not_adopted(api):
    api.objects[("DaskCluster", "default", DASK)] = {
        "apiVersion": "kubernetes.dask.org/v1", "kind": "DaskCluster",
        "metadata": {"name": DASK, "namespace": "default", "ownerReferences": [{"uid": "old-uid"}]},
        "status": {"phase": "Running"},
    }
    out = step(api)
    assert out.waiting == [f"DaskCluster/{DASK}"]
    assert conditions(api)["DaskClusterReady"]["status"] == "False"
    assert f"Job/{JOB}" not in api.kinds()


def test_delete_children_removes_only_owned_children(api):
    step(api)
    dask_running(api)
    step(api)
    api.objects[("ConfigMap", "other", "docs-spec")] = {"metadata": {"name": "docs-spec", "ownerReferences": []}}
    deleted = delete_children(NAME, "default", "kmp-uid", api)
    assert len(deleted) == 8 and f"NetworkPolicy/{DASK}" in deleted and f"Secret/{NAME}-dask-tls" in deleted
    # the ConfigMap in namespace "other" stays; the scheduler pod is the dask operator's to remove
    assert [k for k in api.kinds() if not k.startswith("Pod/")] == ["ConfigMap/docs-spec"]
    assert delete_children(NAME, "default", "kmp-uid", api) == []


def test_deleting_resource_is_left_alone(api):
    body = api.resource(NAME)
    body["metadata"]["deletionTimestamp"] = "2030-01-01T00:00:00Z"
    out = reconcile(body, api)
    assert out.created == [] and api.kinds() == []


def test_create_race_lost_to_another_pass_reads_the_child_back():
    api = FakeApi(lose_create_race=("ConfigMap", "DaskCluster"))
    api.add_resource(NAME, SPEC)
    out = step(api)  # get -> None, create -> 409 AlreadyExists: read back, owned, carry on
    assert "ConfigMap/docs-spec" not in out.created and f"DaskCluster/{DASK}" not in out.created
    assert api.create_calls.count("ConfigMap/docs-spec") == 1 and out.waiting == []
    assert {"ConfigMap/docs-spec", f"DaskCluster/{DASK}"} <= set(api.kinds())
    assert api.resource(NAME)["status"]["daskCluster"] == DASK
    assert "Failed" not in conditions(api)


def test_name_taken_warning_only_when_the_waiting_set_changes(api):
    api.objects[("DaskCluster", "default", DASK)] = {
        "apiVersion": "kubernetes.dask.org/v1", "kind": "DaskCluster",
        "metadata": {"name": DASK, "namespace": "default", "ownerReferences": [{"uid": "old-uid"}]},
    }
    reasons = [[e.reason for e in step(api).events] for _ in range(4)]  # e.g. four timer ticks
    assert [r.count("NameTaken") for r in reasons] == [1, 0, 0, 0]
    assert api.resource(NAME)["status"]["waitingFor"] == [f"DaskCluster/{DASK}"]
    api.objects.pop(("DaskCluster", "default", DASK))  # the old owner's cluster goes
    out = step(api)
    assert "NameTaken" not in [e.reason for e in out.events] and out.created == [f"DaskCluster/{DASK}"]
    assert "waitingFor" not in api.resource(NAME)["status"]
