"""A real Dask LocalCluster (worker processes) shared by the tests that need one."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from distributed import Client, LocalCluster

from kmeans_partition.runner.partition import Partition


@pytest.fixture(scope="session")
def dask_client():
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster, Client(cluster) as client:
        yield client


def blobs(n: int, d: int, k: int, seed: int, spread: float = 0.3) -> np.ndarray:
    """Unit-norm rows around k random centres, float32."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    x = centres[rng.integers(k, size=n)] + spread * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def scatter_partitions(client: Client, x: np.ndarray, n_parts: int):
    """Split rows into partitions held on the workers; returns (futures, rows per partition)."""
    chunks = np.array_split(np.arange(len(x)), n_parts)
    futures = [
        client.submit(
            Partition.from_normalised, i, f"mem://part{i}", int(ix[0]), pa.array(ix.astype(np.int64)), x[ix],
            pure=False,
        )
        for i, ix in enumerate(chunks)
    ]
    return futures, [len(ix) for ix in chunks]
