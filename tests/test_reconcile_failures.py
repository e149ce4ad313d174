"""Reconcile failures: runner and API messages, invalid specs, lost children, the ready deadline."""

from __future__ import annotations

import pytest

from k8s.fake_api import FakeApi
from k8s.reconcile_steps import (  # noqa: F401  (api: a fixture)
    DASK, JOB, NAME, SPEC, api, at, conditions, dask_running, job_active, job_finished, scheduler_pod, step,
)


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


def test_missing_dask_operator_is_reported():
    api = FakeApi(unserved_kinds=("DaskCluster",))
    api.add_resource(NAME, SPEC)
    step(api)
    assert conditions(api)["DaskClusterReady"]["reason"] == "DaskOperatorMissing"
    assert f"Job/{JOB}" not in api.kinds()


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
