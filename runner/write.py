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

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from . import kmeans as km
from .partition import Partition

#: A centroid's rows are split into several files past this many rows.
ROWS_PER_FILE = 1_000_000
#: Rows a merge task holds in memory at most (unless one centroid alone is larger).
ROWS_PER_MERGE_TASK = 2_000_000
L2_COLUMN = "l2_dist_to_cent"
COSINE_COLUMN = "cosine_dist_to_cent"


@dataclass
class Fragment:
    path: str  # within the output filesystem
    present: np.ndarray  # sorted centroid ids, one row group each
    counts: np.ndarray  # (k,) rows per centroid
    inertia: float


def arrow_filesystem(url: str, storage_options: dict) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for an fsspec URL (native for local files)."""
    fs, path = url_to_fs(url, **storage_options)
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    if protocol in ("file", "local"):
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


def embedding_array(x: np.ndarray) -> pa.Array:
    """(n, d) float32 -> list<float32>."""
    n, d = x.shape
    values = pa.array(np.ascontiguousarray(x, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int64 if n * d >= 2**31 else np.int32))
    if n * d >= 2**31:
        return pa.LargeListArray.from_arrays(offsets, values).cast(pa.list_(pa.float32()))
    return pa.ListArray.from_arrays(offsets, values)


def output_table(part: Partition, order: np.ndarray, l2, cosine, id_field: str, embedding_field: str) -> pa.Table:
    idx = pa.array(order)
    columns = {id_field: part.ids.take(idx), embedding_field: embedding_array(part.x[order])}
    for name in part.metadata.column_names:
        columns[name] = part.metadata.column(name).take(idx)
    columns[L2_COLUMN] = pa.array(l2[order])
    columns[COSINE_COLUMN] = pa.array(cosine[order])
    return pa.table(columns)


def write_fragment(
    part: Partition,
    centroids: np.ndarray,
    batch: int,
    tmp_url: str,
    storage_options: dict,
    id_field: str,
    embedding_field: str,
) -> Fragment:
    """Phase 1: assign, compute distances, write rows sorted by centroid (runs on a worker)."""
    k = centroids.shape[0]
    labels, dist_sq = km.nearest(part.xa, part.x_sq, km.augment_centroids(centroids), batch)
    l2, cosine = distances_to_assigned(part.x, centroids, labels, batch)
    order = np.argsort(labels, kind="stable")
    table = output_table(part, order, l2, cosine, id_field, embedding_field)
    counts = np.bincount(labels, minlength=k).astype(np.int64)
    present = np.flatnonzero(counts)
    fs, tmp = arrow_filesystem(tmp_url, storage_options)
    fs.create_dir(tmp, recursive=True)
    path = posixpath.join(tmp, f"part-{part.index:05d}.parquet")
    bounds = np.concatenate([[0], np.cumsum(counts[present])])
    with pq.ParquetWriter(path, table.schema, filesystem=fs) as writer:
        for i in range(len(present)):
            piece = table.slice(int(bounds[i]), int(bounds[i + 1] - bounds[i]))
            writer.write_table(piece, row_group_size=max(len(piece), 1))
    return Fragment(path, present, counts, float(dist_sq.sum(dtype=np.float64)))


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

    Returns ``(centroid, relative path, rows)`` for each file written.
    """
    fs, out_root = arrow_filesystem(out_url, storage_options)
    wanted = np.asarray(centroid_ids)
    pieces: dict[int, list[pa.Table]] = {c: [] for c in centroid_ids}
    for path, present in fragments:
        positions = np.searchsorted(present, wanted)
        hit = (positions < len(present)) & (present[np.minimum(positions, len(present) - 1)] == wanted)
        if not hit.any():
            continue
        reader = pq.ParquetFile(path, filesystem=fs)
        for centroid, group in zip(wanted[hit], positions[hit]):
            pieces[int(centroid)].append(reader.read_row_group(int(group)))
    written = []
    for centroid in centroid_ids:
        table = pa.concat_tables(pieces.pop(centroid))
        folder = f"centroid={centroid}"
        fs.create_dir(posixpath.join(out_root, folder), recursive=True)
        for number, start in enumerate(range(0, table.num_rows, rows_per_file)):
            chunk = table.slice(start, rows_per_file)
            relative = f"{folder}/part-{number:05d}.parquet"
            pq.write_table(chunk, posixpath.join(out_root, relative), filesystem=fs)
            written.append((centroid, relative, chunk.num_rows))
    return written
