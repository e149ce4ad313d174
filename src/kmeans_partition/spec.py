"""The job spec: one typed model, the single source of truth.

`JobSpec` holds every field of NeMo Curator's ``KMeansStage`` (same names and
defaults) plus ``storage_options``, ``overwrite`` and ``scheduler_address``.
`KMeansPartitionSpec` extends it with what the Kubernetes operator needs
(``cluster``, ``engine``, ``storage``, Job limits, ``cleanup_policy``); the CRD's
OpenAPI schema is generated from it (``kmeans_partition.operator.crd``).

Python attribute names are snake_case; manifests use camelCase aliases
(``nClusters``, ``inputPath``). Both are accepted when parsing.

A KMeansPartition resource may not set ``schedulerAddress`` (the operator's
DaskCluster is the scheduler; the runner would prefer a spec address over it) nor
``storageOptions`` (credentials come only from ``storage.secretRef``, non-secret
options from ``storage.options``, an allowlist per protocol: ``credentials.py``). Its
paths must be remote URIs (each pod has its own filesystem); `parse_resource_spec`
takes ``allow_local_paths`` for the local CLI. No path may carry credentials
(``user:pass@``, signed query strings), and ``outputPath`` no glob characters (it is
deleted from by ``overwrite``). Resource quantities follow the Kubernetes quantity
syntax (``8Gi``, ``500m``, ``4``). The cluster, resources and storage models live in
`kmeans_partition.spec_cluster` (re-exported here).
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any, Literal, Optional, Union

from pydantic import Field, ValidationError, ValidationInfo, field_validator

from kmeans_partition.credentials import option_problems, protocol_of, url_credentials
from kmeans_partition.spec_cluster import (  # noqa: F401  (re-exported: the cluster/resource models live there)
    CUPY_TF32_ENV,
    DEVICE_MEMORY_PATTERN,
    MAX_GPUS_PER_WORKER,
    MAX_READY_TIMEOUT_SECONDS,
    MAX_WORKERS,
    QUANTITY_PATTERN,
    ClusterResources,
    ClusterSpec,
    DeviceMemory,
    EnvVar,
    GpuWorkerSpec,
    Quantity,
    ResourceRequirements,
    SecretRef,
    StorageSpec,
    _Model,
)

API_GROUP = "kmeanspartition.dev"
API_VERSION = "v1alpha1"
KIND = "KMeansPartition"
PLURAL = "kmeanspartitions"
SHORT_NAME = "kmp"

GLOB_CHARACTERS = "*?[]{}"
# A remote URI (fsspec chains such as simplecache::s3://... included), and the local ones.
REMOTE_URI_PATTERN = r"^([a-zA-Z][a-zA-Z0-9+.-]*::)*[a-zA-Z][a-zA-Z0-9+.-]*://"
LOCAL_URI_PATTERN = r"^([a-zA-Z][a-zA-Z0-9+.-]*::)*(file|local|memory)://"
# JobSpec fields a KMeansPartition resource may not set (see module docstring).
RESOURCE_FORBIDDEN_FIELDS = {
    "scheduler_address": "the operator's DaskCluster is the scheduler; remove schedulerAddress",
    "storage_options": "use storage.options for non-secret options and storage.secretRef for credentials",
}


class SpecError(ValueError):
    """A spec field is invalid; the message names the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        prefixed = message.startswith(f"{field}:")
        super().__init__(message if prefixed else f"{field}: {message}")


#: ``distance_precision`` values; ``tf32`` only changes anything on GPU workers (see README "GPU").
DistancePrecision = Literal["float32", "tf32"]
#: ``memory_mode`` values (`runner.memory_mode`).
MemoryMode = Literal["auto", "in_memory", "out_of_core"]


