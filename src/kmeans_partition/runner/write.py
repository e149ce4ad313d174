"""Assign every row to its nearest centroid and write ``centroid=N/`` partitions.

Two phases, both on the workers:

1. `write_fragment` (one task per input partition): labels and distances,
   rows sorted by centroid, written to ``_tmp-<run>/part-P.parquet`` with one
   row group per centroid present.
2. `merge_centroids` (one task per group of centroids): reads those row
   groups from every fragment and writes exactly one file per non-empty
   centroid, ``centroid=N/part-00000.parquet`` (a centroid with more than
   `ROWS_PER_FILE` rows is split into ``part-00001`` ...). Row order inside a
   file: input partition order, then input row order.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from . import kmeans as km
from .output import is_local
from .partition import ID_COLUMN, Partition
from .summary import AssignSummary, cosine_margins, nearest_with_second

#: A centroid's rows are split into several files past this many rows.
ROWS_PER_FILE = 1_000_000
#: Rows a merge task holds in memory at most (unless one centroid alone is larger).
ROWS_PER_MERGE_TASK = 2_000_000
L2_COLUMN = "l2_dist_to_cent"
COSINE_COLUMN = "cosine_dist_to_cent"
#: Optional columns (``write_second_centroid``): the neighbouring partition and the margin to it.
SECOND_CENTROID_COLUMN = "second_centroid"
MARGIN_COLUMN = "margin"


@dataclass
class Fragment:
    path: str  # within the output filesystem
    present: np.ndarray  # sorted centroid ids, one row group each
    counts: np.ndarray  # (k,) rows per centroid
    inertia: float
    summary: Optional[AssignSummary] = None  # sizes, distances and margins (runner/summary.py)


def arrow_filesystem(url: str, storage_options: dict) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for an fsspec URL (native for local files)."""
    fs, path = url_to_fs(url, **storage_options)
    if is_local(fs):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def distances_to_assigned(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray, batch: int):
    """(l2, cosine) distances of each row to its centroid, float32 (computed in float64).

    ``l2 = ||x - c||``; ``cosine = 1 - x.c / ||c||`` (rows are unit-norm).
    """
    c64 = centroids.astype(np.float64)
    c_unit = c64 / np.maximum(np.linalg.norm(c64, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    l2 = np.empty(len(labels), dtype=np.float32)
    cosine = np.empty(len(labels), dtype=np.float32)
    for start in range(0, len(labels), batch):
        stop = min(start + batch, len(labels))
        xb = x[start:stop].astype(np.float64)
        lab = labels[start:stop]
        diff = xb - c64[lab]
        l2[start:stop] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        cosine[start:stop] = 1.0 - np.einsum("ij,ij->i", xb, c_unit[lab])
    return l2, cosine


#: Most values one Arrow list<float32> array can hold (int32 offsets).
MAX_LIST_VALUES = 2**31 - 1


def embedding_array(x: np.ndarray, max_values: int = MAX_LIST_VALUES) -> pa.ChunkedArray:
    """(n, d) float32 -> list<float32>, in chunks whose int32 offsets cannot overflow."""
    n, d = x.shape
    rows_per_chunk = max(1, max_values // max(d, 1))
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    chunks = []
    for start in range(0, n, rows_per_chunk):
        rows = min(rows_per_chunk, n - start)
        offsets = pa.array(np.arange(0, (rows + 1) * d, d, dtype=np.int32))
        chunks.append(pa.ListArray.from_arrays(offsets, pa.array(flat[start * d:(start + rows) * d])))
    return pa.chunked_array(chunks, type=pa.list_(pa.float32()))


def output_table(
    part: Partition, order: np.ndarray, l2, cosine, id_field: str, embedding_field: str, column_schema: pa.Schema
) -> pa.Table:
    """Rows in `order`; id and metadata cast to the types unified across partitions."""
    idx = pa.array(order)
    columns = {
        id_field: part.ids.take(idx).cast(column_schema.field(ID_COLUMN).type),
        embedding_field: embedding_array(part.x[order]),
    }
    for name in part.metadata.column_names:
        columns[name] = part.metadata.column(name).take(idx).cast(column_schema.field(name).type)
    columns[L2_COLUMN] = pa.array(l2[order])
    columns[COSINE_COLUMN] = pa.array(cosine[order])
    return pa.table(columns)


@dataclass(frozen=True)
class FragmentParams:
    """What every `write_fragment` task of a run shares (pickled into each task)."""

    batch: int  # rows per distance block
    tmp_url: str  # the run's ``_tmp-<run>`` folder
    storage_options: dict
    id_field: str
    embedding_field: str
    column_schema: pa.Schema  # id (as "id") and metadata types unified across partitions
    second_centroid: bool = False  # also write `SECOND_CENTROID_COLUMN` and `MARGIN_COLUMN`


def write_fragment(part: Partition, centroids: np.ndarray, params: FragmentParams) -> Fragment:
    """Phase 1: assign, compute distances and margins, write rows sorted by centroid (runs on a worker)."""
    k = centroids.shape[0]
    batch = params.batch
    labels, dist_sq, second = nearest_with_second(part.xa, part.x_sq, km.augment_centroids(centroids), batch)
    l2, cosine = distances_to_assigned(part.x, centroids, labels, batch)
    margin = cosine_margins(part.x, centroids, labels, second, batch)
    order = np.argsort(labels, kind="stable")
    table = output_table(part, order, l2, cosine, params.id_field, params.embedding_field, params.column_schema)
    if params.second_centroid:
        table = with_second_centroid(table, second, margin, order)
    counts = np.bincount(labels, minlength=k).astype(np.int64)
    present = np.flatnonzero(counts)
    fs, tmp = arrow_filesystem(params.tmp_url, params.storage_options)
    fs.create_dir(tmp, recursive=True)
    path = posixpath.join(tmp, f"part-{part.index:05d}.parquet")
    bounds = np.concatenate([[0], np.cumsum(counts[present])])
    with pq.ParquetWriter(path, table.schema, filesystem=fs) as writer:
        for i in range(len(present)):
            piece = table.slice(int(bounds[i]), int(bounds[i + 1] - bounds[i]))
            writer.write_table(piece, row_group_size=max(len(piece), 1))
    summary = AssignSummary.from_rows(labels, cosine, margin, k)
    return Fragment(path, present, counts, float(dist_sq.sum(dtype=np.float64)), summary)


def with_second_centroid(table: pa.Table, second, margin: np.ndarray, order: np.ndarray) -> pa.Table:
    """Append the second centroid (int32) and margin (float32) columns; nulls when k == 1."""
    if second is None:
        return table.append_column(SECOND_CENTROID_COLUMN, pa.nulls(len(order), pa.int32())).append_column(
            MARGIN_COLUMN, pa.nulls(len(order), pa.float32())
        )
    return table.append_column(SECOND_CENTROID_COLUMN, pa.array(second[order])).append_column(
        MARGIN_COLUMN, pa.array(margin[order])
    )


def plan_merge_groups(counts: np.ndarray, max_rows: int = ROWS_PER_MERGE_TASK) -> list[list[int]]:
    """Consecutive non-empty centroids grouped so each group holds about `max_rows` rows."""
    groups: list[list[int]] = []
    current: list[int] = []
    rows = 0
    for centroid in np.flatnonzero(counts):
        size = int(counts[centroid])
        if current and rows + size > max_rows:
            groups.append(current)
            current, rows = [], 0
        current.append(int(centroid))
        rows += size
    if current:
        groups.append(current)
    return groups


def merge_centroids(
    centroid_ids: list[int],
    fragments: list[tuple[str, np.ndarray]],
    tmp_url: str,
    out_url: str,
    storage_options: dict,
    rows_per_file: int = ROWS_PER_FILE,
) -> list[tuple[int, str, int]]:
    """Phase 2: one file per centroid from every fragment's row group (runs on a worker).

    Streams one row group at a time, so memory stays at one (partition, centroid)
    slice whatever the centroid's size. Returns ``(centroid, relative path, rows)``.
    """
    fs, out_root = arrow_filesystem(out_url, storage_options)
    tmp_fs, _ = arrow_filesystem(tmp_url, storage_options)
    readers = {path: pq.ParquetFile(path, filesystem=tmp_fs) for path, _ in fragments}
    written = []
    for centroid in centroid_ids:
        sources = []
        for path, present in fragments:
            position = int(np.searchsorted(present, centroid))
            if position < len(present) and present[position] == centroid:
                sources.append((readers[path], position))
        written += _write_centroid(centroid, sources, fs, out_root, rows_per_file)
    return written


def _write_centroid(centroid, sources, fs, out_root, rows_per_file) -> list[tuple[int, str, int]]:
    """Copy the centroid's row groups into ``centroid=N/part-*.parquet``, rolling at `rows_per_file`."""
    folder = f"centroid={centroid}"
    fs.create_dir(posixpath.join(out_root, folder), recursive=True)
    written: list[tuple[int, str, int]] = []
    writer, rows_in_file = None, 0
    try:
        for reader, group in sources:
            piece = reader.read_row_group(group)
            while piece.num_rows:
                if writer is None:
                    relative = f"{folder}/part-{len(written):05d}.parquet"
                    writer = pq.ParquetWriter(posixpath.join(out_root, relative), piece.schema, filesystem=fs)
                    written.append((centroid, relative, 0))
                take = min(piece.num_rows, rows_per_file - rows_in_file)
                writer.write_table(piece.slice(0, take))
                rows_in_file += take
                written[-1] = (centroid, written[-1][1], rows_in_file)
                piece = piece.slice(take)
                if rows_in_file == rows_per_file:
                    writer.close()
                    writer, rows_in_file = None, 0
    finally:
        if writer is not None:
            writer.close()
    return written
