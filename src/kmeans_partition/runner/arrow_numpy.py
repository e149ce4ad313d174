"""Arrow <-> NumPy on the workers without pandas (pure, no I/O).

pyarrow imports pandas, when it is installed, the first time `pa.array` sees any Python or NumPy
object and on `Array.to_numpy`: ~35 MiB resident in every worker that never uses a DataFrame. These
helpers go through Arrow's buffers instead, so a worker's data path never loads it
(`tests/test_worker_footprint.py` checks a worker running the job).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def _numpy_dtype(kind: pa.DataType):
    """The NumPy dtype of a fixed-width integer or float Arrow type, else None."""
    if pa.types.is_floating(kind):
        return {16: np.float16, 32: np.float32, 64: np.float64}[kind.bit_width]
    if pa.types.is_signed_integer(kind):
        return np.dtype(f"int{kind.bit_width}")
    if pa.types.is_unsigned_integer(kind):
        return np.dtype(f"uint{kind.bit_width}")
    return None


def from_numpy(values: np.ndarray) -> pa.Array:
    """A 1-D integer or float array as an Arrow array over the same memory when contiguous (no nulls)."""
    values = np.ascontiguousarray(values)
    if values.ndim != 1 or values.dtype.kind not in "iuf":
        raise TypeError(f"expected a 1-D integer or float array, got {values.ndim}-D {values.dtype}")
    kind = pa.from_numpy_dtype(values.dtype)
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])


def to_numpy(array: pa.Array) -> np.ndarray:
    """The values of a null-free integer or float array: a read-only view of its buffer.
    Other types (or arrays with nulls) go through pyarrow's own conversion."""
    dtype = _numpy_dtype(array.type)
    if dtype is None or array.null_count:
        return array.to_numpy(zero_copy_only=False)
    buffer = array.buffers()[1]
    if buffer is None:  # zero rows
        return np.empty(0, dtype)
    return np.frombuffer(buffer, dtype, count=len(array), offset=array.offset * np.dtype(dtype).itemsize)


def bits_to_numpy(bits: pa.Array) -> np.ndarray:
    """A null-free boolean array as a (n,) bool array (Arrow packs booleans into bits)."""
    buffer = bits.buffers()[1]
    if buffer is None or not len(bits):
        return np.zeros(len(bits), bool)
    unpacked = np.unpackbits(np.frombuffer(buffer, np.uint8), bitorder="little")
    return unpacked[bits.offset : bits.offset + len(bits)].astype(bool)


def null_mask(array: pa.Array) -> np.ndarray:
    """(n,) bool: True where `array` is null."""
    if not array.null_count:
        return np.zeros(len(array), bool)
    return bits_to_numpy(array.is_null())


def offsets_to_numpy(array: pa.Array) -> np.ndarray:
    """(n + 1,) int64 offsets of a list, string or binary array's rows into its values (slicing
    honoured: a sliced array's first offset need not be 0)."""
    if hasattr(array, "offsets"):  # list arrays
        return to_numpy(array.offsets).astype(np.int64)
    large = pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type)
    offsets = np.frombuffer(array.buffers()[1], np.int64 if large else np.int32)
    return offsets[array.offset : array.offset + len(array) + 1].astype(np.int64)
