"""Level-based reconcile of one KMeansPartition (framework-free; the API is injected).

Each pass: parse the spec (invalid -> ``Failed/InvalidSpec``, nothing created);
until its DaskCluster step is reached, admit it (admission.py: operator policy ->
``Failed/PolicyViolation``, another active resource on the output -> ``Failed/OutputPathInUse``,
nothing created); unless the resource already ended, create the missing children under their
deterministic names (ConfigMap, runner RBAC, NetworkPolicy, DaskCluster; the Job only once the
DaskCluster reports Running *and* its scheduler pod is Ready, and never twice; a
child the API server rejects -> ``Failed/ChildRejected``); read the DaskCluster
and Job; derive the conditions; once the job ended delete the DaskCluster per ``cleanupPolicy``; merge-
patch the operator-owned status keys. NotFound and Conflict are ordinary outcomes.
The keys written here are `OperatorStatus`'s (``kmeans_partition.status``); the patch
is built through that model, so an undeclared key fails the pass instead of being
pruned by the API server. The runner owns ``status.progress`` and ``status.result``:
never written here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol

from kmeans_partition.operator import admission as A
from kmeans_partition.operator import builders as B
from kmeans_partition.operator import conditions as C
from kmeans_partition.operator import labels as L
from kmeans_partition.operator import tls as TLS
from kmeans_partition.operator.kube_api import Conflict, NotFound, Rejected
from kmeans_partition.operator.policy import Policy
from kmeans_partition.spec import API_GROUP, API_VERSION, KIND, CleanupPolicy, SpecError, parse_resource_spec
from kmeans_partition.status import OPERATOR_STATUS_KEYS, OperatorStatus, wire

log = logging.getLogger("kmeans_partition.operator")

JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
DASK_RUNNING = "Running"
RESOURCE_API_VERSION = f"{API_GROUP}/{API_VERSION}"


class Api(Protocol):
    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Optional[dict]: ...
    def list(self, api_version: str, kind: str, namespace: str, labels: Mapping[str, str]) -> list[dict]: ...
    def create(self, manifest: Mapping[str, Any]) -> dict: ...
    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool: ...
    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: Mapping) -> dict: ...


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Outcome:
    status: dict[str, Any] = field(default_factory=dict)  # operator-owned keys after this pass
    patched: bool = False
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # foreign objects in the way
    rejected: list[str] = field(default_factory=list)  # children the API server refused, with its message
    events: list[Event] = field(default_factory=list)


def _ref(obj: Mapping[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


def _ensure(api: Api, child: dict[str, Any], uid: str, outcome: Outcome) -> Optional[dict[str, Any]]:
    """The child as it exists (created when missing); None when a foreign object holds the name.

    Key material of the TLS Secret is generated only here, when the Secret is missing."""
    meta = child["metadata"]
    existing = api.get(child["apiVersion"], child["kind"], meta["namespace"], meta["name"])
    if existing is None:
        try:
            created = api.create(TLS.materialise(child))
            outcome.created.append(_ref(child))
            return created or child
        except Rejected as err:  # invalid/forbidden: the same request would fail again
            outcome.rejected.append(f"{_ref(child)}: HTTP {err.status} {err.reason}: {err.message}")
            log.warning("creating %s was rejected: %s", _ref(child), err)
            return None
        except Conflict:  # created concurrently: read it back
            existing = api.get(child["apiVersion"], child["kind"], meta["namespace"], meta["name"])
            if existing is None:
                return None
    if not _owned_by(existing, uid):
        outcome.waiting.append(_ref(child))
        log.warning("%s exists but is not owned by uid %s; waiting for it to go", _ref(child), uid)
        return None
    return existing


def _job_condition(job: Optional[Mapping[str, Any]], type_: str) -> Optional[dict[str, Any]]:
    for cond in ((job or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return cond
    return None


def termination_message(api: Api, job: Mapping[str, Any]) -> str:
    """The runner pods' termination messages, or '': the first failure's (a retry's "is not
    empty" or the like must not hide why the first pod failed), then the last one's if it differs."""
    meta = job["metadata"]
    pods = []
    for label in JOB_NAME_LABELS:
        pods = api.list("v1", "Pod", meta["namespace"], {label: meta["name"]})
        if pods:
            break
    pods.sort(key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")
    messages = []
    for pod in pods:
        for status in ((pod.get("status") or {}).get("containerStatuses")) or []:
            terminated = (status.get("state") or {}).get("terminated") or {}
            if terminated.get("message"):
                messages.append(str(terminated["message"]).strip())
    if len(messages) > 1 and messages[-1] != messages[0]:
        return f"{messages[0]} (first of {len(messages)} attempts; last: {messages[-1]})"
    return messages[0] if messages else ""


def scheduler_ready(api: Api, namespace: str, cluster_name: str) -> bool:
    """True when a live scheduler pod of DaskCluster `cluster_name` has condition Ready=True.

    The dask-kubernetes operator reports phase Running as soon as the scheduler
    Service exists, before the scheduler accepts connections."""
    for pod in api.list("v1", "Pod", namespace, B.scheduler_pod_labels(cluster_name)):
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        if any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or []):
            return True
    return False


class _Pass:
    """State of one reconcile pass."""

    def __init__(self, body: Mapping[str, Any], api: Api, now: Callable[[], str], default_image: Optional[str]):
        meta = body["metadata"]
        self.body, self.api, self.now, self.default_image = body, api, now, default_image
        self.name, self.namespace, self.uid = meta["name"], meta["namespace"], meta.get("uid", "")
        self.generation = meta.get("generation")
        self.old = dict(body.get("status") or {})
        self.status = {key: self.old[key] for key in OPERATOR_STATUS_KEYS if key in self.old}
        self.conditions = list(self.old.get("conditions") or [])
        self.outcome = Outcome()

    def set(self, type_: str, status: bool, reason: str, message: str = "") -> None:
        self.conditions = C.set_condition(
            self.conditions, type_, status, reason, message, generation=self.generation, now=self.now()
        )

    @property
    def ended(self) -> bool:
        return C.derive_phase(self.conditions) in C.TERMINAL_PHASES


def reconcile(
    body: Mapping[str, Any],
    api: Api,
    *,
    default_image: Optional[str] = None,
    now: Callable[[], str] = C.utc_now,
    dask_operator: Optional[B.DaskOperatorPeer] = None,
    policy: Optional[Policy] = None,
) -> Outcome:
    """One level-based pass over resource `body`; applies children and the status patch.

    `policy`: the operator's policy settings (default: no restriction)."""
    run = _Pass(body, api, now, default_image)
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return run.outcome
    try:
        spec = parse_resource_spec(dict(body.get("spec") or {}))
    except SpecError as err:
        if not C.is_true(run.conditions, C.FAILED):
            run.set(C.FAILED, True, "InvalidSpec", str(err))
        return _finish(run)
    children = B.build_children(run.name, run.namespace, run.uid, spec, default_image, dask_operator)
    by_kind = {child["kind"]: child for child in children}
    dask_manifest, job_manifest = by_kind["DaskCluster"], by_kind["Job"]
    if run.ended:
        dask = api.get(dask_manifest["apiVersion"], "DaskCluster", run.namespace, dask_manifest["metadata"]["name"])
        _cleanup(run, spec, dask)
        return _finish(run)
    if not run.old.get("daskCluster") and _refused(run, spec, policy or Policy(), dask_manifest["metadata"]["name"]):
        return _finish(run)
    dask = _reconcile_dask(run, children, dask_manifest)
    if _ready_deadline_passed(run, spec, dask, dask_manifest["metadata"]["name"]):
        return _finish(run)
    job = None if run.outcome.rejected else _reconcile_job(run, job_manifest, dask)
    _reject(run)
    _observe_job(run, job)
    if run.ended:
        _cleanup(run, spec, dask)
    return _finish(run)


def _refused(run: _Pass, spec, policy: Policy, dask_name: str) -> bool:
    """Before any child exists: True (conditions set) when admission refuses or defers the resource."""
    refusal = A.admit(run.api, run.body, spec, policy)
    if refusal is None:
        return False
    if refusal.final:
        run.set(C.FAILED, True, refusal.reason, refusal.message)
    else:
        run.set(C.DASK_CLUSTER_READY, False, refusal.reason, refusal.message)
        _ready_deadline_passed(run, spec, None, dask_name)
    return True


def _reject(run: _Pass) -> bool:
    """Fail with ChildRejected when the API server refused a child; True if it did."""
    if not run.outcome.rejected:
        return False
    run.set(C.FAILED, True, "ChildRejected", "the API server rejected " + "; ".join(run.outcome.rejected))
    return True


def _reconcile_dask(run: _Pass, children: list[dict], dask_manifest: dict) -> Optional[dict]:
    for child in children:  # every other child, before the pods that use them
        if child["kind"] not in ("DaskCluster", "Job"):
            _ensure(run.api, child, run.uid, run.outcome)
            if run.outcome.rejected:
                return None
    try:
        dask = _ensure(run.api, dask_manifest, run.uid, run.outcome)
    except NotFound:
        run.set(C.DASK_CLUSTER_READY, False, "DaskOperatorMissing",
                "kubernetes.dask.org/v1 DaskCluster is not served here: install the dask-kubernetes operator")
        return None
    if run.outcome.rejected:
        return None
    run.status["daskCluster"] = dask_manifest["metadata"]["name"]
    phase = ((dask or {}).get("status") or {}).get("phase")
    if dask is None:
        run.set(C.DASK_CLUSTER_READY, False, "WaitingForName", f"{_ref(dask_manifest)} belongs to another owner")
    elif phase == DASK_RUNNING and scheduler_ready(run.api, run.namespace, dask["metadata"]["name"]):
        run.set(C.DASK_CLUSTER_READY, True, "SchedulerRunning",
                f"DaskCluster {dask['metadata']['name']} is running and its scheduler pod is Ready")
    elif phase == DASK_RUNNING:
        run.set(C.DASK_CLUSTER_READY, False, "SchedulerNotReady",
                f"DaskCluster {dask['metadata']['name']} is running but its scheduler pod is not Ready yet")
    else:
        run.set(C.DASK_CLUSTER_READY, False, "DaskClusterStarting", f"DaskCluster phase: {phase or 'not reported yet'}")
    return dask


def _ready_deadline_passed(run: _Pass, spec, dask: Optional[dict], dask_name: str) -> bool:
    """Before the Job exists: fail, and delete the DaskCluster (whatever the cleanupPolicy: it holds
    nodes and never ran anything), once it has not become ready for cluster.readyTimeoutSeconds."""
    if run.old.get("job") or run.outcome.rejected or C.is_true(run.conditions, C.DASK_CLUSTER_READY):
        return False
    started = run.status.setdefault("daskClusterWaitStart", run.now())
    timeout = spec.cluster.ready_timeout_seconds
    if C.seconds_between(started, run.now()) < timeout:
        return False
    last = C.find(run.conditions, C.DASK_CLUSTER_READY) or {}
    run.set(C.FAILED, True, "DaskClusterNotReady",
            f"DaskCluster {dask_name} did not become ready within cluster.readyTimeoutSeconds ({timeout} s); "
            f"last: {last.get('reason', 'unknown')}: {last.get('message', '')}")
    if dask is not None and _owned_by(dask, run.uid):
        if run.api.delete(f"{B.DASK_GROUP}/{B.DASK_VERSION}", "DaskCluster", run.namespace, dask_name):
            run.outcome.deleted.append(_ref(dask))
        run.set(C.DASK_CLUSTER_READY, False, "Deleted", "DaskCluster deleted: it did not become ready in time")
    return True


def _reconcile_job(run: _Pass, job_manifest: dict, dask: Optional[dict]) -> Optional[dict]:
    name = job_manifest["metadata"]["name"]
    job = run.api.get("batch/v1", "Job", run.namespace, name)
    if job is not None and not _owned_by(job, run.uid):
        run.outcome.waiting.append(_ref(job_manifest))
        return None
    if job is None and run.old.get("job") and run.old.get("result"):
        run.set(C.SUCCEEDED, True, "JobGoneAfterResult",
                f"runner Job {name} is gone (TTL) but the runner had written status.result")
        return None
    if job is None and run.old.get("job"):
        run.set(C.FAILED, True, "JobLost",
                f"runner Job {name} disappeared before it finished; delete and recreate the KMeansPartition to re-run")
        return None
    if job is None and C.is_true(run.conditions, C.DASK_CLUSTER_READY):
        job = _ensure(run.api, job_manifest, run.uid, run.outcome)
    if job is not None:
        run.status["job"] = name
    return job


def _observe_job(run: _Pass, job: Optional[dict]) -> None:
    if job is None:
        if not run.ended:
            run.set(C.RUNNING, False, "WaitingForDaskCluster", "the runner Job starts once the DaskCluster runs")
        elif C.is_true(run.conditions, C.RUNNING):
            run.set(C.RUNNING, False, "JobGone", "the runner Job is gone")
        return
    job_status = job.get("status") or {}
    complete, failed = _job_condition(job, "Complete"), _job_condition(job, "Failed")
    if complete or failed:
        run.status.setdefault("startTime", job_status.get("startTime") or run.now())
        run.status.setdefault("completionTime", job_status.get("completionTime") or run.now())
        run.set(C.RUNNING, False, "JobFinished", f"Job {job['metadata']['name']} finished")
    if complete:
        run.set(C.SUCCEEDED, True, "JobComplete", complete.get("message") or f"Job {job['metadata']['name']} completed")
    elif failed:
        message = failed.get("message") or f"Job {job['metadata']['name']} failed"
        runner_message = termination_message(run.api, job)
        if runner_message:
            message = f"{message}; runner: {runner_message}"
        run.set(C.FAILED, True, failed.get("reason") or "JobFailed", message)
    elif (job_status.get("active") or 0) > 0:
        run.status.setdefault("startTime", job_status.get("startTime") or run.now())
        run.set(C.RUNNING, True, "JobActive", f"runner pod of Job {job['metadata']['name']} is running")
    else:
        run.set(C.RUNNING, False, "JobPending", f"Job {job['metadata']['name']} has no active pod yet")


def _cleanup(run: _Pass, spec, dask: Optional[dict]) -> None:
    policy = spec.cleanup_policy
    succeeded = C.is_true(run.conditions, C.SUCCEEDED)
    wanted = policy == CleanupPolicy.always or (policy == CleanupPolicy.on_success and succeeded)
    if not wanted or dask is None or not _owned_by(dask, run.uid):
        return
    if run.api.delete(f"{B.DASK_GROUP}/{B.DASK_VERSION}", "DaskCluster", run.namespace, dask["metadata"]["name"]):
        run.outcome.deleted.append(_ref(dask))
    run.set(C.DASK_CLUSTER_READY, False, "Deleted", f"DaskCluster deleted after the job ended (cleanupPolicy {policy.value})")


def _events(run: _Pass) -> list[Event]:
    events = []
    if run.outcome.created:
        events.append(Event("Normal", "Created", "created " + ", ".join(run.outcome.created)))
    for cond in C.transitions(run.old.get("conditions") or [], run.conditions):
        if cond["status"] == "True":
            kind = "Warning" if cond["type"] == C.FAILED else "Normal"
            reason = cond["reason"] if cond["type"] == C.FAILED else cond["type"]
            events.append(Event(kind, reason, cond["message"]))
    if run.outcome.deleted:
        events.append(Event("Normal", "Deleted", "deleted " + ", ".join(run.outcome.deleted)))
    if run.outcome.waiting and run.outcome.waiting != run.old.get("waitingFor"):  # only when it changes
        events.append(Event("Warning", "NameTaken", "waiting for " + ", ".join(run.outcome.waiting) + " of another owner"))
    return events


def _finish(run: _Pass) -> Outcome:
    """Fill phase/generation, patch status when it changed, collect events."""
    status = run.status
    status["conditions"] = run.conditions
    status["phase"] = C.derive_phase(run.conditions)
    if run.generation is not None:
        status["observedGeneration"] = run.generation
    if run.outcome.waiting:
        status["waitingFor"] = list(run.outcome.waiting)
    elif "waitingFor" in run.old:
        status["waitingFor"] = None  # merge patch: remove the key
    if status["phase"] in C.TERMINAL_PHASES:
        status.setdefault("completionTime", run.now())
    patch = wire(OperatorStatus.model_validate(status), removals=True)  # an undeclared key raises here
    before = {key: run.old[key] for key in OPERATOR_STATUS_KEYS if key in run.old}
    if patch != before:
        try:
            run.api.patch_status(RESOURCE_API_VERSION, KIND, run.namespace, run.name, patch)
            run.outcome.patched = True
        except NotFound:
            log.info("%s/%s vanished before its status could be written", run.namespace, run.name)
    run.outcome.status = patch
    run.outcome.events = _events(run)
    return run.outcome


def delete_children(name: str, namespace: str, uid: str, api: Api) -> list[str]:
    """Delete every child of resource `uid` by its deterministic name (NotFound is fine).

    Kubernetes' garbage collector does this through ownerReferences; doing it here
    frees GPUs at once and works where no GC runs."""
    deleted = []
    for api_version, kind, child in B.child_refs(name):
        try:
            existing = api.get(api_version, kind, namespace, child)
            if existing is not None and _owned_by(existing, uid) and api.delete(api_version, kind, namespace, child):
                deleted.append(f"{kind}/{child}")
        except NotFound:
            pass
    return deleted
