"""A partition of the dataset as it lives in a Dask worker's memory.

Reading and normalising happen on the worker (`load_partition`); the client
only ever sees `PartitionStats` and small per-step partials.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa

from .errors import InputError
from .kmeans import augment_rows, row_sq_norms
from .block import BlockSink
from .read import read_into


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

    def __sizeof__(self) -> int:
        """Bytes held (Dask's `sizeof`: its memory accounting and the cost it sees in moving the
        partition to another worker, which keeps tasks where their partition lives)."""
        return int(self.xa.nbytes + self.resident_extra_bytes())

    def resident_extra_bytes(self) -> int:
        """Bytes of everything but the rows: squared norms, ids, metadata."""
        return int(self.x_sq.nbytes + self.ids.nbytes + self.metadata.nbytes)

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


def load_partition(index: int, ref, options: dict, out_of_core: bool = False) -> Partition:
    """Read one `PartitionRef` into one (n, d + 1) block, normalised in place (runs on a worker).

    ``out_of_core``: the block goes to a file on the worker's local disk, read back memory-mapped
    (`disk_partition.MappedPartition`); else it stays in memory.
    """
    if out_of_core:
        from .disk_partition import load_mapped

        return load_mapped(index, ref, options)
    sink = BlockSink(extra=1)
    filled = read_into(ref, sink, normalise=True, **options)
    if filled is None:  # an empty JSONL file
        x = np.empty((0, options.get("embedding_dim") or 0), dtype=np.float32)
        return Partition.from_normalised(index, ref.path, ref.row_offset, pa.array([], pa.null()), x,
                                         pa.table({n: pa.nulls(0) for n in options.get("metadata_fields") or []}))
    return _from_block(index, ref, filled, sink.block)


def _from_block(index: int, ref, filled, block: np.ndarray) -> Partition:
    return Partition(index, ref.path, ref.row_offset, filled.ids, block, filled.x_sq, filled.metadata)


ID_COLUMN = "id"


def partition_stats(part: Partition, block_bytes: int = 8 << 20) -> PartitionStats:
    """Row count, dimension, per-feature sums (float64, blocks of <= `block_bytes`) and column types."""
    x = part.x
    block = max(1, block_bytes // (8 * max(1, x.shape[1])))
    feature_sum = np.zeros(x.shape[1])
    feature_sq_sum = np.zeros(x.shape[1])
    for start in range(0, x.shape[0], block):
        x64 = x[start:start + block].astype(np.float64)
        feature_sum += x64.sum(axis=0)
        feature_sq_sum += np.einsum("ij,ij->j", x64, x64)
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
