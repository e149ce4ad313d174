"""Assign every row to its nearest centroid and write ``centroid=N/`` partitions: each row once.

A row crosses storage twice in all: read once, written once to its final file. In between it
moves between workers in memory (Dask transfers, spilled to worker-local disk under pressure):

1. `assign_partition` (one task per partition, on the worker holding it): labels, distances, the
   margin to the second-nearest centroid and a small `PartitionAssigned` (rows per centroid,
   inertia, the margin/distance summary of `summary.py`), the only part the client gathers.
2. `plan_writes` (client): every non-empty centroid's files, ``centroid=N/part-00000.parquet``
   (split into ``part-00001`` ... past `ROWS_PER_FILE` rows), grouped into write tasks of about
   `rows_per_write_task` rows, and which of each partition's rows go to which file.
3. `split_partition` (one task per partition): the rows sorted by centroid, cut into one Arrow
   table per write group; the partition and its assignment are released afterwards.
4. `write_group` (one task per group): takes the group's piece of every partition and writes
   each of its files once. Each task attempt is idempotent (Dask runs a task again when its
   worker dies): on object stores a file is one PUT under its final name (an object appears
   whole or not at all, and every attempt writes the same bytes); on a local/POSIX filesystem
   an attempt writes ``_tmp-attempts/<attempt token>/...`` and renames it to the final name (atomic),
   so a killed attempt leaves no partial final file; the client removes ``_tmp-attempts/`` after.

Row order inside a file: input partition order, then input row order. The output is complete
only when ``_manifest.json`` exists (`manifest.py`, written last).
"""

from __future__ import annotations

import posixpath
import uuid
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
from fsspec.core import url_to_fs

from . import backend as be
from . import kmeans as km
from .arrow_numpy import from_numpy
from .output import TMP_PREFIX, is_local
from .parquet_files import write_file
from .partition import ID_COLUMN, Partition
from .summary import AssignSummary, distances_to_assigned, nearest_with_second
from .worker_memory import release_freed, use_system_arrow_pool

#: A centroid's rows are split into several files past this many rows.
ROWS_PER_FILE = 1_000_000
#: Most bytes of rows in one write group (`memory_mode.write_task_bytes`); a larger file is a group alone.
WRITE_TASK_BYTES = 256 << 20
#: Bytes a row takes besides its embedding (id, distances, offsets), for sizing write groups.
ROW_OVERHEAD_BYTES = 64
L2_COLUMN = "l2_dist_to_cent"
COSINE_COLUMN = "cosine_dist_to_cent"
#: Optional columns (``write_second_centroid``): the neighbouring partition and the margin to it.
SECOND_CENTROID_COLUMN = "second_centroid"
MARGIN_COLUMN = "margin"
#: Local filesystems: each write attempt's files before their rename (removed by the client; a
#: name `output.py` knows as this tool's, so `overwrite` may clear what a crashed run left).
ATTEMPTS_DIR = f"{TMP_PREFIX}attempts"


def arrow_filesystem(url: str, storage_options: dict) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for an fsspec URL (native for local files)."""
    fs, path = url_to_fs(url, **storage_options)
    if is_local(fs):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


# ---------------------------------------------------------------- 1. assign


@dataclass
class PartitionAssigned:
    """What the client learns from one partition's assignment."""

    index: int  # the partition's
    counts: np.ndarray  # (k,) int64 rows per centroid
    inertia: float  # sum of squared distances to the assigned centroids (float64)
    stats: Optional[AssignSummary] = None  # sizes, distances and margins (runner/summary.py)


