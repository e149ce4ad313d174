"""Per-label row sums on the host with scipy's CSR kernel, without importing ``scipy.sparse``.

The Lloyd sums are a one-hot (k, n) CSR matrix times the (n, d) rows. ``import scipy.sparse`` for that
one product costs every worker ~13 MiB resident (``scipy._lib``, its vendored array-api-compat, the
sparse classes); scipy's compiled kernel alone, loaded from its file, costs 0.2 MiB. So the CSR
arrays are built here, as ``csr_matrix((ones, (labels, arange(n))))`` would (each label's rows in
row order, hence the same float32 sums bit for bit), and handed to that kernel (``csr_matvecs``:
``Y += A @ X``). Where the extension is missing or fails its check on load, ``scipy.sparse`` does
the product (`tests/test_host_sums.py`).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import threading
from types import ModuleType
from typing import Optional

import numpy as np

_EXTENSION = "scipy.sparse._sparsetools"
_lock = threading.Lock()
_kernel: list = []  # [module or None] once looked up


def segment_sum(labels: np.ndarray, rows: np.ndarray, k: int, ones: Optional[np.ndarray] = None) -> np.ndarray:
    """(k, d) sums of ``rows`` (n, d) per label (``labels``: (n,) ints in [0, k)), in the rows' dtype.

    ``ones``: a reusable vector of at least n ones of the rows' dtype (one is made otherwise).
    """
    n, d = rows.shape
    ones = np.ones(n, dtype=rows.dtype) if ones is None else ones[:n]
    kernel = sparsetools()
    if kernel is None:
        sparse = importlib.import_module("scipy.sparse")
        return np.asarray(sparse.csr_matrix((ones, (labels, np.arange(n))), shape=(k, n)) @ rows)
    rows = np.ascontiguousarray(rows)
    # A stable order by label: radix sort for labels that fit 16 bits (k <= 32767).
    order = np.argsort(labels.astype(np.int16) if k <= np.iinfo(np.int16).max else labels, kind="stable")
    indptr = np.zeros(k + 1, dtype=order.dtype)
    np.cumsum(np.bincount(labels, minlength=k), out=indptr[1:])
    out = np.zeros((k, d), dtype=rows.dtype)
    kernel.csr_matvecs(k, n, d, indptr, order, ones, rows.reshape(-1), out.reshape(-1))
    return out


def sparsetools() -> Optional[ModuleType]:
    """scipy's compiled sparse kernels (the one ``scipy.sparse`` imports when it is loaded already,
    else loaded from its file), or None where that fails or gives a wrong sum."""
    with _lock:
        if not _kernel:
            _kernel.append(_checked(_load()))
        return _kernel[0]


def _load() -> Optional[ModuleType]:
    if _EXTENSION in sys.modules:
        return sys.modules[_EXTENSION]
    try:
        scipy = importlib.util.find_spec("scipy")  # finds the package without importing it
    except (ImportError, ValueError):
        return None
    for root in (scipy.submodule_search_locations or []) if scipy else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(root, "sparse", "_sparsetools" + suffix)
            if os.path.isfile(path):
                try:
                    loader = importlib.machinery.ExtensionFileLoader(_EXTENSION, path)
                    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(_EXTENSION, loader))
                    loader.exec_module(module)
                    return module
                except (ImportError, OSError):
                    return None
    return None


def _checked(module: Optional[ModuleType]) -> Optional[ModuleType]:
    """``module`` if its ``csr_matvecs`` sums a small case right (integers: exact), else None."""
    if module is None:
        return None
    labels = np.array([2, 0, 2, 1, 0], dtype=np.int64)
    rows = np.arange(10, dtype=np.float32).reshape(5, 2)
    out = np.zeros((3, 2), dtype=np.float32)
    try:
        module.csr_matvecs(3, 5, 2, np.array([0, 2, 3, 5]), np.array([1, 4, 3, 0, 2]),
                           np.ones(5, np.float32), rows.reshape(-1), out.reshape(-1))
    except Exception:  # noqa: BLE001 - any failure means: use scipy.sparse
        return None
    expected = np.zeros((3, 2), np.float32)
    np.add.at(expected, labels, rows)
    return module if np.array_equal(out, expected) else None
