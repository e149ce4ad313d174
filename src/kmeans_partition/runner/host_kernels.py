"""The fused host kernels (`_host_kernels.c`): per score row, two passes instead of four over the block.

After each score GEMM on NumPy, `label_block` gives every row its label (lowest index of the
smallest score, as ``argmin``), that score, and whether another score is within its near-tie limit
(`ties.py`) - the same values as the NumPy path, bit for bit (`tests/test_host_kernels.py`);
`segment_sum` adds rows into their labels' sums as scipy's sparse kernel does. It is
an optional compiled extension loaded with ctypes: where it was not built (no C compiler at
install) or fails its check on load, `library()` is None and the engine runs its NumPy path.
"""
from __future__ import annotations

import ctypes
import importlib.machinery
import os
import threading
from typing import Optional

import numpy as np

_NAME = "_host_kernels"
_lock = threading.Lock()
_loaded: list = []  # [ctypes library or None] once looked up


def library() -> Optional[ctypes.CDLL]:
    """The loaded kernel library, or None where it is missing or computes a wrong result."""
    with _lock:
        if not _loaded:
            _loaded.append(_checked(_load()))
        return _loaded[0]


def usable(x) -> bool:
    """Whether ``x``'s blocks can go through the kernel: a NumPy array, and the library loaded."""
    return isinstance(x, np.ndarray) and library() is not None


def label_block(scores: np.ndarray, slack: Optional[np.ndarray], labels: np.ndarray, first: np.ndarray,
                tie: Optional[np.ndarray]) -> int:
    """Fill ``labels`` (m,) int32, ``first`` (m,) float32 and, with ``slack``, ``tie`` (m,) bool.

    ``scores`` (m, k) float32 C-contiguous, k >= 1; ``slack`` (m,) float64: each row's near-tie
    width (`ties.TieRule.slack`). ``tie[i]`` says whether a score other than the label's is <=
    ``nextafter(float32(first[i] + slack[i]), inf)``. Returns the number of such rows (0 without
    ``slack``). Raises ValueError on arrays of another shape, dtype or layout.
    """
    m, k = scores.shape
    _check(scores, np.float32, (m, k), "scores")
    _check(labels, np.int32, (m,), "labels", output=True)
    _check(first, np.float32, (m,), "first", output=True)
    if k < 1:
        raise ValueError("label_block: scores need one column at least")
    if slack is not None:
        _check(slack, np.float64, (m,), "slack")
        _check(tie, np.bool_, (m,), "tie", output=True)
    lib = library()
    if lib is None:
        raise RuntimeError("label_block: the host kernel library is not loaded")
    return _call(lib, scores, slack, labels, first, tie)


def _call(lib: ctypes.CDLL, scores, slack, labels, first, tie) -> int:
    pointer = (lambda a: None if a is None else a.ctypes.data)
    return int(lib.kp_label_block(scores.ctypes.data, scores.shape[0], scores.shape[1], pointer(slack),
                                  labels.ctypes.data, first.ctypes.data, pointer(tie)))


def segment_sum(labels: np.ndarray, rows: np.ndarray, k: int) -> Optional[np.ndarray]:
    """(k, c) float32 sums of ``rows`` (n, c) float32 per label (``labels`` (n,) int32 in [0, k)),
    each row added in order (`host_sums.segment_sum`'s sums, bit for bit); None where the library
    is missing or the arrays are of another kind. Raises ValueError on a label outside [0, k).
    """
    lib = library()
    if (lib is None or rows.dtype != np.float32 or rows.ndim != 2 or labels.dtype != np.int32
            or labels.shape != (rows.shape[0],)):
        return None
    rows, labels = np.ascontiguousarray(rows), np.ascontiguousarray(labels)
    out = np.zeros((k, rows.shape[1]), dtype=np.float32)
    if lib.kp_segment_sum(rows.ctypes.data, rows.shape[0], rows.shape[1], labels.ctypes.data, k, out.ctypes.data):
        bad = labels[(labels < 0) | (labels >= k)]
        raise ValueError(f"segment_sum: label {int(bad[0])} outside [0, {k})")
    return out


def _check(a: np.ndarray, dtype, shape: tuple, name: str, output: bool = False) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != shape or not a.flags.c_contiguous:
        got = f"{type(a).__name__} {getattr(a, 'dtype', '?')} {getattr(a, 'shape', '?')}"
        raise ValueError(f"label_block: {name} must be a C-contiguous {np.dtype(dtype)} array of shape {shape}, "
                         f"got {got}")
    if output and not a.flags.writeable:
        raise ValueError(f"label_block: {name} must be writeable")


def _load() -> Optional[ctypes.CDLL]:
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(here, _NAME + suffix)
        if os.path.isfile(path):
            try:
                lib = ctypes.CDLL(path)
                label, sums = lib.kp_label_block, lib.kp_segment_sum
            except (OSError, AttributeError):
                return None
            pointer, size = ctypes.c_void_p, ctypes.c_int64
            label.restype = sums.restype = ctypes.c_int64
            label.argtypes = [pointer, size, size, pointer, pointer, pointer, pointer]
            sums.argtypes = [pointer, size, size, pointer, size, pointer]
            return lib
    return None


def _checked(lib: Optional[ctypes.CDLL]) -> Optional[ctypes.CDLL]:
    """``lib`` if it labels a small block with a tie as NumPy does and sums its rows right, else None."""
    if lib is None:
        return None
    scores = np.array([[3.0, 1.0, 2.0, 1.0], [0.5, 0.25, 4.0, 0.75]], dtype=np.float32)
    slack = np.array([0.0, 0.0])
    labels, first, tie = np.empty(2, np.int32), np.empty(2, np.float32), np.empty(2, np.bool_)
    n = _call(lib, scores, slack, labels, first, tie)
    ok = n == 1 and labels.tolist() == [1, 1] and first.tolist() == [1.0, 0.25] and tie.tolist() == [True, False]
    sums = np.zeros((2, 4), np.float32)
    ok = ok and lib.kp_segment_sum(scores.ctypes.data, 2, 4, labels.ctypes.data, 2, sums.ctypes.data) == 0
    return lib if ok and sums.tolist() == [[0.0] * 4, [3.5, 1.25, 6.0, 1.75]] else None