@dataclass
class Assignment:
    """One partition's labels and distances; stays on its worker (and device) until the rows are split."""

    labels: np.ndarray  # (n,) int32
    l2: np.ndarray  # (n,) float32
    cosine: np.ndarray  # (n,) float32
    summary: PartitionAssigned
    second: Optional[np.ndarray] = None  # (n,) int32 second-nearest centroid; None when k == 1
    margin: Optional[np.ndarray] = None  # (n,) float32; set only when the columns are written

    def columns(self, rows) -> dict[str, pa.Array]:
        """The per-row output columns that follow the input's, for `rows` (indices on the
        assignment's device), in output order; gathered there, then copied to the host."""
        xp = be.namespace(self.labels)

        def host(values) -> pa.Array:
            return from_numpy(be.to_host(xp.take(values, rows)))

        out = {L2_COLUMN: host(self.l2), COSINE_COLUMN: host(self.cosine)}
        if self.margin is not None:
            n = rows.shape[0]
            out[SECOND_CENTROID_COLUMN] = pa.nulls(n, pa.int32()) if self.second is None else host(self.second)
            out[MARGIN_COLUMN] = pa.nulls(n, pa.float32()) if self.second is None else host(self.margin)
        return out


#: Bytes of one float64 block of rows in the distance computations (a few such blocks live at once; cache-sized:
#: at 8 MB an assign task took 25% more CPU, same results).
FLOAT64_BLOCK_BYTES = 1 << 20


