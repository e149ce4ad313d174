"""NORMALISE stage: L2-normalise embedding rows to float32 (pure, vectorised, any array API library)."""

from __future__ import annotations

from . import backend as be
from .errors import InputError

BLOCK_ROWS = 16384  # most rows per float64 scratch block
BLOCK_BYTES = 2 << 20  # and at most this many bytes of float64 per block (cache-sized: 2-3x faster than 8 MB)
NON_FINITE = "embedding contains NaN or Inf"
ZERO_VECTOR = "embedding is a zero vector and cannot be normalised"
TINY_NORM = 1e-150  # below this (or non-finite) the squared norm may have under/overflowed


def _narrow_unit_rows(block, source: str, row0: int):
    """Float64 unit rows (n, d) of a float32/float16 block; raises for a NaN/Inf or zero row.

    Squares of such values neither overflow nor underflow in float64, so the squared norm alone
    tells every case apart: non-finite (a NaN/Inf value), zero (a zero vector) or usable.
    """
    xp = be.namespace(block)
    wide = xp.astype(block, xp.float64)
    sq = be.rowdot(xp, wide, wide)
    _raise_first(xp, ~xp.isfinite(sq), NON_FINITE, source, row0)
    _raise_first(xp, sq == 0, ZERO_VECTOR, source, row0)
    return be.scale_rows_(xp, wide, 1.0 / xp.sqrt(sq))


def _checked_unit_rows(block, source: str, row0: int):
    """Float64 unit rows (n, d) of any floating block (float64 too); raises for a NaN/Inf or zero row."""
    xp = be.namespace(block)
    _raise_first(xp, ~xp.all(xp.isfinite(block), axis=1), NON_FINITE, source, row0)
    unit, zero = _unit_rows(block)
    _raise_first(xp, zero, ZERO_VECTOR, source, row0)
    return unit


def _raise_first(xp, bad, message: str, source: str, row0: int) -> None:
    if bool(xp.any(bad)):
        raise InputError(message, source, row=row0 + int(be.nonzero(xp, bad)[0]))


def _unit_rows(block):
    """Float64 unit rows (n, d) of a finite block and a mask (n,) of its zero rows.

    Rows whose squared norm under- or overflows float64 are first divided by their
    largest |value|, so any finite non-zero row normalises correctly.
    """
    xp = be.namespace(block)
    wide = xp.astype(block, xp.float64, copy=False)
    norms = xp.sqrt(be.rowdot(xp, wide, wide))
    safe = xp.isfinite(norms) & (norms >= TINY_NORM)
    unit = wide / xp.where(safe, norms, 1.0)[:, None]
    zero = xp.zeros(block.shape[0], dtype=xp.bool, device=be.device(block))
    if not bool(xp.all(safe)):
        rows = wide[~safe]
        if rows.shape[1]:
            scale = xp.max(xp.abs(rows), axis=1)
        else:
            scale = xp.zeros(rows.shape[0], dtype=xp.float64, device=be.device(block))
        is_zero = scale == 0
        scaled = rows / xp.where(is_zero, 1.0, scale)[:, None]
        scaled_norms = xp.sqrt(be.rowdot(xp, scaled, scaled))
        unit[~safe] = scaled / xp.where(is_zero, 1.0, scaled_norms)[:, None]
        zero[~safe] = is_zero
    return unit, zero


def normalise_rows(x, source: str, row_offset: int, out=None):
    """A float32 (n, d) copy of `x` (n, d) with every row scaled to unit L2 norm (C-contiguous
    unless ``out`` is given).

    Computed where `x` lives; with ``out`` (a float32 (n, d) array, e.g. a view of a partition's
    buffer on a GPU), where ``out`` lives: each block of `BLOCK_ROWS` host rows is copied there
    and normalised there, so the device holds ``out`` and one block, never a copy of `x`. `x` is
    never modified unless it is ``out`` (in place, block by block: on an error, rows before the
    bad one may already be normalised). Norms are computed in float64 (robust for float16/float32 origin data). A row
    holding NaN/Inf, or a zero vector, raises `InputError` naming `source` and the row
    (``row_offset`` + index).
    """
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of embeddings, got shape {x.shape}")
    if out is None:
        xp = be.namespace(x)
        out = xp.empty(x.shape, dtype=xp.float32, device=be.device(x))
    xp = be.namespace(out)
    moved = be.namespace(x) is not xp or be.device(x) != be.device(out)
    step = max(1, min(BLOCK_ROWS, BLOCK_BYTES // (8 * max(1, x.shape[1]))))
    for start in range(0, x.shape[0], step):
        stop = min(start + step, x.shape[0])
        block = be.like(x[start:stop, ...], out) if moved else x[start:stop, :]
        narrow = block.dtype == xp.float32 or block.dtype == getattr(xp, "float16", None)  # not in the standard
        unit = (_narrow_unit_rows if narrow else _checked_unit_rows)(block, source, row_offset + start)
        out[start:stop, :] = xp.astype(unit, xp.float32)
    return out
