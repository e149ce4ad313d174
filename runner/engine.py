"""Which k-means engine fits the centroids: ours on Dask (NumPy), or cuML/RAFT on GPU workers.

``dask``  our engine (`fit.py`): any Dask workers.
``raft``  ``cuml.dask.cluster.KMeans`` (RAFT multi-GPU) on dask-cuda workers; the centroids it
          finds are then assigned and written by the same code as ours.
``auto``  ``raft`` when cuML imports and every worker sees a GPU, else ``dask``.

The RAFT path is written against cuML's documented API and is thin on purpose; it only runs where
cuML and GPUs exist (tests: ``tests/test_engine.py``, skipped without cuML).
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np
from distributed import Client, Future

from .fit import FitResult
from .partition import Partition
from .spec import SpecError

ENGINES = ("auto", "dask", "raft")


def cuml_available() -> bool:
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


def workers_have_gpus(client: Client) -> bool:
    counts = client.run(_gpu_count)
    return bool(counts) and all(count > 0 for count in counts.values())


def choose_engine(requested: str, client: Client) -> str:
    """Resolve ``auto`` and check that ``raft`` can run here."""
    if requested not in ENGINES:
        raise SpecError("engine", f"{requested!r} is not one of {', '.join(ENGINES)}")
    if requested == "dask":
        return "dask"
    usable = cuml_available() and workers_have_gpus(client)
    if requested == "raft" and not usable:
        raise SpecError(
            "engine",
            "raft needs cuML (the image's gpu build) and dask-cuda workers with GPUs; use engine dask",
        )
    return "raft" if usable else "dask"


def _device_block(part: Partition):
    import cupy

    return cupy.asarray(part.x)


def fit_raft(
    client: Client,
    parts: list[Future],
    rows: list[int],
    dim: int,
    n_clusters: int,
    init: str,
    max_iter: int,
    tol: float,
    random_state: int,
    oversampling_factor: float,
    max_samples_per_batch: int,
    initial_centroids: Optional[np.ndarray] = None,
) -> FitResult:
    """Fit with cuML's multi-GPU KMeans on the partitions already on the workers.

    ``tol`` is passed as cuML defines it (cuML compares it to the relative inertia change).
    """
    import cupy
    import dask
    import dask.array as da
    from cuml.dask.cluster import KMeans

    started = time.perf_counter()
    blocks = [
        da.from_delayed(
            dask.delayed(client.submit(_device_block, part, pure=False)),
            shape=(n, dim),
            dtype=np.float32,
            meta=cupy.empty((0, dim), dtype=np.float32),
        )
        for part, n in zip(parts, rows)
    ]
    matrix = da.concatenate(blocks, axis=0)
    cuml_init = initial_centroids if initial_centroids is not None else (
        "scalable-k-means++" if init == "k-means||" else "random"
    )
    model = KMeans(
        client=client,
        n_clusters=n_clusters,
        init=cuml_init,
        max_iter=max_iter,
        tol=tol,
        random_state=random_state,
        oversampling_factor=oversampling_factor,
        max_samples_per_batch=max_samples_per_batch,
    )
    model.fit(matrix)
    centroids = model.cluster_centers_
    centroids = cupy.asnumpy(centroids) if hasattr(centroids, "__cuda_array_interface__") else np.asarray(centroids)
    n_iter = int(getattr(model, "n_iter_", max_iter) or max_iter)
    result = FitResult(centroids=centroids.astype(np.float32), n_iter=n_iter, converged=n_iter < max_iter)
    result.timings = {"init": 0.0, "fit": time.perf_counter() - started}
    return result
