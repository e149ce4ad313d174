"""Our engine for bench/gpu_check.py: ``DaskKMeans.lloyd`` on device-resident partitions.

On a GPU machine the partitions are CuPy arrays generated on the device (``make_chunk``), under a
LocalCUDACluster when dask_cuda imports, else an in-process LocalCluster with one worker on GPU 0.
``library="numpy"`` (``gpu_check.py --cpu-smoke``) runs the same code on NumPy partitions in a CPU
LocalCluster, so CI exercises it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
SRC = BENCH.parent / "src"
for _path in (SRC, BENCH):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def _engine_partition(index, start, rows, d, true_k, seed, spread, library):
    import importlib

    import pyarrow as pa
    from gpu_check import make_chunk

    from kmeans_partition.runner.partition import Partition

    x = make_chunk(importlib.import_module(library), index, rows, d, true_k, seed, spread)
    return Partition.from_normalised(index, f"synthetic://{index}", start, pa.array(np.arange(start, start + rows)), x)


def _on_device(part, library: str) -> bool:
    return library == "numpy" or hasattr(part.x, "__cuda_array_interface__")


def _device_memory(library: str) -> dict[str, int]:
    """On a worker: bytes CuPy's pool holds (its peak: freed blocks stay pooled) and device use."""
    if library == "numpy":
        return {"pool": 0, "used": 0}
    import cupy

    free, total = cupy.cuda.runtime.memGetInfo()
    return {"pool": int(cupy.get_default_memory_pool().total_bytes()), "used": int(total - free)}


def _part_bytes(part) -> int:
    return int(part.x.shape[0] * part.x.shape[1] * 4)


def engine_cluster(library: str):
    """(cluster, description): a LocalCUDACluster (one worker per GPU) when dask_cuda imports, else an
    in-process LocalCluster with one worker (GPU 0; partitions are CuPy arrays all the same)."""
    from distributed import LocalCluster

    if library == "numpy":
        return (LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"),
                "LocalCluster, 2 CPU worker processes (NumPy partitions)")
    try:
        from dask_cuda import LocalCUDACluster

        return LocalCUDACluster(), "LocalCUDACluster (dask_cuda), one worker per GPU"
    except Exception as err:
        why = f"dask_cuda not importable ({type(err).__name__})"
        # memory_limit=0: Dask counts CuPy arrays as worker memory; never spill the partitions to disk
        return (LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0",
                             memory_limit=0), f"LocalCluster, one in-process worker on GPU 0: {why}")


def our_engine(args, k: int, c0: np.ndarray, library: str = "cupy") -> dict[str, Any]:
    """Seconds per iteration of our engine (bounds off, on), rows computed, peak device memory over
    the busiest worker's share of the data, or why it did not run."""
    try:
        from distributed import Client

        from kmeans_partition.runner.fit import DaskKMeans
    except Exception as err:
        return {"note": f"not run: {type(err).__name__}: {err}"}
    out: dict[str, Any] = {}
    paths = [str(SRC), str(BENCH), os.environ.get("PYTHONPATH")]
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, paths))  # worker processes import both
    cluster, out["cluster"] = engine_cluster(library)
    with cluster, Client(cluster) as client:
        starts = list(range(0, args.rows, args.chunk))
        sizes = [min(args.chunk, args.rows - s) for s in starts]
        parts = [client.submit(_engine_partition, i, s, n, args.dim, args.true_clusters, args.seed, args.spread,
                               library, pure=False) for i, (s, n) in enumerate(zip(starts, sizes))]
        try:
            device = all(client.gather([client.submit(_on_device, p, library, pure=False) for p in parts]))
        except Exception as err:
            return {"note": f"not run: partitions from device chunks failed: {type(err).__name__}: {err}"}
        if not device:
            return {"note": "not run: the engine keeps partitions in host memory"}
        for bounds in (False, True):
            model = DaskKMeans(client, parts, sizes, k, args.block, args.seed, bounds=bounds)
            fitted = model.lloyd(c0, args.iters, 0.0)
            out["bounds_on" if bounds else "bounds_off"] = float(np.median([h["seconds"] for h in fitted.history]))
            if bounds:
                out["rows_computed"] = fitted.rows_computed / max(fitted.n_iter * args.rows, 1)
                out["centroids"] = fitted.centroids
        out["workers"] = len(client.scheduler_info()["workers"])
        held = client.run(_device_memory, library)
        share: dict[str, int] = {}
        for part, nbytes in zip(parts, client.gather([client.submit(_part_bytes, p, pure=False) for p in parts])):
            worker = next(iter(client.who_has([part])[part.key]))
            share[worker] = share.get(worker, 0) + nbytes
        busiest = max(share, key=share.get)
        out["memory"] = (held[busiest]["pool"], share[busiest])
    return out
