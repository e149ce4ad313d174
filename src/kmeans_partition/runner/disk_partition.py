"""Out of core: a partition's normalised rows on the worker's local disk, memory-mapped.

`load_mapped` reads a partition batch by batch (`block.fill`), normalises each batch in a small
in-memory buffer and appends it to a ``.npy`` file under the Dask worker's local directory
(written with plain file writes, not through a mapping). `MappedPartition.xa` maps that file
read-only: every task that reads the rows streams them from the page cache, which the kernel
may evict; the pages leave the worker process when the task drops its arrays. A worker then
holds in its own memory the ids, metadata and squared norms of its partitions, plus at most one
mapped partition per running task.
"""

from __future__ import annotations

import os
import uuid
import weakref
from typing import Optional

import numpy as np
import pyarrow as pa

from .partition import Partition
from .read import read_into

SUBDIR = "kmeans-partition"


def local_directory() -> str:
    """This worker's local directory (Dask's; removed with the worker), else the temp dir."""
    try:
        from distributed import get_worker

        root = get_worker().local_directory
    except (ImportError, ValueError):
        import tempfile

        root = tempfile.gettempdir()
    folder = os.path.join(root, SUBDIR)
    os.makedirs(folder, exist_ok=True)
    return folder


class FileSink:
    """Rows appended to an ``(n, d + 1)`` float32 ``.npy`` file (last column ones), one batch at a time."""

    def __init__(self, path: str):
        self.path = path
        self.handle = None

    def start(self, n: int, d: int) -> None:
        self.d = d
        self.handle = open(self.path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": (n, d + 1)}
        np.lib.format.write_array_header_1_0(self.handle, header)
        self.buffer = None  # sized by the first batch

    def rows(self, start: int, stop: int) -> np.ndarray:
        if self.buffer is None or stop - start > len(self.buffer):
            self.buffer = np.empty((stop - start, self.d + 1), dtype=np.float32)
            self.buffer[:, self.d] = 1.0
        return self.buffer[: stop - start, : self.d]

    def rows_done(self, start: int, stop: int) -> None:
        self.buffer[: stop - start].tofile(self.handle)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.buffer = None


class MappedPartition(Partition):
    """A `Partition` whose (n, d + 1) rows (`xa`, `x`) are a read-only memmap of `path`.

    Each access while no mapping is alive maps the file afresh, so a mapping lives only as long
    as the arrays a task holds. Pickled (a transfer to another worker), its rows are written to
    the receiving worker's local directory. The file is removed when the partition is released.
    """

    def __init__(self, index: int, source: str, row_offset: int, ids: pa.Array, path: str,
                 x_sq: np.ndarray, metadata: pa.Table):
        self.index, self.source, self.row_offset = index, source, row_offset
        self.ids, self.path, self.x_sq, self.metadata = ids, path, x_sq, metadata
        self._mapped: Optional[weakref.ref] = None
        self._finalizer = weakref.finalize(self, _remove_quietly, path) if path is not None else None

    def __sizeof__(self) -> int:
        """Only what this process holds: the rows are the page cache's (so Dask never spills them)."""
        return self.resident_extra_bytes()

    @property
    def xa(self) -> np.ndarray:
        rows = self._mapped() if self._mapped is not None else None
        if rows is None:
            if self.path is None:
                raise RuntimeError(f"partition {self.index} was released (its rows were split for the write)")
            rows = np.load(self.path, mmap_mode="r")
            self._mapped = weakref.ref(rows)
        return rows

    def release(self) -> None:
        """`Partition.release`; the file goes too (the page cache with it)."""
        path, self.path = self.path, None
        self.x_sq = self.ids = self.metadata = None
        self._mapped = None
        if path is not None:
            _remove_quietly(path)

    def __reduce__(self):
        # Pickled when Dask moves it to another worker or spills it: the rows travel (mapped here, pickle
        # protocol 5 sends them out of band) and land in that worker's local directory. A released one
        # (still in the worker's data until the scheduler forgets it, and spillable) travels as one.
        if self.path is None:
            return (_released, (self.index, self.source, self.row_offset))
        return (_rebuild, (self.index, self.source, self.row_offset, self.ids, self.xa, self.x_sq, self.metadata))


def _rebuild(index: int, source: str, row_offset: int, ids: pa.Array, xa: np.ndarray, x_sq: np.ndarray,
             metadata: pa.Table) -> "MappedPartition":
    path = _new_path(index)
    np.save(path, xa)
    return MappedPartition(index, source, row_offset, ids, path, x_sq, metadata)


def _released(index: int, source: str, row_offset: int) -> "MappedPartition":
    part = MappedPartition(index, source, row_offset, None, None, None, None)
    part.release()
    return part


def _new_path(index: int) -> str:
    return os.path.join(local_directory(), f"part-{index:06d}-{uuid.uuid4().hex}.npy")


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def load_mapped(index: int, ref, options: dict) -> Partition:
    """`partition.load_partition` out of core: the normalised rows go to a local ``.npy`` file."""
    path = _new_path(index)
    sink = FileSink(path)
    try:
        filled = read_into(ref, sink, normalise=True, **options)
    except BaseException:
        sink.close()
        _remove_quietly(path)
        raise
    sink.close()
    if filled is None:  # an empty JSONL file: nothing to map
        _remove_quietly(path)
        from .partition import load_partition

        return load_partition(index, ref, options)
    return MappedPartition(index, ref.path, ref.row_offset, filled.ids, path, filled.x_sq, filled.metadata)
