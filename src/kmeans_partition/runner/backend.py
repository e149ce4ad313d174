"""The array backend: which library holds a partition, and what the array API standard lacks.

The numerics (normalise, kmeans, lloyd, bounds, summary, write) are written once against the
array API standard (``xp = namespace(x)``, via array-api-compat). This module is the only one
that names an array library. It holds:

* the choice of library when a partition is loaded (`partition_namespace`): CuPy on a worker
  that has a CUDA device of its own (a dask-cuda worker sets ``CUDA_VISIBLE_DEVICES``) and
  imports CuPy, else NumPy;
* what the standard lacks: scatter-add / segment sums (`segment_sum`), `bincount`, writes at
  integer indices (`put`), ``out=`` products (`matmul`), reused work buffers (`scratch`),
  host <-> device copies (`to_host`, `like`);
* NumPy's fast paths (in-place BLAS with ``out=``, thread-local buffers, scipy's one-hot sparse
  sums without importing scipy.sparse: `host_sums`), kept so the CPU engine runs as fast as
  before (docs/benchmarks.md).

Any other library (array-api-strict in the tests) takes the generic path: one-hot products for
the sums and host round trips for `put`, exact but slow.
"""

from __future__ import annotations

import importlib
import os
import threading
from types import ModuleType
from typing import Any

import numpy as np
from array_api_compat import array_namespace, device, is_cupy_namespace, is_numpy_namespace

from . import host_sums

__all__ = ["namespace", "device", "is_numpy", "is_cupy", "partition_namespace", "to_host", "like"]


def namespace(*arrays) -> ModuleType:
    """The array API namespace of ``arrays`` (array-api-compat's wrapper for NumPy/CuPy)."""
    return array_namespace(*arrays)


def is_numpy(xp: ModuleType) -> bool:
    return is_numpy_namespace(xp)


def is_cupy(xp: ModuleType) -> bool:
    return is_cupy_namespace(xp)


def _native(xp: ModuleType) -> bool:
    """NumPy or CuPy: integer-array writes, ``out=`` and in-place ufuncs work as in NumPy."""
    return is_numpy(xp) or is_cupy(xp)


def _raw(xp: ModuleType) -> ModuleType:
    """The library itself (``numpy``/``cupy``), for ``out=`` arguments the wrappers may not pass."""
    return np if is_numpy(xp) else importlib.import_module("cupy")


# ---------------------------------------------------------------- choosing the library


def cuda_visible() -> bool:
    """A device is assigned to this process (dask-cuda sets ``CUDA_VISIBLE_DEVICES`` per worker)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return bool(value) and value != "-1"


def partition_namespace(backend: str = "auto", importer=importlib.import_module) -> ModuleType:
    """The namespace a partition loaded in this process is held in.

    ``backend``: ``"numpy"``, ``"cupy"`` (raises when CuPy or a device is missing) or ``"auto"``
    (CuPy when `cuda_visible`, CuPy imports and sees a device; NumPy otherwise).
    ``importer`` is replaceable for tests (a fake ``cupy``).
    """
    if backend == "numpy" or (backend == "auto" and not cuda_visible()):
        return namespace(np.empty(0))
    if backend not in ("auto", "cupy"):
        raise ValueError(f"unknown array backend {backend!r} (numpy, cupy or auto)")
    try:
        cupy = importer("cupy")
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("CuPy sees no CUDA device")
    except Exception:
        if backend == "cupy":
            raise
        return namespace(np.empty(0))
    return importer("array_api_compat.cupy")


# ---------------------------------------------------------------- host <-> device


def to_host(a) -> np.ndarray:
    """A NumPy copy (or the array itself when it is NumPy already)."""
    if isinstance(a, np.ndarray) or np.isscalar(a):
        return np.asarray(a)
    xp = namespace(a)
    if is_cupy(xp):
        return a.get()
    if hasattr(a, "to_device") and hasattr(xp, "__array_namespace_info__"):  # array-api-strict and the like
        cpu = xp.__array_namespace_info__().default_device()
        return np.asarray(a.to_device(cpu))
    return np.asarray(a)


def empty_on(xp: ModuleType, shape: tuple[int, ...]):
    """An uninitialised float32 array of ``shape`` on ``xp``'s current device (a partition's buffer)."""
    return xp.empty(shape, dtype=xp.float32)


def like(values, ref, dtype=None):
    """``values`` (host or same-device array) as an array of ``ref``'s library and device."""
    xp = namespace(ref)
    if dtype is None and isinstance(values, np.ndarray):
        dtype = getattr(xp, values.dtype.name)
    return xp.asarray(values, dtype=dtype, device=device(ref))


