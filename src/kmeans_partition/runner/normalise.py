"""NORMALISE stage: L2-normalise embedding rows to float32 (pure, vectorised)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .errors import InputError

BLOCK_ROWS = 16384  # most rows per float64 scratch block
BLOCK_BYTES = 4 << 20  # and at most this many bytes of float64 per block (a few such blocks live at once)
TINY_NORM = 1e-150  # below this (or non-finite) the squared norm may have under/overflowed


def _unit_rows(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 unit rows of a finite block and a mask of its zero rows.

    Rows whose squared norm under- or overflows float64 are first divided by their
    largest |value|, so any finite non-zero row normalises correctly.
    """
    wide = block.astype(np.float64, copy=False)
    norms = np.sqrt(np.einsum("ij,ij->i", wide, wide))
    safe = np.isfinite(norms) & (norms >= TINY_NORM)
    unit = wide / np.where(safe, norms, 1.0)[:, None]
    zero = np.zeros(len(block), dtype=bool)
    if not safe.all():
        rows = wide[~safe]
        scale = np.abs(rows).max(axis=1) if rows.shape[1] else np.zeros(len(rows))
        is_zero = scale == 0
        scaled = rows / np.where(is_zero, 1.0, scale)[:, None]
        scaled_norms = np.sqrt(np.einsum("ij,ij->i", scaled, scaled))
        unit[~safe] = scaled / np.where(is_zero, 1.0, scaled_norms)[:, None]
        zero[~safe] = is_zero
    return unit, zero


def normalise_rows(x: np.ndarray, source: str, row_offset: int, out: Optional[np.ndarray] = None) -> np.ndarray:
    """A float32, C-contiguous copy of `x` (n, d) with every row scaled to unit L2 norm.

    ``out``: a float32 (n, d) array to write instead (``out=x`` normalises in place, block by
    block; on an error rows before the bad one may already be normalised). Norms are computed in float64 (robust for float16/float32
    origin data). A row holding NaN/Inf, or a zero vector, raises `InputError`
    naming `source` and the row (``row_offset`` + index).
    """
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of embeddings, got shape {x.shape}")
    if out is None:
        out = np.empty(x.shape, dtype=np.float32)
    step = max(1, min(BLOCK_ROWS, BLOCK_BYTES // (8 * max(1, x.shape[1]))))
    for start in range(0, x.shape[0], step):
        block = x[start : start + step]
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            row = row_offset + start + int(np.flatnonzero(~finite)[0])
            raise InputError("embedding contains NaN or Inf", source, row=row)
        unit, zero = _unit_rows(block)
        if zero.any():
            row = row_offset + start + int(np.flatnonzero(zero)[0])
            raise InputError("embedding is a zero vector and cannot be normalised", source, row=row)
        out[start : start + step] = unit
    return out
