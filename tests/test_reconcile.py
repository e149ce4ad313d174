"""Level-based reconcile against an in-memory API: children, conditions, cleanup, restarts."""

from __future__ import annotations

import datetime
import itertools

import pytest

from kmeans_partition.operator import labels as L
from kmeans_partition.operator.reconcile import delete_children, reconcile

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


def test_failure_reports_job_reason_and_runner_message(api):
    api.add_resource(NAME, {**SPEC, "cleanupPolicy": "OnSuccess"})
    step(api)
    dask_running(api)
    step(api)
    job_finished(api, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    api.objects[("Pod", "default", "docs-runner-abc")] = {
        "kind": "Pod",
        "metadata": {"name": "docs-runner-abc", "labels": {"batch.kubernetes.io/job-name": JOB}},
        "status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 2, "message": "inputPath: no files"}}}]},
    }
    out = step(api)
    failed = conditions(api)["Failed"]
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "backoff limit" in failed["message"] and "runner: inputPath: no files" in failed["message"]
    assert api.resource(NAME)["status"]["phase"] == "Failed"
    assert f"DaskCluster/{DASK}" in api.kinds(), "OnSuccess keeps the cluster after a failure"
    assert any(e.type == "Warning" and e.reason == "BackoffLimitExceeded" for e in out.events)


def test_failure_message_keeps_the_first_attempts_reason(api):
    """A retried runner pod failing otherwise (e.g. the first left an output) must not hide the first reason."""
    api.add_resource(NAME, {**SPEC, "backoffLimit": 1})
    step(api)
    dask_running(api)
    step(api)
    job_finished(api, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    for name, created, message in [("docs-runner-b", "2026-01-01T00:05:00Z", "output_path: 's3://b/out' is not empty"),
                                   ("docs-runner-a", "2026-01-01T00:00:00Z", "OSError: File too short")]:
        api.objects[("Pod", "default", name)] = {
            "kind": "Pod",
            "metadata": {"name": name, "creationTimestamp": created, "labels": {"batch.kubernetes.io/job-name": JOB}},
            "status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 1, "message": message}}}]},
        }
    step(api)
    message = conditions(api)["Failed"]["message"]
    assert "runner: OSError: File too short (first of 2 attempts; last: output_path: 's3://b/out' is not empty)" in message


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


def test_invalid_spec_fails_and_creates_nothing():
    api = FakeApi()
    api.add_resource(NAME, {**SPEC, "nClusters": 0})
    out = step(api)
    assert api.kinds() == [] and api.create_calls == []
    failed = conditions(api)["Failed"]
    assert failed["reason"] == "InvalidSpec" and "nClusters" in failed["message"]
    assert api.resource(NAME)["status"]["phase"] == "Failed"
    assert [e.type for e in out.events] == ["Warning"]


def test_lost_job_is_not_recreated(api):
    step(api)
    dask_running(api)
    step(api)
    job_active(api)
    step(api)
    api.objects.pop(("Job", "default", JOB))
    out = step(api)
    assert out.created == [] and f"Job/{JOB}" not in api.kinds()
    assert conditions(api)["Failed"]["reason"] == "JobLost"
    assert conditions(api)["Running"]["status"] == "False"


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


def test_missing_dask_operator_is_reported():
    api = FakeApi(unserved_kinds=("DaskCluster",))
    api.add_resource(NAME, SPEC)
    step(api)
    assert conditions(api)["DaskClusterReady"]["reason"] == "DaskOperatorMissing"
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


@pytest.mark.parametrize("field, value", [("schedulerAddress", "tcp://elsewhere:8786"),
                                          ("storageOptions", {"key": "AKIA"}),
                                          ("storage", {"options": {"secret": "s"}})])
def test_runner_only_fields_and_inline_credentials_are_invalid_spec(field, value):
    api = FakeApi()
    api.add_resource(NAME, {**SPEC, field: value})
    step(api)
    failed = conditions(api)["Failed"]
    assert failed["reason"] == "InvalidSpec" and field in failed["message"]
    assert api.kinds() == [] and api.create_calls == []


@pytest.mark.parametrize("kind, status", [("Job", 422), ("DaskCluster", 400), ("Role", 403)])
def test_rejected_child_fails_with_the_api_message_and_is_not_retried(kind, status):
    message = f"{kind}.spec: Invalid value: something the server refused"
    api = FakeApi(reject_create={kind: (status, "Invalid" if status == 422 else "BadRequest", message)})
    api.add_resource(NAME, SPEC)
    step(api)
    if kind == "Job":
        dask_running(api)
        step(api)
    failed = conditions(api)["Failed"]
    assert failed["reason"] == "ChildRejected"
    assert message in failed["message"] and f"HTTP {status}" in failed["message"]
    assert api.resource(NAME)["status"]["phase"] == "Failed"
    calls = list(api.create_calls)
    out = step(api)  # the next pass (timer, event) does not try again
    assert api.create_calls == calls and out.created == [] and out.events == []
    if kind == "Role":
        assert "RoleBinding/docs-runner" not in api.kinds() and f"DaskCluster/{DASK}" not in api.kinds()


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


def test_job_gone_after_the_runner_wrote_its_result_is_success(api):
    step(api)
    dask_running(api)
    step(api)
    job_active(api)
    step(api)
    api.patch_status("", "KMeansPartition", "default", NAME, {"result": {"nRows": 10}})
    api.objects.pop(("Job", "default", JOB))  # TTL removed it before the operator saw Complete
    out = step(api)
    cond = conditions(api)
    assert cond["Succeeded"]["status"] == "True" and cond["Succeeded"]["reason"] == "JobGoneAfterResult"
    assert "Failed" not in cond and cond["Running"]["status"] == "False"
    assert api.resource(NAME)["status"]["phase"] == "Succeeded" and out.created == []


def test_dask_cluster_not_ready_in_time_fails_and_is_deleted_whatever_the_cleanup_policy():
    api = FakeApi()
    api.add_resource(NAME, {**SPEC, "cluster": {"workers": 2, "readyTimeoutSeconds": 600}, "cleanupPolicy": "Never"})
    step(api, now=lambda: at(0))
    assert api.resource(NAME)["status"]["daskClusterWaitStart"] == at(0)
    api.set_status("DaskCluster", DASK, {"phase": "Pending"})  # e.g. pods refused by admission
    out = step(api, now=lambda: at(599))
    assert "Failed" not in conditions(api) and out.deleted == []
    out = step(api, now=lambda: at(600))
    failed = conditions(api)["Failed"]
    assert failed["reason"] == "DaskClusterNotReady"
    assert "(600 s)" in failed["message"] and "DaskClusterStarting: DaskCluster phase: Pending" in failed["message"]
    assert out.deleted == [f"DaskCluster/{DASK}"] and f"DaskCluster/{DASK}" not in api.kinds()
    assert conditions(api)["DaskClusterReady"]["reason"] == "Deleted"
    assert api.resource(NAME)["status"]["phase"] == "Failed"
    assert any(e.type == "Warning" and e.reason == "DaskClusterNotReady" for e in out.events)
    out = step(api, now=lambda: at(700))  # ended: nothing is created again, no Job ever
    assert out.created == [] and not any(k.startswith("Job/") for k in api.kinds())
    assert api.resource(NAME)["status"]["daskClusterWaitStart"] == at(0)


def test_ready_deadline_no_longer_applies_once_the_job_exists(api):
    step(api, now=lambda: at(0))
    dask_running(api)
    step(api, now=lambda: at(60))
    assert f"Job/{JOB}" in api.kinds()
    scheduler_pod(api, ready=False)  # the scheduler restarts later, long after the deadline
    job_active(api)
    step(api, now=lambda: at(10_000))
    assert "Failed" not in conditions(api) and f"DaskCluster/{DASK}" in api.kinds()


def test_missing_dask_operator_fails_at_the_deadline_with_its_reason():
    api = FakeApi(unserved_kinds=("DaskCluster",))
    api.add_resource(NAME, SPEC)  # default readyTimeoutSeconds: 900
    step(api, now=lambda: at(0))
    step(api, now=lambda: at(899))
    assert "Failed" not in conditions(api)
    out = step(api, now=lambda: at(900))
    failed = conditions(api)["Failed"]
    assert failed["reason"] == "DaskClusterNotReady" and "DaskOperatorMissing" in failed["message"]
    assert out.deleted == []