def float64_block_rows(dim: int, batch: int) -> int:
    """Rows per float64 block: at most `batch`, at most `FLOAT64_BLOCK_BYTES` (results do not depend on it)."""
    return max(1, min(batch, FLOAT64_BLOCK_BYTES // (8 * max(1, dim))))


def assign_partition(
    part: Partition, centroids: np.ndarray, batch: int, second_centroid: bool = False
) -> Assignment:
    """Nearest centroid of every row, its distances and margin, and the partition's summary (on a worker).

    Runs where the partition lives (NumPy, or CuPy on a GPU worker); the per-row results stay
    there. The summary is computed on the host from copies of the labels, distances and margins (12 bytes
    a row). ``second_centroid``: keep the `SECOND_CENTROID_COLUMN` and `MARGIN_COLUMN` columns.
    """
    release_freed()  # what the fit freed (its heap stays at its high water until trimmed)
    xp = be.namespace(part.xa)
    k = centroids.shape[0]
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    ca, batch = km.augment_centroids(centroids, ref=part.xa), be.block_rows(xp, batch, k)
    labels, dist_sq, second = nearest_with_second(part.xa, part.x_sq, ca, batch, centroids)
    rows = float64_block_rows(centroids.shape[1], batch)  # the distances' float64 blocks stay small
    l2, cosine, margin = distances_to_assigned(part.x, centroids, labels, rows, second)
    host_labels = be.to_host(labels)
    counts = np.bincount(host_labels, minlength=k).astype(np.int64)
    stats = AssignSummary.from_rows(host_labels, be.to_host(cosine), be.to_host(margin), k)
    summary = PartitionAssigned(part.index, counts, float(xp.sum(xp.astype(dist_sq, xp.float64))), stats)
    release_freed()  # the float64 blocks' heap pages
    if not second_centroid:
        return Assignment(labels, l2, cosine, summary)
    return Assignment(labels, l2, cosine, summary, second, margin)


def summary_of(assignment: Assignment) -> PartitionAssigned:
    return assignment.summary

# ---------------------------------------------------------------- 2. plan (client)


@dataclass(frozen=True)
class OutputFile:
    centroid: int
    index: int  # the n of part-n; a centroid's files take its rows in (partition, row) order
    rows: int
    last: bool  # the centroid's last file

    @property
    def path(self) -> str:
        """Relative to the output root."""
        return f"centroid={self.centroid}/part-{self.index:05d}.parquet"


@dataclass
class WritePlan:
    """Every output file, the write groups, and which rows of each partition go where."""

    files: list[OutputFile]  # by centroid, then index
    edges: np.ndarray  # (groups + 1,) file indices: group g writes files[edges[g]:edges[g + 1]]
    cum: np.ndarray  # (partitions + 1, k) rows of each centroid in the partitions before p
    spans: np.ndarray  # (3, files): centroid, first and end row of each file in its centroid's rows

    @property
    def n_groups(self) -> int:
        return len(self.edges) - 1

    def group_files(self, g: int) -> list[OutputFile]:
        return self.files[self.edges[g]:self.edges[g + 1]]

    def _rows(self, partitions: slice, files: slice) -> np.ndarray:
        """Rows each of `partitions` gives to each of `files`: the overlap of its rows and the file's."""
        centroid, file_lo, file_hi = self.spans[:, files]
        start, stop, _ = partitions.indices(len(self.cum) - 1)
        part_lo = self.cum[start:stop, centroid]
        part_hi = self.cum[start + 1:stop + 1, centroid]
        return np.maximum(np.minimum(part_hi, file_hi) - np.maximum(part_lo, file_lo), 0)

    def partition_bounds(self, p: int) -> np.ndarray:
        """(groups + 1,) offsets into partition p's rows sorted by centroid, one range per group."""
        per_file = self._rows(slice(p, p + 1), slice(None))[0]
        return np.concatenate([[0], np.cumsum(per_file)])[self.edges]

    def group_pieces(self, g: int) -> tuple[list[int], np.ndarray]:
        """The partitions with rows in group g, and (partitions, files) rows each gives each file."""
        rows = self._rows(slice(None), slice(self.edges[g], self.edges[g + 1]))
        present = np.flatnonzero(rows.sum(axis=1))
        return [int(p) for p in present], rows[present]


def rows_per_write_task(n_rows: int, dim: int, n_threads: int, task_bytes: int = WRITE_TASK_BYTES) -> int:
    """At most `task_bytes` of rows per write task, and at least ~4 tasks per worker thread."""
    by_memory = task_bytes // (4 * dim + ROW_OVERHEAD_BYTES)
    by_threads = -(-n_rows // (4 * max(1, n_threads)))
    return max(1, min(by_memory, by_threads))


def plan_writes(counts: np.ndarray, max_rows: int, rows_per_file: int = ROWS_PER_FILE) -> WritePlan:
    """Files of every non-empty centroid (``counts``: partitions x k), in groups of <= `max_rows` rows."""
    totals = counts.sum(axis=0)
    files: list[OutputFile] = []
    for centroid in np.flatnonzero(totals):
        total = int(totals[centroid])
        n_files = -(-total // rows_per_file)
        for index in range(n_files):
            rows = min(rows_per_file, total - index * rows_per_file)
            files.append(OutputFile(int(centroid), index, rows, index == n_files - 1))
    edges, rows_in_group = [0], 0
    for i, file in enumerate(files):
        if i > edges[-1] and rows_in_group + file.rows > max_rows:
            edges.append(i)
            rows_in_group = 0
        rows_in_group += file.rows
    edges.append(len(files))
    cum = np.zeros((counts.shape[0] + 1, counts.shape[1]), dtype=np.int64)
    np.cumsum(counts, axis=0, out=cum[1:])
    spans = np.array([[f.centroid for f in files], [f.index * rows_per_file for f in files],
                      [f.index * rows_per_file + f.rows for f in files]], dtype=np.int64).reshape(3, len(files))
    return WritePlan(files, np.array(edges, dtype=np.int64), cum, spans)


# ---------------------------------------------------------------- 3. split (workers)


@dataclass(frozen=True)
class OutputColumns:
    """Output column names and the id/metadata types unified across partitions (pickled into tasks)."""

    id_field: str
    embedding_field: str
    column_schema: pa.Schema  # id (as "id") and metadata


#: Most values one Arrow list<float32> array can hold (int32 offsets).
MAX_LIST_VALUES = 2**31 - 1


def embedding_array(x: np.ndarray, max_values: int = MAX_LIST_VALUES) -> pa.ChunkedArray:
    """(n, d) float32 -> list<float32> over the same buffer, in chunks whose int32 offsets cannot overflow."""
    n, d = x.shape
    rows_per_chunk = max(1, max_values // max(d, 1))
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    chunks = []
    for start in range(0, n, rows_per_chunk):
        rows = min(rows_per_chunk, n - start)
        offsets = from_numpy(np.arange(0, (rows + 1) * d, d, dtype=np.int32))
        chunks.append(pa.ListArray.from_arrays(offsets, from_numpy(flat[start * d:(start + rows) * d])))
    return pa.chunked_array(chunks, type=pa.list_(pa.float32()))


def output_table(part: Partition, rows, assignment: Assignment, columns: OutputColumns) -> pa.Table:
    """The partition's `rows` (indices on the partition's device), in that order; id and metadata
    cast to the unified types. Embeddings and distances are gathered on the device, then copied
    to the host."""
    idx = from_numpy(be.to_host(rows))
    schema = columns.column_schema
    table = {
        columns.id_field: part.ids.take(idx).cast(schema.field(ID_COLUMN).type),
        columns.embedding_field: embedding_array(be.to_host(be.take_rows(part.x, rows))),
    }
    for name in part.metadata.column_names:
        table[name] = part.metadata.column(name).take(idx).cast(schema.field(name).type)
    table.update(assignment.columns(rows))
    return pa.table(table)


def split_partition(
    part: Partition, assignment: Assignment, bounds: np.ndarray, columns: OutputColumns, release: bool = False
) -> list[pa.Table]:
    """The rows sorted by centroid (stable), one table per write group (`bounds` from the plan).

    Each table owns its buffers, so each is freed once its group is written. ``release``: free
    the partition here (`Partition.release`; the write's split is its last use), not when the
    scheduler later releases it. The sort runs where the partition lives (NumPy or CuPy); only
    each group's rows come back to the host. The thread's score scratch is dropped first.
    """
    be.drop_scratch()  # the score blocks of the fit and assignment: their room goes to the pieces
    xp = be.namespace(assignment.labels)
    order = xp.argsort(assignment.labels, stable=True)
    pieces = [output_table(part, order[int(bounds[g]):int(bounds[g + 1])], assignment, columns)
              for g in range(len(bounds) - 1)]
    if release:  # the rows live on in the pieces only (lost pieces re-read their partition)
        part.release()
    release_freed()
    return pieces


# ---------------------------------------------------------------- 4. write (workers)


def write_group(
    files: list[OutputFile], piece_rows: np.ndarray, out_url: str, storage_options: dict, *pieces: pa.Table
) -> list[tuple[int, str, int]]:
    """Write each of `files` once from the group's pieces (in partition order); runs on a worker.

    ``piece_rows[p, f]``: rows piece p gives file f, in order. Returns ``(centroid, path, rows)``.
    On failure the files this task created are removed before the error propagates.
    """
    use_system_arrow_pool()  # a worker that joined after the read
    fs, root = arrow_filesystem(out_url, storage_options)
    staging = posixpath.join(root, ATTEMPTS_DIR, uuid.uuid4().hex) if isinstance(fs, pafs.LocalFileSystem) else None
    taken = [0] * len(pieces)
    created: list[str] = []
    written = []
    try:
        for f, file in enumerate(files):
            slices = []
            for p, piece in enumerate(pieces):
                n = int(piece_rows[p, f])
                if n:
                    slices.append(piece.slice(taken[p], n))
                    taken[p] += n
            table = pa.concat_tables(slices)
            if table.num_rows != file.rows:
                raise RuntimeError(f"{file.path}: planned {file.rows} rows, the pieces hold {table.num_rows}")
            path = posixpath.join(root, file.path)
            if file.index == 0 or f == 0:  # a group may start inside a centroid, before its file 0 is written
                fs.create_dir(posixpath.dirname(path), recursive=True)
            if staging is None:
                created.append(path)
                write_file(fs, path, table)
            else:  # this attempt's own name, then one atomic rename
                attempt_path = posixpath.join(staging, file.path)
                fs.create_dir(posixpath.dirname(attempt_path), recursive=True)
                created += [attempt_path, path]
                write_file(fs, attempt_path, table)
                fs.move(attempt_path, path)
            written.append((file.centroid, file.path, file.rows))
    except BaseException:
        _remove_quietly(fs, created)
        raise
    finally:
        if staging is not None:
            try:
                fs.delete_dir(staging)
            except (OSError, FileNotFoundError):
                pass
        release_freed()
    return written


def _remove_quietly(fs: pafs.FileSystem, paths: list[str]) -> None:
    for path in paths:
        try:
            fs.delete_file(path)
        except (OSError, FileNotFoundError):
            pass
