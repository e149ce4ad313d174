"""Worker-process malloc settings for the Lloyd loop (glibc only).

Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` so freed memory goes
back to the OS quickly. Setting that variable also pins glibc's mmap threshold at
128 KiB, so every per-step temporary above that size (label and bound arrays, one-hot
products) is a fresh ``mmap`` whose pages fault in again on every step: measured 2x on
the cluster update and ~10% on a whole step. `relax_malloc_trim` restores glibc's
default ceiling (32 MiB) for the mmap threshold and trims above 64 MiB, once per
process; the large partition arrays are still mmap-ed and returned to the OS when freed.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 64 << 20

_relaxed = False


def relax_malloc_trim() -> bool:
    """Apply the settings above if this is a glibc process started with the trim variable."""
    global _relaxed
    if _relaxed:
        return True
    if not sys.platform.startswith("linux") or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
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
