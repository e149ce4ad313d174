"""A partition of the dataset as it lives in a Dask worker's memory.

Reading and normalising happen on the worker (`load_partition`); the client
only ever sees `PartitionStats` and small per-step partials.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa

from .kmeans import augment_rows, row_sq_norms


@dataclass
class Partition:
    """Normalised rows of one input partition, kept on a worker between steps."""

    index: int
    source: str
    row_offset: int
    ids: pa.Array
    xa: np.ndarray  # (n, d + 1) float32: normalised rows plus a column of ones
    x_sq: np.ndarray  # (n,) float32 squared norms of the normalised rows
    metadata: pa.Table

    @property
    def n_rows(self) -> int:
        return self.xa.shape[0]

    @property
    def x(self) -> np.ndarray:
        """The normalised rows (a view, without the ones column)."""
        return self.xa[:, :-1]

    @classmethod
    def from_normalised(
        cls,
        index: int,
        source: str,
        row_offset: int,
        ids: pa.Array,
        x: np.ndarray,
        metadata: Optional[pa.Table] = None,
    ) -> "Partition":
        xa = augment_rows(x)
        meta = metadata if metadata is not None else pa.table({})
        return cls(index, source, row_offset, ids, xa, row_sq_norms(xa[:, :-1]), meta)


@dataclass
class PartitionStats:
    """What the client learns about a partition: enough for checks and the tolerance."""

    index: int
    source: str
    n_rows: int
    dim: int
    feature_sum: np.ndarray  # (d,) float64
    feature_sq_sum: np.ndarray  # (d,) float64
    id_hashes: np.ndarray  # (n,) uint64, for the duplicate-id count


def load_partition(index: int, ref, options: dict) -> Partition:
    """Read one `PartitionRef` and normalise it (runs on a worker)."""
    from .normalise import normalise_rows
    from .read import read_partition

    raw = read_partition(ref, **options)
    x = normalise_rows(raw.embeddings, raw.source, raw.row_offset) if len(raw.ids) else raw.embeddings
    return Partition.from_normalised(index, raw.source, raw.row_offset, raw.ids, x, raw.metadata)


def partition_stats(part: Partition) -> PartitionStats:
    x = part.x
    x64 = x.astype(np.float64)
    return PartitionStats(
        index=part.index,
        source=part.source,
        n_rows=part.n_rows,
        dim=x.shape[1],
        feature_sum=x64.sum(axis=0),
        feature_sq_sum=np.einsum("ij,ij->j", x64, x64),
        id_hashes=hash_ids(part.ids),
    )


def hash_ids(ids: pa.Array) -> np.ndarray:
    """64-bit hashes of ids (strings or integers), stable across processes."""
    import pandas as pd

    values = ids.to_pandas() if len(ids) else pd.Series([], dtype=object)
    return pd.util.hash_pandas_object(values, index=False).to_numpy(dtype=np.uint64)


def count_duplicate_ids(hashes: list[np.ndarray]) -> int:
    """Rows whose id hash was already seen (extra occurrences beyond the first)."""
    if not hashes:
        return 0
    everything = np.concatenate(hashes)
    return int(everything.size - np.unique(everything).size)
