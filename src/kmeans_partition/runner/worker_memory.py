"""Worker-process malloc settings for the Lloyd loop (glibc only).

Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` so freed memory goes
back to the OS quickly. Setting that variable also pins glibc's mmap threshold at
128 KiB, so every per-step temporary above that size (label and bound arrays, one-hot
products) is a fresh ``mmap`` whose pages fault in again on every step: measured 2x on
the cluster update and ~10% on a whole step. `relax_malloc_trim` restores glibc's
default ceiling (32 MiB) for the mmap threshold and trims above 64 MiB, once per
process; the large partition arrays are still mmap-ed and returned to the OS when freed.
Not on a Dask worker whose memory limit is under `SMALL_WORKER_BYTES`: there the up to ~100 MiB
of freed memory the process would keep is a sizeable share of what it may use.

With the relaxed settings, freed chunks below the mmap threshold stay in glibc's heaps between
tasks (holes between live arrays are never trimmed): measured ~0.5 GiB per worker after the write.
The data-path tasks (read, assign, split, write) end with `release_freed` (``malloc_trim(0)``,
which also returns whole free pages inside the heaps; ~50 ms for 0.4 GiB of holes).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 64 << 20
SMALL_WORKER_BYTES = 2 << 30

_relaxed = False


def relax_malloc_trim() -> bool:
    """Apply the settings above if this is a glibc process started with the trim variable."""
    global _relaxed
    if _relaxed:
        return True
    if not sys.platform.startswith("linux") or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return False
    if 0 < _worker_memory_limit() < SMALL_WORKER_BYTES:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok
    _relaxed = ok
    return ok


def release_freed() -> bool:
    """Give glibc's free heap pages back to the OS (``malloc_trim(0)``); False where not glibc."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim if sys.platform.startswith("linux") else False
            if _malloc_trim:
                _malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):  # not glibc (e.g. musl)
            _malloc_trim = False
    if not _malloc_trim:
        return False
    _malloc_trim(0)
    return True


_malloc_trim = None

_arrow_pool_set = False

#: Environment for the worker processes this tool starts (the embedded LocalCluster's, through the
#: nanny's pre-spawn environment; the operator's worker containers). Arrow's C++ reader buffers come
#: from its *process-wide* default pool, which only this variable picks, before pyarrow loads:
#: `use_system_arrow_pool` switches Python's pool, not that one. With mimalloc there, each 500k x 384
#: worker kept a 1 GiB arena with 17-30 MiB resident from the first read to the end of the job.
WORKER_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "system"}


def use_system_arrow_pool() -> bool:
    """Allocate the Arrow buffers Python code asks for with glibc's malloc from now on in this
    process; once per process. (The parquet reader's own buffers come from the process-wide pool,
    which only `WORKER_ENV` switches.)

    pyarrow's default pool (mimalloc in the wheels) keeps freed segments mapped: measured 40-65 MiB
    resident beyond what Arrow held, through the fit (after the read's batches) and the write (its
    encoders), where `release_freed` (``malloc_trim``) cannot reach them. With the system pool the
    2M x 128 job's peak worker RSS went 0.84 -> 0.80 GiB (bench_e2e). Buffers allocated before
    keep their pool. True if the pool was switched here.
    """
    global _arrow_pool_set
    if _arrow_pool_set or not sys.platform.startswith("linux"):
        return False
    _arrow_pool_set = True
    import pyarrow as pa

    if pa.default_memory_pool().backend_name == "system":
        return False
    pa.set_memory_pool(pa.system_memory_pool())
    return True


#: Where Linux says when a fault on a huge-page-advised region may compact memory synchronously.
THP_DEFRAG = "/sys/kernel/mm/transparent_hugepage/defrag"
_hugepages_checked = False


def avoid_hugepage_stalls(defrag_path: str = THP_DEFRAG) -> bool:
    """Stop NumPy advising huge pages for new arrays where a fault on them may stall; once per process.

    NumPy advises transparent huge pages (``MADV_HUGEPAGE``) for every array of 4 MB or more. Where
    the kernel's THP ``defrag`` setting is ``always`` or ``madvise``, the first touch of each
    advised 2 MB page may compact memory in the faulting thread: filling fresh partition blocks
    measured 0.3-2.1 s per GiB (varying run to run) against 0.4-0.46 s with 4 KB pages, the whole
    read 7.9 -> 6.0 CPU s for 2M x 128 (bench_e2e); Lloyd steps measured the same on either
    page size. NumPy's own switch (the one ``NUMPY_MADVISE_HUGEPAGE=0`` sets at import) is used
    where it exists. True if advice was turned off here.
    """
    global _hugepages_checked
    if _hugepages_checked:
        return False
    _hugepages_checked = True
    try:
        with open(defrag_path) as f:
            mode = f.read()
    except OSError:
        return False
    if "[always]" not in mode and "[madvise]" not in mode:
        return False
    import numpy as np

    toggle = getattr(getattr(getattr(np, "_core", None), "multiarray", None), "_set_madvise_hugepage", None)
    if toggle is None:
        return False
    toggle(False)
    return True


def _worker_memory_limit() -> int:
    """This Dask worker's memory limit in bytes (0: none, or not on a worker)."""
    try:
        from distributed import get_worker

        return int(get_worker().memory_manager.memory_limit or 0)
    except (ImportError, ValueError, AttributeError):
        return 0