# ---------------------------------------------------------------- what the standard lacks


_SCRATCH = threading.local()

#: On NumPy, float32 entries of one rows x centroids score block at most (16 MB; the block is the
#: thread's reused scratch, kept for the worker's life): at k=1000, d=384 a Lloyd step took the same
#: time with 2048 to 32768 rows per block, and 32768 x k held 131 MB (1.3 GB at k=10,000) ...
HOST_BLOCK_ENTRIES = 1 << 22
#: ... and once a block has `GEMM_ROWS` rows, at most this many (4 MB): 1024-row blocks made a k=1000
#: step 4-8% slower, 2048 rows none (8 MB at k=1000, not 16), while at k=100 blocks of 10k rows fit as
#: fast as 32k and hold 12 MB less.
HOST_BLOCK_SMALL_ENTRIES = 1 << 20
GEMM_ROWS = 2048


def block_rows(xp: ModuleType, batch: int, k: int) -> int:
    """Rows per distance block: ``batch``, on NumPy at most `GEMM_ROWS` or `HOST_BLOCK_SMALL_ENTRIES`
    / ``k`` rows, whichever is more, and never more than `HOST_BLOCK_ENTRIES` / ``k`` (>= 256).

    GPUs keep ``batch`` (their GEMMs want large blocks). Labels do not depend on it (`ties.py`).
    """
    if not is_numpy(xp):
        return batch
    k = max(k, 1)
    rows = max(min(GEMM_ROWS, HOST_BLOCK_ENTRIES // k), HOST_BLOCK_SMALL_ENTRIES // k)
    return max(1, min(batch, max(256, rows)))


def scratch(xp: ModuleType, ref, shape: tuple[int, ...], name: str = "block"):
    """A float32 work buffer of ``shape`` on ``ref``'s device, reused by this thread (NumPy, CuPy).

    Each Lloyd step needs a ``batch x k`` block (131 MB at the defaults); allocating it afresh
    every step costs page faults on every touch. Other libraries get a fresh array.
    """
    size = int(np.prod(shape))
    if not _native(xp):
        return xp.empty(shape, dtype=xp.float32, device=device(ref))
    key = f"{name}_{'np' if is_numpy(xp) else 'cp'}"
    buffer = getattr(_SCRATCH, key, None)
    if buffer is None or buffer.size < size or (not is_numpy(xp) and buffer.device != device(ref)):
        buffer = _raw(xp).empty(size, dtype=np.float32)
        setattr(_SCRATCH, key, buffer)
    return buffer[:size].reshape(shape)


def shrink_scratch(size: int) -> bool:
    """Forget this thread's NumPy `scratch` buffers of more than ``size`` values; True if any went."""
    big = [name for name, buffer in vars(_SCRATCH).items() if name.endswith("_np") and buffer.size > size]
    for name in big:
        delattr(_SCRATCH, name)
    return bool(big)


def drop_scratch() -> int:
    """Forget this thread's `scratch` buffers (the job's GEMMs are over); returns how many there were.
    They are freed once no array views them."""
    names = list(vars(_SCRATCH))
    for name in names:
        delattr(_SCRATCH, name)
    return len(names)


def matmul(xp: ModuleType, a, b, out=None):
    """``a @ b``, into ``out`` where the library can (NumPy, CuPy); returns the product."""
    if out is None:
        return a @ b
    if _native(xp):
        return _raw(xp).matmul(a, b, out=out)
    return a @ b


def maximum_(xp: ModuleType, a, value: float):
    """``max(a, value)`` elementwise, in place where the library can."""
    if _native(xp):
        return _raw(xp).maximum(a, value, out=a)
    return xp.maximum(a, xp.asarray(value, dtype=a.dtype, device=device(a)))


def take_rows(x, rows):
    """``x[rows]`` (m, d) of a (n, d) array, also of a strided view (``xa[:, :-1]``) without a copy
    of all of it (NumPy's ``take`` makes one first: a whole partition per call)."""
    return x[rows] if isinstance(x, np.ndarray) else namespace(x).take(x, rows, axis=0)


def scale_rows_(xp: ModuleType, a, scale):
    """Rows of `a` (n, d) times `scale` (n,), in place where the library can."""
    if _native(xp):
        return _raw(xp).multiply(a, scale[:, None], out=a)
    return a * scale[:, None]


#: Rows per product in `rowdot` off NumPy (bounds its (rows, d) temporary).
ROWDOT_ROWS = 65536


def rowdot(xp: ModuleType, a, b, dtype=None):
    """Row-wise dot products (n,) of two (n, d) arrays (NumPy: einsum, no temporary; others: in
    blocks of `ROWDOT_ROWS` rows)."""
    if is_numpy(xp):
        return np.einsum("ij,ij->i", a, b, dtype=dtype)
    n = a.shape[0]
    if n <= ROWDOT_ROWS:
        out = xp.sum(a * b, axis=1)
        return out if dtype is None else xp.astype(out, dtype)
    out = xp.empty(n, dtype=dtype or xp.result_type(a, b), device=device(a))
    for start in range(0, n, ROWDOT_ROWS):
        stop = min(start + ROWDOT_ROWS, n)
        out[start:stop] = xp.astype(xp.sum(a[start:stop, :] * b[start:stop, :], axis=1), out.dtype)
    return out


def put(xp: ModuleType, a, index, values) -> Any:
    """``a[index] = values`` along the first axis (integer ``index``); returns ``a``.

    NumPy/CuPy write in place; the standard has no integer-array writes, so other libraries
    go through the host (exact, slow: tests only).
    """
    if _native(xp):
        a[index] = values
        return a
    host = to_host(a).copy()
    host[to_host(index)] = to_host(values) if hasattr(values, "shape") else values
    return like(host, a, dtype=a.dtype)


def mask_labels(xp: ModuleType, scores, labels):
    """``scores`` (n, k) with each row's entry at ``labels`` set to ``inf`` (in place on NumPy/CuPy)."""
    if _native(xp):
        scores[xp.arange(scores.shape[0]), labels] = np.inf
        return scores
    cols = xp.arange(scores.shape[1], device=device(scores))
    return xp.where(cols[None, :] == xp.astype(labels, cols.dtype)[:, None], xp.inf, scores)


def bincount(xp: ModuleType, labels, k: int, weights=None):
    """Counts (int64) or weighted sums (float64) per label ``0..k-1``."""
    if _native(xp):
        raw = _raw(xp)
        if weights is None:
            return raw.bincount(labels, minlength=k).astype(np.int64)
        return raw.bincount(labels, weights=weights.astype(np.float64), minlength=k)
    cols = xp.arange(k, device=device(labels))
    hit = xp.astype(labels, cols.dtype)[None, :] == cols[:, None]  # (k, n)
    if weights is None:
        return xp.sum(xp.astype(hit, xp.int64), axis=1)
    return xp.sum(xp.where(hit, xp.astype(weights, xp.float64)[None, :], 0.0), axis=1)


#: Rows per one-hot product on NumPy (cache-sized, measured on CPUs); on a GPU one product per
#: `DEVICE_SUM_BLOCK` rows keeps the launch and sparse-build overhead small. Products are float32,
#: accumulated in float64 (`kmeans.BlockSums`).
HOST_SUM_BLOCK = 4096
DEVICE_SUM_BLOCK = 65536


def sum_block(xp: ModuleType) -> int:
    """Rows per float32 block sum for ``xp`` (see `HOST_SUM_BLOCK`)."""
    return HOST_SUM_BLOCK if is_numpy(xp) or not _native(xp) else DEVICE_SUM_BLOCK


def segment_sum(xp: ModuleType, labels, rows, k: int, ones=None):
    """Per-label sums of ``rows`` (n, d) -> (k, d) in the rows' dtype (float32 products).

    NumPy: scipy's one-hot sparse product (`host_sums`; ``ones``: a reusable vector of at least n
    ones); CuPy: cupyx's sparse one-hot product (cuSPARSE); others: a dense one-hot GEMM.
    """
    n = rows.shape[0]
    if is_numpy(xp):
        return host_sums.segment_sum(np.asarray(labels), np.asarray(rows), k, ones)
    if is_cupy(xp):
        cp, sparse = _raw(xp), importlib.import_module("cupyx.scipy.sparse")
        ones = cp.ones(n, dtype=rows.dtype) if ones is None else ones[:n]
        one_hot = sparse.coo_matrix((ones, (labels.astype(cp.int32), cp.arange(n, dtype=cp.int32))),
                                    shape=(k, n)).tocsr()  # cupyx builds CSR from COO triplets
        return cp.asarray(one_hot @ rows)
    cols = xp.arange(k, device=device(rows))
    one_hot = xp.astype(xp.astype(labels, cols.dtype)[None, :] == cols[:, None], rows.dtype)
    return one_hot @ rows


def host_random(seed, n: int):
    """``n`` uniform draws in [0, 1) from NumPy's generator (the same on every backend)."""
    return np.random.default_rng(seed).random(n)


def nonzero(xp: ModuleType, mask):
    """Indices (int64) where the 1-D ``mask`` is true."""
    return xp.nonzero(mask)[0]
