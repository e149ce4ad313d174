"""The Kubernetes side of a resource's spec: the Dask cluster, container resources, storage.

Split from `kmeans_partition.spec` (which re-exports every name here, so imports keep working);
also holds `_Model`, the base of every spec and status model (camelCase aliases, extra keys refused).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, field_validator
from pydantic.alias_generators import to_camel

from kmeans_partition.credentials import option_problems
from kmeans_partition.runner.worker_probe import CUPY_TF32_ENV  # the operator sets it: cluster.env may not

# Kubernetes resource.Quantity syntax (the pattern the API server's OpenAPI uses).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# Universal maxima (the CRD carries them; site limits are operator policy, operator/policy.py):
# one Dask scheduler drives every worker in each Lloyd round, and past about a thousand workers
# it, not the workers, sets the pace; no node ships more than 16 GPUs (dask-cuda-worker runs one
# worker per GPU of its node); a cluster that is not ready within a day is stuck, not slow.
MAX_WORKERS = 1000
MAX_GPUS_PER_WORKER = 16
MAX_READY_TIMEOUT_SECONDS = 86400


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
    )


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
