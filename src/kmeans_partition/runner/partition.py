"""A partition of the dataset as it lives in a Dask worker's memory.

Reading and normalising happen on the worker (`load_partition`); the client
only ever sees `PartitionStats` and small per-step partials. The embeddings are
held by the worker's array library (`backend.partition_namespace`): NumPy on CPU
workers, CuPy (device memory) on dask-cuda workers; ids and metadata stay in Arrow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa

from . import backend as be
from .errors import InputError
from .kmeans import augment_rows, row_sq_norms
from .normalise import normalise_rows
from .read import read_partition


@dataclass
class Partition:
    """Normalised rows of one input partition, kept on a worker between steps."""

    index: int
    source: str
    row_offset: int
    ids: pa.Array
    xa: np.ndarray  # (n, d + 1) float32: normalised rows plus a column of ones (NumPy or CuPy)
    x_sq: np.ndarray  # (n,) float32 squared norms of the normalised rows (same library)
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
    column_schema: pa.Schema  # the id (as "id") and metadata columns' types


#: The array library partitions are loaded into: "auto" (`backend.partition_namespace`), "numpy", "cupy".
ARRAY_BACKEND = "auto"


def load_partition(index: int, ref, options: dict, backend: Optional[str] = None) -> Partition:
    """Read one `PartitionRef` on the host and normalise it onto the worker's device (runs on a worker).

    The rows go to the device once, block by block, straight into the partition's augmented
    buffer (`normalise_rows` with ``out``): the device holds that buffer and one block; the host
    copy is dropped when this returns.
    """
    raw = read_partition(ref, **options)
    xp = be.partition_namespace(backend or ARRAY_BACKEND)
    n, d = raw.embeddings.shape
    xa = be.empty_on(xp, (n, d + 1))
    normalise_rows(raw.embeddings, raw.source, raw.row_offset, out=xa[:, :-1])
    xa[:, -1] = 1.0
    meta = raw.metadata if raw.metadata is not None else pa.table({})
    return Partition(index, raw.source, raw.row_offset, raw.ids, xa, row_sq_norms(xa[:, :-1]), meta)


ID_COLUMN = "id"


def partition_stats(part: Partition, block: int = 65536) -> PartitionStats:
    """Row count, dimension, per-feature sums (d,) (float64, block by block, on the rows' device)
    and column types; the sums come back as NumPy."""
    x = part.x
    xp = be.namespace(x)
    feature_sum = xp.zeros(x.shape[1], dtype=xp.float64, device=be.device(x))
    feature_sq_sum = xp.zeros(x.shape[1], dtype=xp.float64, device=be.device(x))
    for start in range(0, x.shape[0], block):
        x64 = xp.astype(x[start:min(start + block, x.shape[0]), :], xp.float64)
        feature_sum += xp.sum(x64, axis=0)
        feature_sq_sum += np.einsum("ij,ij->j", x64, x64) if be.is_numpy(xp) else xp.sum(x64 * x64, axis=0)
    feature_sum, feature_sq_sum = be.to_host(feature_sum), be.to_host(feature_sq_sum)
    columns = pa.schema([pa.field(ID_COLUMN, part.ids.type)] + list(part.metadata.schema))
    return PartitionStats(part.index, part.source, part.n_rows, x.shape[1], feature_sum, feature_sq_sum, columns)


def unify_column_types(stats: list[PartitionStats], id_field: str) -> pa.Schema:
    """One type per id/metadata column across partitions (e.g. string + large_string, null + string).

    Raises `InputError` naming two files and the field when their types cannot be reconciled.
    """
    try:
        return pa.unify_schemas([s.column_schema for s in stats], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    first = stats[0]
    for other in stats[1:]:
        for field in first.column_schema:
            theirs = other.column_schema.field(field.name).type
            try:
                pa.unify_schemas([pa.schema([field]), pa.schema([pa.field(field.name, theirs)])],
                                 promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                name = id_field if field.name == ID_COLUMN else field.name
                raise InputError(
                    f"column type {theirs} does not match {field.type} in {first.source}",
                    source=other.source, field=name,
                ) from None
    raise InputError("id/metadata column types differ between files and cannot be unified")


def hash_buckets(part: Partition, n_buckets: int) -> list[np.ndarray]:
    """The partition's id hashes split by ``hash % n_buckets`` (for a distributed duplicate count)."""
    hashes = hash_ids(part.ids)
    bucket = hashes % np.uint64(n_buckets)
    return [hashes[bucket == b] for b in range(n_buckets)]


def hash_ids(ids: pa.Array) -> np.ndarray:
    """64-bit hashes of ids (strings or integers), stable across processes."""
    values = ids.to_pandas() if len(ids) else pd.Series([], dtype=object)
    return pd.util.hash_pandas_object(values, index=False).to_numpy(dtype=np.uint64)


def count_duplicates(*bucket_parts: np.ndarray) -> int:
    """Rows of one hash bucket whose id hash was already seen (extra occurrences)."""
    everything = np.concatenate(bucket_parts) if bucket_parts else np.empty(0, np.uint64)
    return int(everything.size - np.unique(everything).size)
