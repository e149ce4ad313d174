"""Validate the columns of an Arrow table and convert them for clustering (pure, no I/O).

Embeddings may be ``list``, ``large_list`` or ``fixed_size_list`` of float16/32/64 or of
integers (integers are converted exactly as NumPy casts them). They become one float32,
C-contiguous ``(n, d)`` array through the flattened child array: no per-row Python loops.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa

from .arrow_numpy import null_mask, offsets_to_numpy, to_numpy
from .errors import InputError


def check_columns_present(
    names: list[str], fields: list[tuple[str, str]], source: str, where: str = "the file"
) -> None:
    """Raise for the first ``(field, role)`` whose column is not in ``names``."""
    present = set(names)
    for field, role in fields:
        if field not in present:
            raise InputError(
                f"{role} column not found in {where} (columns: {', '.join(names) or 'none'})",
                source=source,
                field=field,
            )


def first_true(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def id_column(table: pa.Table, field: str, source: str, row_offset: int) -> pa.Array:
    """The id column as one Array; nulls and nested types are refused."""
    column = table.column(field)
    kind = column.type
    if pa.types.is_nested(kind):
        raise InputError(f"ids must be scalars (strings or integers), got {kind}", source, field=field)
    ids = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if ids.null_count:
        row = first_true(null_mask(ids))
        raise InputError("id is missing or null", source, row=row_offset + row, field=field)
    return ids


def _is_list_type(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _is_number_type(kind: pa.DataType) -> bool:
    return pa.types.is_floating(kind) or pa.types.is_integer(kind)


def check_embedding_type(kind: pa.DataType, source: str, field: str) -> None:
    """Refuse anything but a list of numbers (the type decides for the whole column)."""
    if not _is_list_type(kind):
        raise InputError(f"embedding must be a list of numbers, got {kind}", source, field=field)
    value_type = kind.value_type
    if pa.types.is_null(value_type):
        return  # e.g. JSONL where every vector is empty; lengths are checked next
    if not _is_number_type(value_type):
        raise InputError(
            f"embedding values must be numbers, got {kind} (non-numeric values)", source, field=field
        )


def _row_lengths(chunk: pa.Array) -> np.ndarray:
    if pa.types.is_fixed_size_list(chunk.type):
        return np.full(len(chunk), chunk.type.list_size, dtype=np.int64)
    return np.diff(offsets_to_numpy(chunk))


def _check_lengths(
    lengths: np.ndarray, dim: int, expected_dim: Optional[int], source: str, field: str, row0: int, dim_row: int
) -> None:
    bad = lengths != dim
    if bad.any():
        row = first_true(bad)
        if expected_dim is not None:
            why = f"expected embedding_dim={expected_dim}"
        else:
            why = f"expected {dim} like row {dim_row} (ragged embeddings)"
        raise InputError(
            f"embedding has length {int(lengths[row])}, {why}", source, row=row0 + row, field=field
        )


def _chunk_values(chunk: pa.Array, dim: int, source: str, field: str, row0: int) -> np.ndarray:
    """The (len(chunk), dim) values of one null-free, equal-length list chunk."""
    values = chunk.flatten()  # honours slicing of the parent array
    if values.null_count:
        position = first_true(null_mask(values))
        raise InputError(
            "embedding contains a null (non-numeric) value", source, row=row0 + position // dim, field=field
        )
    if pa.types.is_null(values.type):
        return np.zeros((len(chunk), dim), dtype=np.float32)
    return to_numpy(values).reshape(len(chunk), dim)


def first_length(column: pa.ChunkedArray) -> Optional[int]:
    """The length of the column's first embedding (None for no rows); sets d when not given."""
    if pa.types.is_fixed_size_list(column.type):
        return column.type.list_size
    for chunk in column.chunks:
        if len(chunk):
            return int(_row_lengths(chunk[:1])[0])
    return None


def embedding_matrix(
    column: pa.ChunkedArray,
    source: str,
    field: str,
    row_offset: int,
    embedding_dim: Optional[int],
    out: Optional[np.ndarray] = None,
    dim_row: Optional[int] = None,
) -> np.ndarray:
    """The embedding column as a float32 (n, d) array, validated row by row.

    ``out``: an (n, d) float32 array (may be a strided view) to fill instead of a new C-contiguous
    one; its d is then the expected length, set by row ``dim_row`` when `embedding_dim` is None.
    """
    check_embedding_type(column.type, source, field)
    n = len(column)
    dim = embedding_dim
    if out is not None:
        dim = out.shape[1]
    elif dim is None and pa.types.is_fixed_size_list(column.type):
        dim = column.type.list_size
    if out is None and dim is not None:
        out = np.empty((n, dim), dtype=np.float32)
    start = 0
    dim_row = row_offset if dim_row is None else dim_row  # the row whose length set `dim`
    for chunk in column.chunks:
        row0 = row_offset + start
        if chunk.null_count:
            row = first_true(null_mask(chunk))
            raise InputError("embedding is missing or null", source, row=row0 + row, field=field)
        lengths = _row_lengths(chunk)
        if dim is None and len(lengths):
            dim, dim_row = int(lengths[0]), row0
            out = np.empty((n, dim), dtype=np.float32)
        if dim is None:
            continue
        _check_lengths(lengths, dim, embedding_dim, source, field, row0, dim_row)
        if dim == 0 and len(chunk):
            raise InputError("embedding is empty (length 0)", source, row=row0, field=field)
        with np.errstate(over="ignore"):  # beyond float32 range -> Inf, refused by normalise
            out[start : start + len(chunk)] = _chunk_values(chunk, dim, source, field, row0)
        start += len(chunk)
    if out is None:
        out = np.empty((0, 0), dtype=np.float32)
    return out


def metadata_table(table: pa.Table, fields: Optional[list[str]]) -> pa.Table:
    """Only the metadata columns, in the order asked; zero columns keep the row count."""
    return table.select(list(fields or []))
