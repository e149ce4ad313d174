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
syntax (``8Gi``, ``500m``, ``4``).
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, WithJsonSchema, field_validator
from pydantic.alias_generators import to_camel

from kmeans_partition.credentials import option_problems, protocol_of, url_credentials

API_GROUP = "kmeanspartition.dev"
API_VERSION = "v1alpha1"
KIND = "KMeansPartition"
PLURAL = "kmeanspartitions"
SHORT_NAME = "kmp"

# Kubernetes resource.Quantity syntax (the pattern the API server's OpenAPI uses).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
GLOB_CHARACTERS = "*?[]{}"
# A remote URI (fsspec chains such as simplecache::s3://... included), and the local ones.
REMOTE_URI_PATTERN = r"^([a-zA-Z][a-zA-Z0-9+.-]*::)*[a-zA-Z][a-zA-Z0-9+.-]*://"
LOCAL_URI_PATTERN = r"^([a-zA-Z][a-zA-Z0-9+.-]*::)*(file|local|memory)://"
# Universal maxima (the CRD carries them; site limits are operator policy, operator/policy.py):
# one Dask scheduler drives every worker in each Lloyd round, and past about a thousand workers
# it, not the workers, sets the pace; no node ships more than 16 GPUs (dask-cuda-worker runs one
# worker per GPU of its node); a cluster that is not ready within a day is stuck, not slow.
MAX_WORKERS = 1000
MAX_GPUS_PER_WORKER = 16
MAX_READY_TIMEOUT_SECONDS = 86400
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


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
    )


#: ``distance_precision`` values; ``tf32`` only changes anything on GPU workers (see README "GPU").
DistancePrecision = Literal["float32", "tf32"]
#: ``memory_mode`` values (`runner.memory_mode`).
MemoryMode = Literal["auto", "in_memory", "out_of_core"]
#: Env var through which CuPy allows TF32 for float32 GEMMs (read by CuPy, default 0); the operator sets
#: it on GPU workers from ``distance_precision``, so ``cluster.env`` may not set it.
CUPY_TF32_ENV = "CUPY_TF32"


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


def _check_quantity(value: Union[str, int]) -> Union[str, int]:
    if isinstance(value, bool) or (isinstance(value, int) and value < 0):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (a non-negative integer or e.g. '8Gi', '500m')")
    if isinstance(value, str) and not re.fullmatch(QUANTITY_PATTERN, value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. '8Gi', '500m', '4'; no spaces, no 'GB')")
    return value


Quantity = Annotated[
    Union[str, int],
    AfterValidator(_check_quantity),
    WithJsonSchema({"anyOf": [{"type": "string", "pattern": QUANTITY_PATTERN}, {"type": "integer", "minimum": 0}]}),
]


class ResourceRequirements(_Model):
    """Kubernetes container resources (quantities as strings, e.g. "4Gi", "500m", or integers)."""

    requests: Optional[dict[str, Quantity]] = None
    limits: Optional[dict[str, Quantity]] = None


class ClusterResources(_Model):
    scheduler: ResourceRequirements = Field(default_factory=ResourceRequirements)
    worker: ResourceRequirements = Field(default_factory=ResourceRequirements)
    runner: ResourceRequirements = Field(default_factory=ResourceRequirements)


class EnvVar(_Model):
    name: str = Field(min_length=1)
    value: Optional[str] = None


# Device memory for dask-cuda flags: bytes as an integer or a quantity with a binary/decimal unit ("40Gi",
# "512Mi", "40G"), or a fraction of the GPU's memory ("0.8", "1.0": a decimal point and at most 1, as
# dask-cuda tells a fraction from a byte count).
DEVICE_MEMORY_PATTERN = r"^([0-9]+|[0-9]+(\.[0-9]+)?([KMGTP]i|[kMGTP])|0?\.[0-9]+|1\.0*)$"


def _check_device_memory(value: str) -> str:
    if not re.fullmatch(DEVICE_MEMORY_PATTERN, value):
        raise ValueError(
            f"{value!r} is neither a byte quantity (e.g. '40Gi', '512Mi', '40G') nor a fraction of the GPU's "
            "memory written with a decimal point (e.g. '0.8')"
        )
    return value


DeviceMemory = Annotated[
    str, AfterValidator(_check_device_memory), WithJsonSchema({"type": "string", "pattern": DEVICE_MEMORY_PATTERN})
]


