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
import pyarrow as pa

from . import backend as be
from .errors import InputError
from .id_hash import hash_ids
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
    xa: np.ndarray  # (n, d + 1) float32: normalised rows plus a column of ones (NumPy or CuPy)
    x_sq: np.ndarray  # (n,) float32 squared norms of the normalised rows (same library)
    metadata: pa.Table

    def __sizeof__(self) -> int:
        """Bytes held (Dask's `sizeof`: its memory accounting and the cost it sees in moving the
        partition to another worker, which keeps tasks where their partition lives)."""
        return int(self.xa.nbytes + self.resident_extra_bytes()) if self.xa is not None else 0

    def resident_extra_bytes(self) -> int:
        """Bytes of everything but the rows: squared norms, ids, metadata (0 once released)."""
        if self.ids is None:
            return 0
        return int(self.x_sq.nbytes + self.ids.nbytes + self.metadata.nbytes)

    def release(self) -> None:
        """Drop rows, norms, ids and metadata now, in the task that used them last (the write's
        split): Dask frees the object only when the scheduler later says so. Any use after this fails."""
        self.xa = self.x_sq = self.ids = self.metadata = None

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


def load_partition(index: int, ref, options: dict, out_of_core: bool = False,
                   backend: Optional[str] = None) -> Partition:
    """Read one `PartitionRef` into one (n, d + 1) block, normalised in place (runs on a worker).

    ``out_of_core``: the block goes to a file on the worker's local disk, read back memory-mapped
    (`disk_partition.MappedPartition`); else it stays in memory, on the worker's device: a GPU
    worker's block is copied to the device once and the host block dropped when this returns.
    """
    if out_of_core:
        from .disk_partition import load_mapped

        return load_mapped(index, ref, options)
    xp = be.partition_namespace(backend or ARRAY_BACKEND)
    sink = BlockSink(extra=1)
    filled = read_into(ref, sink, normalise=True, **options)
    if filled is None:  # an empty JSONL file
        x = np.empty((0, options.get("embedding_dim") or 0), dtype=np.float32)
        part = Partition.from_normalised(index, ref.path, ref.row_offset, pa.nulls(0), x,
                                         pa.table({n: pa.nulls(0) for n in options.get("metadata_fields") or []}))
    else:
        part = _from_block(index, ref, filled, sink.block)
    return part if be.is_numpy(xp) else _onto_device(part, xp)


#: Rows per host -> device copy when a partition moves to a GPU (bounds the transfer buffers).
DEVICE_COPY_ROWS = 65536


def _onto_device(part: Partition, xp) -> Partition:
    """`part` with its rows (n, d + 1) and squared norms (n,) on ``xp``'s device, copied block
    by block into one buffer (the device never holds a second copy); the host block is dropped."""
    host = part.xa
    xa = be.empty_on(xp, host.shape)
    for start in range(0, host.shape[0], DEVICE_COPY_ROWS):
        stop = min(start + DEVICE_COPY_ROWS, host.shape[0])
        xa[start:stop, :] = be.like(host[start:stop, :], xa)
    part.xa, part.x_sq = xa, be.like(part.x_sq, xa)
    return part


def _from_block(index: int, ref, filled, block: np.ndarray) -> Partition:
    return Partition(index, ref.path, ref.row_offset, filled.ids, block, filled.x_sq, filled.metadata)


ID_COLUMN = "id"


def partition_stats(part: Partition, block_bytes: int = 1 << 20) -> PartitionStats:
    """Row count, dimension, per-feature sums (d,) (float64, blocks of <= `block_bytes`, on the
    rows' device) and column types; the sums come back as NumPy. Cache-sized blocks: 1 MB took
    0.65x the time of 8 MB."""
    x = part.x
    block = max(1, block_bytes // (8 * max(1, x.shape[1])))
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


def count_duplicates(*bucket_parts: np.ndarray) -> int:
    """Rows of one hash bucket whose id hash was already seen (extra occurrences)."""
    everything = np.sort(np.concatenate(bucket_parts)) if bucket_parts else np.empty(0, np.uint64)
    return int(np.count_nonzero(everything[1:] == everything[:-1]))  # = size - unique size, without np.unique
