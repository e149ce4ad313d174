"""The status model: one typed description of a KMeansPartition's ``status``.

`KMeansPartitionStatus` is the whole ``status`` object; the CRD's status schema is
generated from it (``kmeans_partition.operator.crd``). Two writers share it, each
owning its own top-level keys:

- `OperatorStatus` (conditions, phase, times, children, waitingFor,
  observedGeneration): merge-patched by the operator's reconcile;
- `RunnerStatus` (``progress``, ``result``): merge-patched by the runner's
  status sink.

Writers build these models and dump them with `wire` (camelCase, unset fields
left out), so a key that is not declared here cannot be written (the API server
would prune it silently). Every field is optional in the schema: each writer
patches only part of the object, and a missing key must never make the API server
reject a status patch. ``None`` in a dump means "remove this key" (JSON merge patch).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, Field

from kmeans_partition.spec import _Model

Int64 = Annotated[int, Field(json_schema_extra={"format": "int64"})]
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]  # RFC 3339, as Kubernetes writes it
Phase = Literal["Pending", "Running", "Succeeded", "Failed"]


class Condition(_Model):
    """metav1.Condition, as Kubernetes declares it."""

    type: str = Field(max_length=316)
    status: Literal["True", "False", "Unknown"]
    observed_generation: Optional[Int64] = Field(default=None, ge=0)
    last_transition_time: Timestamp
    reason: str = Field(max_length=1024)
    message: str = Field(max_length=32768)


class ProgressStatus(_Model):
    """Live progress patched by the runner."""

    stage: Optional[str] = None
    iteration: Optional[Int64] = None
    max_iter: Optional[Int64] = None
    inertia: Optional[float] = None
    centroid_shift: Optional[float] = None
    rows_read: Optional[Int64] = None
    rows_written: Optional[Int64] = None


class ClusterSizes(_Model):
    """Rows per centroid: smallest, median, largest."""

    min: Optional[Int64] = None
    median: Optional[float] = None
    max: Optional[Int64] = None


class EngineStatus(_Model):
    """Which k-means engine ran, on which devices, and why (`runner.engine.EngineChoice`)."""

    requested: Optional[str] = Field(default=None, description="auto | dask | raft, as asked.")
    chosen: Optional[str] = Field(default=None, description="The engine that ran: dask | raft.")
    reason: Optional[str] = Field(default=None, description="Why (for auto: what ruled raft in or out).")
    devices: Optional[list[str]] = Field(
        default=None, description="One entry per Dask worker: 'gpu <host>/<PCI bus id>' or 'cpu <host>'."
    )
    distance_precision: Optional[str] = Field(
        default=None, description="float32 | tf32: what the workers' distance GEMMs used."
    )


class MemoryModeStatus(_Model):
    """In memory or out of core, and the numbers it was chosen from (`runner.memory_mode.MemoryPlan`)."""

    requested: Optional[str] = Field(default=None, description="auto | in_memory | out_of_core, as asked.")
    mode: Optional[str] = Field(default=None, description="What ran: in_memory | out_of_core.")
    data_bytes: Optional[Int64] = Field(default=None, description="Estimated bytes of the loaded data.")
    memory_limit_bytes: Optional[Int64] = Field(
        default=None, description="The workers' memory limits summed (absent: some worker has none)."
    )
    reason: Optional[str] = Field(default=None, description="Why this mode.")


class ResultStatus(_Model):
    """Summary patched by the runner when it finishes."""

    n_rows: Optional[Int64] = None
    n_iter: Optional[Int64] = None
    inertia: Optional[float] = None
    converged: Optional[bool] = None
    manifest: Optional[str] = Field(default=None, description="Path of the run's manifest.")
    centroids: Optional[str] = Field(default=None, description="Path of the centroids file.")
    cluster_sizes: Optional[ClusterSizes] = None
    imbalance: Optional[float] = Field(
        default=None, description="Pairwise cost (sum of squared cluster sizes) relative to equal clusters."
    )
    largest_share: Optional[float] = Field(default=None, description="Share of rows in the largest cluster.")
    boundary_share: Optional[float] = Field(
        default=None, description="Share of rows whose margin to the next centroid < boundaryMargin."
    )
    boundary_margin: Optional[float] = Field(
        default=None, description="Cosine-distance margin boundaryShare counts below."
    )
    engine: Optional[EngineStatus] = None
    memory_mode: Optional[MemoryModeStatus] = None


class OperatorStatus(_Model):
    """The keys of ``status`` the operator's reconcile owns."""

    observed_generation: Optional[Int64] = Field(default=None, description="metadata.generation last reconciled.")
    conditions: Optional[list[Condition]] = Field(
        default=None,
        description="DaskClusterReady, Running, Succeeded, Failed.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    phase: Optional[Phase] = None
    start_time: Optional[Timestamp] = None
    completion_time: Optional[Timestamp] = None
    dask_cluster: Optional[str] = Field(default=None, description="Name of the DaskCluster child.")
    dask_cluster_wait_start: Optional[Timestamp] = Field(
        default=None,
        description="When the operator began waiting for the DaskCluster to become ready "
        "(cluster.readyTimeoutSeconds counts from here).",
    )
    job: Optional[str] = Field(default=None, description="Name of the runner Job child.")
    waiting_for: Optional[list[str]] = Field(
        default=None, description="Children whose names are held by objects of another owner."
    )


class RunnerStatus(_Model):
    """The keys of ``status`` the runner owns."""

    progress: Optional[ProgressStatus] = None
    result: Optional[ResultStatus] = None


class KMeansPartitionStatus(RunnerStatus, OperatorStatus):
    """Operator-owned: observedGeneration, conditions, phase, times, children, waitingFor; runner: progress, result."""


def wire_keys(model: type[BaseModel]) -> tuple[str, ...]:
    """The manifest (camelCase) names of `model`'s fields, in declaration order."""
    return tuple(info.alias or name for name, info in model.model_fields.items())


OPERATOR_STATUS_KEYS = wire_keys(OperatorStatus)
RUNNER_STATUS_KEYS = wire_keys(RunnerStatus)


def wire(model: BaseModel, *, removals: bool = False) -> dict[str, Any]:
    """`model` as it goes into a merge patch, with camelCase keys.

    Fields that are ``None`` are left out, unless `removals`: then a field that was
    set to ``None`` explicitly stays as ``null``, which removes the key on the server."""
    if removals:
        return model.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)
