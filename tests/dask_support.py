"""A real Dask LocalCluster (worker processes) shared by the tests that need one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
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


def scatter_partitions(client: Client, x: np.ndarray, n_parts: int, contiguous: bool = False):
    """Split rows into partitions held on the workers; returns (futures, rows per partition).
    ``contiguous``: in runs of partition indexes per worker, as the job reads them (`memory_mode.spread`);
    else where Dask puts them."""
    chunks = np.array_split(np.arange(len(x)), n_parts)
    workers = sorted(client.scheduler_info()["workers"])
    futures = [
        client.submit(
            Partition.from_normalised, i, f"mem://part{i}", int(ix[0]), pa.array(ix.astype(np.int64)), x[ix],
            pure=False, **({"workers": [workers[i * len(workers) // n_parts]]} if contiguous else {}),
        )
        for i, ix in enumerate(chunks)
    ]
    return futures, [len(ix) for ix in chunks]


def write_input(folder: Path, x: np.ndarray, files: int, scale: float = 3.0) -> list[str]:
    """Parquet files with un-normalised embeddings (so normalisation is exercised)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, idx in enumerate(np.array_split(np.arange(len(x)), files)):
        table = pa.table({
            "id": [f"doc-{j:06d}" for j in idx],
            "embedding": pa.array(list(x[idx] * scale * (1 + (idx % 3))[:, None]), type=pa.list_(pa.float32())),
            "text": [f"text {j}" for j in idx],
            "lang": ["en" if j % 2 else "de" for j in idx],
        })
        path = folder / f"part-{i:05d}.parquet"
        pq.write_table(table, path)
        paths.append(str(path))
    return paths