class GpuWorkerSpec(_Model):
    """Device memory settings of the dask-cuda worker processes (one per GPU); unused on CPU workers."""

    rmm_async: bool = Field(
        default=True,
        description="Use RMM's asynchronous allocator (cudaMallocAsync, `--rmm-async`); false: an RMM pool of "
        "rmmPoolSize (no RMM pool without it). CuPy allocates through RMM either way.",
    )
    rmm_pool_size: Optional[DeviceMemory] = Field(
        default=None,
        description="With rmmAsync: the initial size of the async pool; otherwise the RMM pool size "
        "(`--rmm-pool-size`). A byte quantity ('40Gi') or a fraction of the GPU's memory ('0.9').",
    )
    device_memory_limit: DeviceMemory = Field(
        default="0.8",
        description="Device memory per GPU above which the worker spills Dask-held data to host memory "
        "(`--device-memory-limit`): a byte quantity or a fraction of the GPU's memory; '0' never spills.",
    )
    shm_size: Quantity = Field(
        default="1Gi",
        description="Size of the memory-backed /dev/shm given to pods with more than one GPU (NCCL between "
        "the pod's GPU processes); it counts toward the pod's memory.",
    )


class ClusterSpec(_Model):
    """The Dask cluster the operator creates for one job."""

    workers: int = Field(default=2, ge=1, le=MAX_WORKERS, description="Dask worker replicas.")
    ready_timeout_seconds: int = Field(
        default=900,
        ge=1,
        le=MAX_READY_TIMEOUT_SECONDS,
        description="Seconds the DaskCluster may take to become ready (scheduler pod Ready) before the "
        "resource fails and the DaskCluster is deleted.",
    )
    gpus_per_worker: int = Field(
        default=0, ge=0, le=MAX_GPUS_PER_WORKER,
        description="0: CPU `dask worker`; >=1: `dask-cuda-worker` with nvidia.com/gpu limits."
    )
    threads_per_worker: int = Field(
        default=1,
        ge=1,
        description="Dask threads per CPU worker; each gets CPU request / threadsPerWorker BLAS threads. "
        "(A GPU worker process gets one Dask thread and one BLAS thread per CPU of its share.)",
    )
    image: Optional[str] = Field(default=None, description="Image for scheduler, workers and runner.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: list[str] = Field(default_factory=list, description="Secret names.")
    resources: ClusterResources = Field(default_factory=ClusterResources)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: Optional[dict[str, Any]] = None
    priority_class_name: Optional[str] = None
    env: list[EnvVar] = Field(
        default_factory=list,
        description="Extra env for every pod (after the operator's own, so it overrides them; not CUPY_TF32: "
        "use distancePrecision).",
    )
    gpu: GpuWorkerSpec = Field(
        default_factory=GpuWorkerSpec, description="dask-cuda worker settings (used when gpusPerWorker >= 1)."
    )
    local_directory_size: Quantity = Field(
        default="10Gi",
        description="Size limit of each worker's Dask local directory (spill-to-disk; an emptyDir, "
        "the root filesystem is read-only).",
    )
    tls: bool = Field(
        default=True,
        description="Mutual TLS between runner, scheduler and workers (a per-resource CA and certificate "
        "in an owned Secret, tls:// addresses, encryption required). false: plain tcp://.",
    )

    @field_validator("env")
    @classmethod
    def _precision_not_in_env(cls, value: list[EnvVar]) -> list[EnvVar]:
        if any(var.name == CUPY_TF32_ENV for var in value):
            raise ValueError(f"{CUPY_TF32_ENV} is set by the operator from distancePrecision (float32 | tf32)")
        return value


class SecretRef(_Model):
    name: str = Field(min_length=1)


class StorageSpec(_Model):
    """Object-store access: credentials only via a Secret, non-secret options inline."""

    secret_ref: Optional[SecretRef] = Field(
        default=None, description="Secret whose keys become env vars (e.g. AWS_ACCESS_KEY_ID)."
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Non-secret fsspec options of the paths' protocols, e.g. endpoint_url, "
        "client_kwargs.region_name (an allowlist; credentials, in keys or URLs, are refused: use secretRef).",
    )

    @field_validator("options")
    @classmethod
    def _only_known_non_secret_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Keys of any protocol's allowlist; `KMeansPartitionSpec` narrows it to the paths' protocols."""
        problems = option_problems(value, [])
        if problems:
            raise ValueError("; ".join(problems))
        return value


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
