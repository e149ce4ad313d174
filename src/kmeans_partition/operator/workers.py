"""The Dask worker processes of a job's DaskCluster: command, env and volumes (pure).

CPU pods run ``dask worker --nthreads threadsPerWorker``. GPU pods run ``dask-cuda-worker``
(dask-cuda 26.10 CLI), which starts one worker process per GPU of the pod, each with:

- ``--nthreads``: the process's share of the pod's CPU request (request / gpusPerWorker, at least 1);
- ``--rmm-async`` (RMM's cudaMallocAsync allocator; ``cluster.gpu.rmmAsync``), or an RMM pool when
  that is off and ``rmmPoolSize`` is set; ``--rmm-pool-size`` from ``rmmPoolSize`` (with the async
  allocator: the pool's initial size);
- ``--set-rmm-allocator-for-libs cupy``: CuPy allocates through the same RMM resource;
- ``--device-memory-limit`` always written out (default 0.8 of the GPU, dask-cuda's own default);
- ``CUPY_TF32`` = 1 only for ``distancePrecision: tf32``, else 0.

Every worker container gets `worker_memory.WORKER_ENV` (Arrow's process-wide buffer pool: glibc).

Pods with more than one GPU get a memory-backed emptyDir at ``/dev/shm`` (``cluster.gpu.shmSize``):
NCCL between the pod's GPU processes needs more than a container's default 64 MiB.

BLAS threads: the Nanny that starts each worker process sets ``OMP_NUM_THREADS``,
``MKL_NUM_THREADS`` and ``OPENBLAS_NUM_THREADS`` to 1 from ``distributed.nanny.pre-spawn-environ``
unless the Nanny's own environment has them (distributed's ``_get_env_variables`` prefers
``os.environ``). So they are set as container env: on CPU workers to CPU request / threadsPerWorker
(Dask threads x BLAS threads = the CPU request), on GPU workers to the process's CPU share. The
per-key Dask config form (``DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__OMP_NUM_THREADS``) does
not work: Dask lower-cases the key and the Nanny would export ``omp_num_threads``. Without a CPU
request (or limit) nothing is derived: 1 Dask thread on GPU workers, and the Nanny's 1 BLAS thread.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from kmeans_partition.runner.worker_memory import WORKER_ENV
from kmeans_partition.spec import CUPY_TF32_ENV, KMeansPartitionSpec

WORKER_DASHBOARD_PORT = 8788
BLAS_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
SHM_VOLUME = "dshm"
SHM_PATH = "/dev/shm"
CUPY_ALLOCATOR_LIBS = "cupy"

_CPU_SUFFIX = {"m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}
_CPU_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(m|k|M|G)?$")


@dataclass(frozen=True)
class WorkerProcesses:
    """What the worker container and pod need: command, env (before ``cluster.env``), volumes."""

    command: list[str]
    env: list[dict[str, str]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = field(default_factory=list)


def cpu_cores(quantity: Union[str, int, float]) -> float:
    """A Kubernetes CPU quantity in cores: ``"500m"`` -> 0.5, ``"4"`` / ``4`` -> 4.0."""
    if isinstance(quantity, (int, float)) and not isinstance(quantity, bool):
        return float(quantity)
    match = _CPU_QUANTITY.fullmatch(str(quantity))
    if not match:
        raise ValueError(f"cpu: {quantity!r} is not a CPU quantity (e.g. '4', '500m')")
    return float(match.group(1)) * _CPU_SUFFIX[match.group(2) or ""]


def worker_cpus(spec: KMeansPartitionSpec) -> Optional[float]:
    """The worker pod's CPU request (its limit when only that is set: Kubernetes then requests it)."""
    resources = spec.cluster.resources.worker
    for amounts in (resources.requests, resources.limits):
        if amounts and "cpu" in amounts:
            return cpu_cores(amounts["cpu"])
    return None


def worker_threads(spec: KMeansPartitionSpec) -> tuple[int, Optional[int]]:
    """(Dask threads, BLAS threads) of one worker process; BLAS None when no CPU request is known."""
    cpus = worker_cpus(spec)
    gpus = spec.cluster.gpus_per_worker
    if gpus:
        share = None if cpus is None else max(1, math.floor(cpus / gpus))
        return (share or 1), share
    threads = spec.cluster.threads_per_worker
    blas = None if cpus is None else max(1, math.floor(cpus / threads))
    return threads, blas


def device_memory_arg(value: str) -> str:
    """A spec device-memory value as dask-cuda parses it: '40Gi' -> '40GiB', '40G' -> '40GB'; fractions
    and plain byte counts unchanged (dask's parse_bytes reads 'Gi' and 'G' alike as 'GiB' / 'GB')."""
    return f"{value}B" if value[-1:] in ("i", "k", "M", "G", "T", "P") else value


def _gpu_flags(spec: KMeansPartitionSpec) -> list[str]:
    gpu = spec.cluster.gpu
    flags = ["--rmm-async"] if gpu.rmm_async else []
    if gpu.rmm_pool_size is not None:
        flags += ["--rmm-pool-size", device_memory_arg(gpu.rmm_pool_size)]
    flags += ["--set-rmm-allocator-for-libs", CUPY_ALLOCATOR_LIBS]
    flags += ["--device-memory-limit", device_memory_arg(gpu.device_memory_limit)]
    return flags


def _shm(spec: KMeansPartitionSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts): /dev/shm in memory for pods with more than one GPU, else nothing."""
    if spec.cluster.gpus_per_worker <= 1:
        return [], []
    volume = {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": str(spec.cluster.gpu.shm_size)}}
    return [volume], [{"name": SHM_VOLUME, "mountPath": SHM_PATH}]


def worker_processes(spec: KMeansPartitionSpec) -> WorkerProcesses:
    """The worker container's command, env and volumes for CPU or GPU workers.
    The scheduler address comes from DASK_SCHEDULER_ADDRESS, set by the dask-kubernetes operator."""
    nthreads, blas = worker_threads(spec)
    common = ["--name", "$(DASK_WORKER_NAME)", "--nthreads", str(nthreads),
              "--dashboard-address", str(WORKER_DASHBOARD_PORT)]
    env = [{"name": name, "value": str(blas)} for name in BLAS_THREAD_VARS] if blas is not None else []
    env += [{"name": name, "value": value} for name, value in WORKER_ENV.items()]
    if not spec.cluster.gpus_per_worker:
        return WorkerProcesses(command=["dask", "worker", *common], env=env)
    env.append({"name": CUPY_TF32_ENV, "value": "1" if spec.distance_precision == "tf32" else "0"})
    volumes, mounts = _shm(spec)
    return WorkerProcesses(
        command=["dask-cuda-worker", *common, *_gpu_flags(spec)], env=env, volumes=volumes, volume_mounts=mounts
    )
