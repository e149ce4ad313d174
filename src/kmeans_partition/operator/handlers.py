"""kopf handler registration only: every handler calls `reconcile` (or `delete_children`).

Importing this module registers the handlers in kopf's default registry.
Handlers are sync: kopf runs them in its thread pool, where the official
`kubernetes` client is used through `KubeApi`. A per-resource lock serialises
passes for one KMeansPartition (its own events, the timer, its children's events),
and each pass re-reads the resource so it never works from a stale body.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional

import kopf

from kmeans_partition import settings
from kmeans_partition.operator import builders as B
from kmeans_partition.operator import labels as L
from kmeans_partition.operator.kube_api import ApiError, KubeApi
from kmeans_partition.operator.policy import Policy
from kmeans_partition.operator.reconcile import RESOURCE_API_VERSION, delete_children, reconcile
from kmeans_partition.spec import API_GROUP, API_VERSION, KIND, PLURAL

log = logging.getLogger("kmeans_partition.operator")

TIMER_INTERVAL = settings.reconcile_interval()  # kopf takes the interval when the handler registers
RETRY_DELAY = 10.0
CHILD_LABELS = {L.MANAGED_BY_LABEL: L.MANAGED_BY}

_api: Optional[KubeApi] = None
_api_lock = threading.Lock()
_resource_locks: dict[tuple[str, str], threading.Lock] = {}


def api() -> KubeApi:
    global _api
    with _api_lock:
        if _api is None:
            _api = KubeApi()
        return _api


def reset_api() -> None:
    """Forget the cached client (tests point KUBECONFIG at a new server)."""
    global _api
    with _api_lock:
        _api = None


def _lock(namespace: str, name: str) -> threading.Lock:
    with _api_lock:
        return _resource_locks.setdefault((namespace, name), threading.Lock())


def dask_operator() -> B.DaskOperatorPeer:
    """The dask-kubernetes operator's pods, from the operator settings."""
    return B.DaskOperatorPeer(settings.dask_operator_pod_labels(), settings.dask_operator_namespace())


def reconcile_resource(namespace: str, name: str) -> None:
    """One pass for resource namespace/name, posting its Events; API failures retry later."""
    client = api()
    with _lock(namespace, name):
        try:
            body = client.get(RESOURCE_API_VERSION, KIND, namespace, name)
            if body is None:
                return
            outcome = reconcile(body, client, default_image=settings.default_image(), dask_operator=dask_operator(),
                                policy=Policy.from_settings())
        except ApiError as err:
            raise kopf.TemporaryError(f"API error while reconciling {namespace}/{name}: {err}", delay=RETRY_DELAY)
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    if outcome.created or outcome.deleted or outcome.patched:
        log.info("reconciled %s/%s: phase=%s created=%s deleted=%s", namespace, name,
                 outcome.status.get("phase"), outcome.created, outcome.deleted)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    policy = Policy.from_settings()  # a malformed KMP_POLICY_* stops the operator here, naming it
    log.info("operator policy: %s", policy)
    # Watches: the server ends each watch before the client gives up, so a silently
    # stalled connection is noticed and re-established (a known kopf failure mode).
    settings.watching.server_timeout = 240
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 10
    settings.networking.connect_timeout = 10
    settings.networking.request_timeout = 60
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "kmeans-partition-operator"
    # Structural schemas prune unknown status keys: keep kopf's state in annotations.
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )


@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL)
def on_resource(namespace: str, name: str, **_: Any) -> None:
    reconcile_resource(namespace, name)


@kopf.timer(API_GROUP, API_VERSION, PLURAL, interval=TIMER_INTERVAL, initial_delay=TIMER_INTERVAL)
def on_timer(namespace: str, name: str, **_: Any) -> None:
    reconcile_resource(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels=CHILD_LABELS)
@kopf.on.event(B.DASK_GROUP, B.DASK_VERSION, B.DASK_PLURAL, labels=CHILD_LABELS)
def on_child_event(body: kopf.Body, namespace: str, type: Optional[str], **_: Any) -> None:
    parent = L.parent_name(body)
    if parent and type != "DELETED":
        reconcile_resource(namespace, parent)


@kopf.on.delete(API_GROUP, API_VERSION, PLURAL, optional=True)
def on_delete(namespace: str, name: str, uid: str, **_: Any) -> None:
    """Best effort: children go with the resource through their ownerReferences anyway,
    so this handler adds no finalizer of its own (deletion never waits for the operator)."""
    try:
        deleted = delete_children(name, namespace, uid, api())
    except ApiError as err:
        raise kopf.TemporaryError(f"API error while deleting children of {namespace}/{name}: {err}", delay=RETRY_DELAY)
    log.info("deleted children of %s/%s: %s", namespace, name, deleted)
    with _api_lock:
        _resource_locks.pop((namespace, name), None)
