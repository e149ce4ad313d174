"""Read one partition straight into one float32 block, batch by batch (runs on a worker).

Parquet is read in record batches of at most `BATCH_ROWS` rows from the partition's row groups;
each batch's embeddings are checked (no nulls, one length) and their values copied into the next
rows of the block (a cast only when the file's values are not float32), normalised there in place
when asked. Ids and metadata stay Arrow. Peak memory: the block plus one batch: no table of the
whole partition, no second copy of the embeddings.

Where the rows go is a `sink`: `BlockSink` (one preallocated array, in memory) or
`memory_mode.FileSink` (appended to a ``.npy`` file on worker-local disk, out of core).
"""

from __future__ import annotations

from typing import Iterable, Optional, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .columns import check_columns_present, check_embedding_type, embedding_matrix, first_length, id_column
from .errors import InputError
from .kmeans import row_sq_norms
from .normalise import normalise_rows
from .worker_memory import avoid_hugepage_stalls, relax_malloc_trim, release_freed, use_system_arrow_pool

#: Most rows per record batch read from parquet (bounds the Arrow memory next to the block) ...
BATCH_ROWS = 65536
#: ... and about this many bytes of embeddings per batch.
BATCH_BYTES = 4 << 20
#: Parquet column chunks are read through buffered streams of this size, not whole.
STREAM_BUFFER_BYTES = 1 << 20


def batch_rows(parquet: pq.ParquetFile, ref, embedding_field: str) -> int:
    """Rows per batch: `BATCH_BYTES` of the embedding (its length from the schema, else the footer estimate)."""
    kind = parquet.schema_arrow.field(embedding_field).type
    if pa.types.is_fixed_size_list(kind):
        row_bytes = 4 * kind.list_size
    elif ref.nbytes and ref.num_rows:
        row_bytes = ref.nbytes / ref.num_rows
    else:
        return BATCH_ROWS
    return int(max(256, min(BATCH_ROWS, BATCH_BYTES // max(1, row_bytes))))


class Sink(Protocol):
    def start(self, n: int, d: int) -> None: ...
    def rows(self, start: int, stop: int) -> np.ndarray: ...  # (stop - start, d) float32 to fill
    def rows_done(self, start: int, stop: int) -> None: ...


class BlockSink:
    """Rows go into one preallocated ``(n, d + extra)`` float32 array; extra columns hold ones."""

    def __init__(self, extra: int = 0):
        self.extra = extra
        self.block: Optional[np.ndarray] = None

    def start(self, n: int, d: int) -> None:
        self.d = d
        self.block = np.empty((n, d + self.extra), dtype=np.float32)
        self.block[:, d:] = 1.0

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.block[start:stop, : self.d]

    def rows_done(self, start: int, stop: int) -> None:
        pass


class Filled:
    """What `fill` read: ids (Arrow), metadata (Arrow, chunked), row count, d, squared norms."""

    def __init__(self, ids: pa.Array, metadata: pa.Table, n: int, d: int, x_sq: Optional[np.ndarray]):
        self.ids, self.metadata, self.n, self.d, self.x_sq = ids, metadata, n, d, x_sq


def prepare_worker() -> None:
    """A worker's memory settings for the data path, before its first Arrow buffer (once per process)."""
    use_system_arrow_pool()  # Python's Arrow buffers on glibc, trimmable (the C++ reader's: `WORKER_ENV`)
    relax_malloc_trim()  # the batches' scratch reused, not page-faulted afresh (~2.3x fewer faults)
    avoid_hugepage_stalls()  # the block's pages fault in 4 KB at a time, never waiting on compaction


def parquet_batches(handle, ref, names: list[str], fields: list[tuple[str, str]], embedding_field: str) -> tuple[int, Iterable]:
    """(rows, record batches) of the partition's row groups, only the `names` columns."""
    parquet = pq.ParquetFile(handle, buffer_size=STREAM_BUFFER_BYTES, pre_buffer=False)
    check_columns_present(parquet.schema_arrow.names, fields, ref.path)
    groups = list(ref.row_groups) if ref.row_groups is not None else list(range(parquet.num_row_groups))
    rows = sum(parquet.metadata.row_group(g).num_rows for g in groups)
    if not rows:
        return 0, [parquet.schema_arrow.empty_table().select(names)]
    size = batch_rows(parquet, ref, embedding_field)
    return rows, parquet.iter_batches(batch_size=size, row_groups=groups, columns=names, use_threads=False)


def fill(
    batches: Iterable,
    n: int,
    sink: Sink,
    source: str,
    row_offset: int,
    id_field: str,
    embedding_field: str,
    metadata_fields: Optional[list[str]],
    embedding_dim: Optional[int],
    normalise: bool,
) -> Filled:
    """Copy the embeddings of `batches` (``n`` rows in all) into `sink`; keep ids and metadata.

    ``normalise``: scale each row to unit norm in place and compute the squared norms (``x_sq``).
    Raises `InputError` naming `source`, the row and the field of the first problem.
    """
    ids, metadata = [], []
    start, d, dim_row, started = 0, embedding_dim, row_offset, False
    x_sq = np.empty(n, dtype=np.float32) if normalise else None
    schema = None
    for batch in batches:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        schema, rows, row0 = table.schema, table.num_rows, row_offset + start
        if rows == 0 and n > 0:
            continue
        if start + rows > n:
            raise InputError(f"holds more rows than its metadata says ({n})", source)
        ids.append(id_column(table, id_field, source, row0))
        column = table.column(embedding_field)
        if not started:
            check_embedding_type(column.type, source, embedding_field)
            d = d if d is not None else (first_length(column) or 0)
            dim_row, started = row0, True
            sink.start(n, d)
        view = sink.rows(start, start + rows)
        embedding_matrix(column, source, embedding_field, row0, embedding_dim, out=view, dim_row=dim_row)
        if normalise and rows:
            normalise_rows(view, source, row0, out=view)
            x_sq[start : start + rows] = row_sq_norms(view)
        sink.rows_done(start, start + rows)
        if metadata_fields:
            metadata.append(table.select(list(metadata_fields)))
        start += rows
    pa.default_memory_pool().release_unused()  # the batches' memory back to the OS, not kept by the pool
    release_freed()  # ... and glibc's
    if start != n or schema is None:
        raise InputError(f"holds {start} rows, its metadata says {n}", source)
    id_type = schema.field(id_field).type
    all_ids = pa.concat_arrays(ids) if len(ids) > 1 else (ids[0] if ids else pa.nulls(0, id_type))
    if metadata_fields:
        meta = pa.concat_tables(metadata) if len(metadata) > 1 else metadata[0]
    else:
        meta = pa.table({"_": pa.nulls(n)}).select([])  # zero columns, n rows
    return Filled(all_ids, meta, n, d or 0, x_sq)
