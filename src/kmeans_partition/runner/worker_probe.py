"""What a worker has, asked on the worker itself (``client.run(probe_worker)``, `engine.choose_engine`).

Kept apart from `engine` so that a worker unpickling these functions loads nothing but the standard
library: not the spec models (pydantic) the engine choice needs on the client.
"""

from __future__ import annotations

import importlib
import os
import socket
from dataclasses import dataclass
from typing import Optional

#: Env var through which CuPy allows TF32 for float32 GEMMs (read by CuPy, default 0); the operator
#: sets it on GPU workers from ``distance_precision`` (so ``cluster.env`` may not set it).
CUPY_TF32_ENV = "CUPY_TF32"
#: What cuML's multi-GPU KMeans imports (``cuml/dask/cluster/kmeans.py``), checked on every worker.
CUML_MODULES = ("cuml.dask.cluster", "raft_dask.common.comms")


def import_cuml_dask() -> None:
    """Import what cuML's multi-GPU KMeans needs; raises the worker's real error."""
    for name in CUML_MODULES:
        importlib.import_module(name)


def cuml_import_error() -> Optional[str]:
    try:
        import_cuml_dask()
    except Exception as err:  # ImportError, or a CUDA runtime error raised while importing
        return f"{type(err).__name__}: {err}"
    return None


def gpu_count() -> int:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def gpu_identity() -> Optional[str]:
    """``host/PCI bus id`` of this process's first GPU, or None without one."""
    if gpu_count() == 0:
        return None
    try:
        import cupy

        return f"{socket.gethostname()}/{cupy.cuda.runtime.deviceGetPCIBusId(0)}"
    except Exception:
        return None


@dataclass(frozen=True)
class WorkerProbe:
    """What one worker process has, as seen from inside it."""

    host: str
    gpu: Optional[str]  # host/PCI bus id of its first visible GPU; None: no GPU
    cuml_error: Optional[str]  # None: cuML's multi-GPU KMeans imports
    tf32: bool  # CUPY_TF32=1 in its environment

    @property
    def device(self) -> str:
        return f"gpu {self.gpu}" if self.gpu else f"cpu {self.host}"


def probe_worker() -> WorkerProbe:
    """Runs on a worker (``client.run``)."""
    return WorkerProbe(
        host=socket.gethostname(),
        gpu=gpu_identity(),
        cuml_error=cuml_import_error(),
        tf32=os.environ.get(CUPY_TF32_ENV, "0").strip() == "1",
    )
