"""Progress sink that mirrors progress into the KMeansPartition's status.

In a cluster the operator sets ``KMP_NAME`` / ``KMP_NAMESPACE`` (declared in
`kmeans_partition.settings`) on the runner pod; `status_sink_from_env()` then
returns a sink that merge-patches only ``status.progress`` and ``status.result``
of that resource (the operator owns the rest of ``status``, see
`kmeans_partition.status`), at most one patch per `min_interval` seconds except stage
changes and the final result. Failures are logged, never raised: status is a
convenience, the job's outcome does not depend on it.
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
from typing import Any, Callable, Optional

from kmeans_partition import settings
from kmeans_partition.k8s_http import load_api_client, raw_request
from kmeans_partition.runner.progress import ProgressSink, ProgressSnapshot
from kmeans_partition.runner.summary import headline
from kmeans_partition.spec import API_GROUP, API_VERSION, PLURAL
from kmeans_partition.status import ClusterSizes, EngineStatus, MemoryModeStatus, ProgressStatus, ResultStatus, RunnerStatus, wire

log = logging.getLogger("kmeans_partition")

MIN_INTERVAL_SECONDS = 2.0
REQUEST_TIMEOUT = (5, 15)

Patcher = Callable[[dict[str, Any]], None]


def result_model(result: dict[str, Any]) -> ResultStatus:
    """The runner's summary dict (`RunResult.to_dict()`) -> `status.result`.

    Also the report's headline (`runner.summary.headline`): imbalance (pairwise cost relative to
    equal clusters), largestShare, and boundaryShare: the share of rows whose margin is below
    boundaryMargin.
    """
    sizes = [int(size) for size in result.get("rows_per_centroid") or []]
    cluster_sizes = None
    if sizes:
        cluster_sizes = ClusterSizes(min=min(sizes), median=float(statistics.median(sizes)), max=max(sizes))
    numbers = {key: round(float(value), 6) for key, value in headline(result).items()
               if key in ("imbalance", "largest_share", "boundary_share", "boundary_margin")}
    return ResultStatus(
        n_rows=result.get("n_rows"),
        n_iter=result.get("n_iter"),
        inertia=result.get("inertia"),
        converged=result.get("converged"),
        manifest=result.get("manifest_path"),
        centroids=result.get("centroids_path"),
        cluster_sizes=cluster_sizes,
        engine=EngineStatus(**result["engine"]) if isinstance(result.get("engine"), dict) else None,
        memory_mode=memory_status(result.get("memory_mode")),
        **numbers,
    )


def memory_status(plan: Any) -> Optional[MemoryModeStatus]:
    """`status.result.memoryMode` from the manifest's ``memory_mode`` (`runner.memory_mode.MemoryPlan`)."""
    if not isinstance(plan, dict):
        return None
    keys = ("requested", "mode", "data_bytes", "memory_limit_bytes", "reason")
    return MemoryModeStatus(**{key: plan.get(key) for key in keys})


def result_status(result: dict[str, Any]) -> dict[str, Any]:
    """`status.result` as patched: camelCase keys, clusterSizes min/median/max, no Nones."""
    return wire(result_model(result))


class KubernetesStatusSink:
    """A `ProgressSink` writing `status.progress` / `status.result` through `patch`."""

    def __init__(self, patch: Patcher, min_interval: float = MIN_INTERVAL_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self._patch = patch
        self._min_interval = min_interval
        self._clock = clock
        self._last_sent: Optional[float] = None
        self._last_stage: Optional[str] = None
        self._pending: Optional[ProgressStatus] = None  # throttled, sent with the next patch
        self._lock = threading.Lock()

    def _send(self, status: dict[str, Any]) -> None:
        try:
            self._patch(status)
        except Exception as err:  # never fail the job over status
            log.warning("could not patch KMeansPartition status: %s", err)
        self._last_sent = self._clock()

    def on_progress(self, snapshot: ProgressSnapshot, event: str) -> None:
        progress = snapshot.to_model()
        with self._lock:
            stage_changed = snapshot.stage != self._last_stage
            due = self._last_sent is None or self._clock() - self._last_sent >= self._min_interval
            if stage_changed or due:
                self._last_stage = snapshot.stage
                self._pending = None
                self._send(wire(RunnerStatus(progress=progress)))
            else:
                self._pending = progress

    def on_result(self, result: dict[str, Any]) -> None:
        with self._lock:
            status = RunnerStatus(result=result_model(result), progress=self._pending)
            self._pending = None
            self._send(wire(status))

    def close(self) -> None:
        with self._lock:
            if self._pending is not None:
                self._send(wire(RunnerStatus(progress=self._pending)))
                self._pending = None


def _kube_patcher(name: str, namespace: str) -> Patcher:
    """Merge patch on the status subresource, via the official client (in-cluster or KUBECONFIG)."""
    api_client = load_api_client()
    path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status"

    def patch(status: dict[str, Any]) -> None:
        code, raw = raw_request(
            api_client, "PATCH", path, body={"status": json.loads(json.dumps(status))}, timeout=REQUEST_TIMEOUT,
            headers={"Content-Type": "application/merge-patch+json", "Accept": "application/json"},
        )
        if not 200 <= code < 300:
            raise RuntimeError(f"HTTP {code} patching {path}: {raw[:300].decode(errors='replace')}")

    return patch


def status_sink_from_env(environ: Optional[dict[str, str]] = None) -> Optional[ProgressSink]:
    """A status sink when KMP_NAME and KMP_NAMESPACE are set (and a cluster is reachable), else None."""
    name, namespace = settings.resource_name(environ), settings.resource_namespace(environ)
    if not name or not namespace:
        return None
    try:
        patcher = _kube_patcher(name, namespace)
    except Exception as err:
        log.warning("%s is set but no Kubernetes API is reachable (%s); status will not be updated",
                    settings.RESOURCE_NAME.name, err)
        return None
    return KubernetesStatusSink(patcher)
