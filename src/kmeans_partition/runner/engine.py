"""Which k-means engine fits the centroids: ours on Dask (NumPy), or cuML/RAFT on GPU workers.

``dask``  our engine (`fit.py`): any Dask workers.
``raft``  ``cuml.dask.cluster.KMeans`` (RAFT multi-GPU) on dask-cuda workers; the centroids it
          finds are then assigned and written by the same code as ours.
``auto``  ``raft`` when cuML imports on every worker and every worker has a GPU of its own (no two
          workers on one host share their first device, as a LocalCluster's would), else ``dask``.
          Safe on CPU: without cuML or GPUs it is ``dask``.

The RAFT path is written against cuML's documented API and is thin on purpose; it only runs where
cuML and GPUs exist (tests: ``tests/test_engine.py``, skipped without cuML).
"""

from __future__ import annotations

import socket
import time
from dataclasses import asdict, dataclass
from typing import Optional, Union

import numpy as np
from distributed import Client, Future

from .fit import FitResult
from .partition import Partition
from ..spec import Engine, JobSpec, SpecError


def _cuml_importable() -> bool:
    try:
        import cuml.dask.cluster  # noqa: F401
    except Exception:  # ImportError, or a CUDA runtime error while importing
        return False
    return True


def _gpu_count() -> int:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def _gpu_identity() -> Optional[str]:
    """``host/PCI bus id`` of this process's first GPU, or None without one."""
    if _gpu_count() == 0:
        return None
    try:
        import cupy

        return f"{socket.gethostname()}/{cupy.cuda.runtime.deviceGetPCIBusId(0)}"
    except Exception:
        return None


def workers_have_cuml(client: Client) -> bool:
    """cuML on every worker (checked there: the runner pod itself has no GPU and may lack it)."""
    found = client.run(_cuml_importable)
    return bool(found) and all(found.values())


def workers_have_gpus(client: Client) -> bool:
    """Every worker has a GPU, and no two workers share one (cuML's multi-GPU fit needs one each)."""
    identities = list(client.run(_gpu_identity).values())
    return bool(identities) and None not in identities and len(set(identities)) == len(identities)


def parse_engine(requested: Union[Engine, str]) -> Engine:
    try:
        return Engine(requested)
    except ValueError:
        names = ", ".join(e.value for e in Engine)
        raise SpecError("engine", f"{requested!r} is not one of {names}") from None


def choose_engine(requested: Union[Engine, str], client: Client) -> Engine:
    """Resolve ``auto`` and check that ``raft`` can run here."""
    requested = parse_engine(requested)
    if requested == Engine.dask:
        return Engine.dask
    usable = workers_have_cuml(client) and workers_have_gpus(client)
    if requested == Engine.raft and not usable:
        raise SpecError(
            "engine",
            "raft needs cuML (the image's gpu build) and dask-cuda workers with a GPU each; use engine dask",
        )
    return Engine.raft if usable else Engine.dask


def _device_block(part: Partition):
    import cupy

    return cupy.asarray(part.x)


@dataclass(frozen=True)
class RaftParams:
    """The job's k-means settings as cuML takes them (pickled into the fitting task)."""

    n_clusters: int
    init: str  # ours: "k-means||" or "random"
    max_iter: int
    tol: float  # passed as cuML defines it (compared to the relative inertia change)
    random_state: int
    oversampling_factor: float
    max_samples_per_batch: int

    @classmethod
    def from_spec(cls, spec: JobSpec) -> "RaftParams":
        return cls(
            n_clusters=spec.n_clusters,
            init=spec.init,
            max_iter=spec.max_iter,
            tol=spec.tol,
            random_state=spec.random_state,
            oversampling_factor=spec.oversampling_factor,
            max_samples_per_batch=spec.max_samples_per_batch,
        )

    def cuml_kwargs(self) -> dict:
        """Keyword arguments of ``cuml.dask.cluster.KMeans`` (``init`` named as cuML names it)."""
        kwargs = asdict(self)
        kwargs["init"] = "scalable-k-means++" if self.init == "k-means||" else "random"
        return kwargs


def _fit_raft_on_worker(keys: list[str], rows: list[int], dim: int, params: RaftParams, initial) -> tuple:
    """Runs as a task on a GPU worker, so the runner (client) never touches a GPU."""
    import cupy
    import dask
    import dask.array as da
    from cuml.dask.cluster import KMeans
    from distributed import worker_client

    with worker_client() as client:
        parts = [Future(key, client=client) for key in keys]
        blocks = [
            da.from_delayed(
                dask.delayed(client.submit(_device_block, part, pure=False)),
                shape=(n, dim),
                dtype=np.float32,
                meta=cupy.empty((0, dim), dtype=np.float32),
            )
            for part, n in zip(parts, rows)
        ]
        kwargs = params.cuml_kwargs()
        named_init = kwargs.pop("init")
        init = cupy.asarray(initial) if initial is not None else named_init
        model = KMeans(client=client, init=init, **kwargs)
        model.fit(da.concatenate(blocks, axis=0))
        centroids = model.cluster_centers_
        if hasattr(centroids, "__cuda_array_interface__"):
            centroids = cupy.asnumpy(centroids)
        return np.asarray(centroids, dtype=np.float32), getattr(model, "n_iter_", None)


def fit_raft(
    client: Client,
    parts: list[Future],
    rows: list[int],
    dim: int,
    params: RaftParams,
    initial_centroids: Optional[np.ndarray] = None,
) -> FitResult:
    """Fit with cuML's multi-GPU KMeans on the partitions already on the workers."""
    started = time.perf_counter()
    task = client.submit(
        _fit_raft_on_worker, [p.key for p in parts], rows, dim, params, initial_centroids, pure=False
    )
    centroids, n_iter = task.result()
    n_iter = int(n_iter) if n_iter else params.max_iter
    result = FitResult(centroids=centroids, n_iter=n_iter, converged=n_iter < params.max_iter)
    result.timings = {"init": 0.0, "fit": time.perf_counter() - started}
    return result