class JobSpec(_Model):
    """What the runner needs to read, fit, assign and write one k-means partition job."""

    n_clusters: int = Field(ge=1, description="Number of k-means clusters (k).")
    id_field: str = Field(min_length=1, description="Column holding the document id.")
    embedding_field: str = Field(min_length=1, description="Column holding the embedding vector.")
    input_path: Union[str, list[str]] = Field(
        description="File, directory, glob or list of them; any fsspec URI (s3://, gs://, file://, local)."
    )
    output_path: str = Field(min_length=1, description="Where centroid=N/ partitions and the manifest go.")
    metadata_fields: Optional[list[str]] = Field(
        default=None, description="Extra columns carried through to the output."
    )
    verbose: bool = Field(default=False, description="Log more detail.")
    embedding_dim: Optional[int] = Field(
        default=None, ge=1, description="Expected embedding length; checked against the data."
    )
    input_filetype: Literal["parquet", "jsonl"] = Field(default="parquet", description="Input format.")
    max_iter: int = Field(default=300, ge=1, description="Maximum Lloyd iterations.")
    tol: float = Field(
        default=1e-4,
        ge=0,
        description="Stop when the summed squared centroid shift <= tol x mean per-feature variance.",
    )
    random_state: int = Field(default=42, description="Seed for initialisation.")
    init: Literal["k-means||", "random"] = Field(default="k-means||", description="Initialisation method.")
    oversampling_factor: float = Field(
        default=2.0, gt=0, description="k-means|| candidates per round, as a multiple of n_clusters."
    )
    max_samples_per_batch: int = Field(
        default=32768, ge=1, description="Rows per distance block (bounds scratch memory)."
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec storage options (endpoint, region, anon, ...)."
    )
    overwrite: bool = Field(default=False, description="Replace an existing output written by this tool.")
    scheduler_address: Optional[str] = Field(
        default=None,
        description="Dask scheduler address; else env DASK_SCHEDULER_ADDRESS; else a LocalCluster.",
    )
    write_second_centroid: bool = Field(
        default=False,
        description="Also write second_centroid (the next-nearest centroid) and margin (its cosine distance "
        "minus the assigned centroid's) per row, so a later stage can compare boundary rows across partitions.",
    )
    report: bool = Field(
        default=True, description="Write report.html (cluster sizes, convergence, margins) next to the manifest."
    )
    distance_precision: DistancePrecision = Field(
        default="float32",
        description="float32: distances computed in float32 everywhere. tf32: GPU workers may use TF32 tensor "
        "cores for the float32 distance GEMMs (CuPy's CUPY_TF32=1, set by the operator on GPU workers only): "
        "faster, but with a 10-bit mantissa rows near a tie between two centroids can get the other label. "
        "No effect on CPU workers.",
    )
    checkpoint_seconds: float = Field(
        default=60.0,
        ge=0,
        description="Save the fit's state (centroids, iteration, history) to output_path/_checkpoint/ at the "
        "first iteration ending this many seconds after the last save; a rerun of the same spec on the same "
        "input files resumes from it. 0: only checkpointIterations (and the save after the fit).",
    )
    checkpoint_iterations: int = Field(
        default=0,
        ge=0,
        description="Also save the fit's state every this many Lloyd iterations (0: by time only).",
    )
    memory_mode: MemoryMode = Field(
        default="auto",
        description="auto: in_memory when the data (estimated from parquet metadata; JSONL from file sizes) "
        "take at most half the workers' summed memory limits, else out_of_core. in_memory: partitions stay "
        "in worker memory. out_of_core: each partition's normalised float32 rows go to worker-local disk and "
        "are memory-mapped, streamed block by block through every step (for data larger than the cluster's "
        "memory).",
    )

    @field_validator("input_path")
    @classmethod
    def _input_not_empty(cls, value: Union[str, list[str]]) -> Union[str, list[str]]:
        paths = [value] if isinstance(value, str) else value
        if not paths or any(not p for p in paths):
            raise ValueError("must name at least one non-empty path")
        for path in paths:
            _refuse_url_credentials(path)
        return value

    @field_validator("output_path")
    @classmethod
    def _output_exact_and_without_credentials(cls, value: str) -> str:
        found = sorted({char for char in value if char in GLOB_CHARACTERS})
        if found:
            raise ValueError(f"glob characters ({' '.join(found)}) are not allowed: the output must be one "
                             "exact location (overwrite deletes from it)")
        _refuse_url_credentials(value)
        return value

    @field_validator("metadata_fields")
    @classmethod
    def _metadata_unique(cls, value: Optional[list[str]]) -> Optional[list[str]]:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("metadata field names must be unique")
        return value

    @property
    def input_paths(self) -> list[str]:
        return self._as_list(self.input_path)

    @staticmethod
    def _as_list(value: Union[str, list[str], None]) -> list[str]:
        return [value] if isinstance(value, str) else list(value or [])


def _refuse_url_credentials(path: str) -> None:
    found = url_credentials(path)
    if found:
        raise ValueError(f"the path holds {found}; put credentials in the storage Secret, not in a path")


def _remote(path: str) -> bool:
    return bool(re.match(REMOTE_URI_PATTERN, path)) and not re.match(LOCAL_URI_PATTERN, path)


class Engine(str, Enum):
    """Which k-means engine fits the centroids (``kmeans_partition.runner.engine``)."""

    auto = "auto"  # raft when every Dask worker imports cuML and has a GPU of its own, else dask
    dask = "dask"  # ours: NumPy on any Dask workers
    raft = "raft"  # cuML's multi-GPU KMeans on dask-cuda workers


#: The one default engine: the CLI, `KMeansStage.run` and the resource all use it.
DEFAULT_ENGINE = Engine.auto


class CleanupPolicy(str, Enum):
    always = "Always"
    on_success = "OnSuccess"
    never = "Never"


class KMeansPartitionSpec(JobSpec):
    """`spec` of a KMeansPartition resource: the job plus how to run it on Kubernetes."""

    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    engine: Engine = Field(
        default=DEFAULT_ENGINE,
        description="k-means engine: auto (raft when every Dask worker imports cuML and has a GPU of its own, "
        "else dask), dask (ours, NumPy on any workers) or raft (cuML multi-GPU on dask-cuda workers).",
    )
    storage: StorageSpec = Field(default_factory=StorageSpec)
    backoff_limit: int = Field(default=0, ge=0, description="Runner Job retries.")
    active_deadline_seconds: Optional[int] = Field(default=None, ge=1)
    ttl_seconds_after_finished: Optional[int] = Field(default=86400, ge=0)
    cleanup_policy: CleanupPolicy = CleanupPolicy.always

    @field_validator(*RESOURCE_FORBIDDEN_FIELDS)
    @classmethod
    def _no_runner_only_fields(cls, value: Any, info: ValidationInfo) -> Any:
        if value:  # None / {} (what a dumped spec carries) are the defaults: fine
            raise ValueError(f"not allowed in a KMeansPartition: {RESOURCE_FORBIDDEN_FIELDS[info.field_name]}")
        return value

    @field_validator("input_path", "output_path")
    @classmethod
    def _remote_paths(cls, value: Union[str, list[str]], info: ValidationInfo) -> Union[str, list[str]]:
        """Each pod has its own filesystem: a local output would vanish with the runner pod."""
        if (info.context or {}).get("allow_local_paths"):
            return value
        for path in [value] if isinstance(value, str) else value:
            if not _remote(path):
                raise ValueError(f"{path!r} is not a remote URI (e.g. s3://bucket/path); a resource's pods "
                                 "do not share a filesystem (local paths work only with the local CLI)")
        return value

    @field_validator("storage")
    @classmethod
    def _allowed_storage_options(cls, value: StorageSpec, info: ValidationInfo) -> StorageSpec:
        """storage.options: only the non-secret options of the paths' protocols (credentials.py)."""
        paths = [info.data.get("output_path") or "", *JobSpec._as_list(info.data.get("input_path"))]
        problems = option_problems(value.options, {protocol_of(path) for path in paths})
        if problems:
            raise ValueError("; ".join(problems))
        return value

    def job_spec(self) -> JobSpec:
        """The runner's view: job fields only, storage options merged in."""
        data = {name: getattr(self, name) for name in JobSpec.model_fields}
        data["storage_options"] = {**self.storage.options, **self.storage_options}
        return JobSpec(**data)


def format_validation_error(err: ValidationError) -> str:
    """One line per problem, each naming the field by its manifest (camelCase) path."""
    lines = []
    for item in err.errors():
        loc = ".".join(str(part) for part in item["loc"]) or "spec"
        lines.append(f"{loc}: {item['msg']}")
    return "; ".join(lines)


def _validate(model: type[_Model], data: dict[str, Any], context: Optional[dict[str, Any]] = None) -> Any:
    try:
        return model.model_validate(data, context=context)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "spec"
        raise SpecError(field, format_validation_error(err)) from None


def parse_job_spec(data: dict[str, Any]) -> JobSpec:
    """Validate a dict (snake_case or camelCase keys) as a `JobSpec`, raising `SpecError`."""
    return _validate(JobSpec, data)


def parse_resource_spec(data: dict[str, Any], *, allow_local_paths: bool = False) -> KMeansPartitionSpec:
    """Validate the `spec` of a KMeansPartition manifest, raising `SpecError`.

    ``allow_local_paths``: for the local CLI (``run -f``), which runs every process on one machine."""
    return _validate(KMeansPartitionSpec, data, {"allow_local_paths": allow_local_paths})
