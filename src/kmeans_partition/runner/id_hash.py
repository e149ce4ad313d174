"""64-bit hashes of ids for the distributed duplicate-id count (pure NumPy over Arrow buffers).

The same id gets the same hash in every process and partition, whatever the Arrow width:
integers by value (``int32`` 5 == ``int64`` 5), strings and binaries by their bytes (``string`` ==
``large_string`` == ``string_view``), other fixed-width scalars by their bytes. Integers are mixed by
SplitMix64's finaliser, a bijection, so distinct integers never collide; a byte string is cut into
8-byte little-endian words, each word mixed with its position, summed, then mixed with the length
(distinct strings collide with probability ~2^-64 a pair, like the pandas hash used before, which
would load pandas into every worker). Strings are processed word slot by word slot over all rows
at once, longest first, so the loop runs max-length / 8 times. A ``uint64`` id above 2^63 - 1
shares its hash with the ``int64`` of the same bits (one column has one type across a run's files).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .arrow_numpy import offsets_to_numpy, to_numpy

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_TWO_TO_64 = 1 << 64


def _mix(v: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a (n,) uint64 array, in place (wrapping arithmetic); returns it."""
    v ^= v >> np.uint64(30)
    v *= _M1
    v ^= v >> np.uint64(27)
    v *= _M2
    v ^= v >> np.uint64(31)
    return v


def hash_bytes(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """(n,) uint64 hashes of the byte strings ``data[offsets[i]:offsets[i + 1]]``.

    offsets: (n + 1,) int64, non-decreasing; data: (m,) uint8.
    """
    n = len(offsets) - 1
    starts, lengths = offsets[:-1], np.diff(offsets)
    first, last = (int(offsets[0]), int(offsets[-1])) if n else (0, 0)
    padded = np.zeros(last - first + 8, np.uint8)  # 8 spare bytes: every word load stays inside
    padded[: last - first] = data[first:last]
    words_at = np.ndarray((last - first + 1,), dtype="<u8", buffer=padded, strides=(1,))  # word at any byte
    n_words = (lengths + 7) // 8
    order = np.argsort(-n_words, kind="stable")  # longest first: slot j's rows are a prefix
    starts, lengths, n_words = starts[order] - first, lengths[order], n_words[order]
    sums = np.zeros(n, np.uint64)
    for slot in range(int(n_words[0]) if n else 0):
        rows = int(np.count_nonzero(n_words > slot))
        word = words_at[starts[:rows] + 8 * slot]
        left = lengths[:rows] - 8 * slot
        tail = left < 8
        if tail.any():  # the row's last word: bytes past its end are the next row's, mask them
            word[tail] &= (np.uint64(1) << (left[tail].astype(np.uint64) * np.uint64(8))) - np.uint64(1)
        word += np.uint64((slot + 1) * int(_GOLDEN) % _TWO_TO_64)  # wraps like the arrays (no scalar overflow)
        sums[:rows] += _mix(word)
    hashes = np.empty(n, np.uint64)
    hashes[order] = sums + lengths.astype(np.uint64) * _GOLDEN
    return _mix(hashes)


def _as_binary(ids: pa.Array) -> pa.Array:
    """Strings, binaries and other fixed-width scalars as (large_)binary of their bytes."""
    kind = ids.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return ids.view(pa.binary() if pa.types.is_string(kind) else pa.large_binary())
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return ids
    if pa.types.is_string_view(kind) or pa.types.is_binary_view(kind):
        return ids.cast(pa.large_binary())
    if pa.types.is_boolean(kind):
        return _as_binary(ids.cast(pa.int8()))
    width = kind.bit_width // 8 if kind.bit_width and kind.bit_width % 8 == 0 else 0
    if not width or ids.null_count:
        return ids.cast(pa.large_string()).view(pa.large_binary())
    buffer = ids.buffers()[1]
    offsets = np.arange(ids.offset, ids.offset + len(ids) + 1, dtype=np.int64) * width
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(ids), [None, pa.py_buffer(offsets), buffer])


def hash_ids(ids: pa.Array) -> np.ndarray:
    """(n,) uint64 hashes of `ids` (Arrow scalars: integers, strings, binaries, dates, ...), stable
    across processes."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_decode()
    if not len(ids) or pa.types.is_null(ids.type):
        return np.zeros(len(ids), np.uint64)
    if pa.types.is_integer(ids.type) and not ids.null_count:
        values = to_numpy(ids)
        as_int64 = values.view(np.int64) if values.dtype == np.uint64 else values.astype(np.int64)
        return _mix(as_int64.view(np.uint64).copy())
    binary = _as_binary(ids)
    data = binary.buffers()[2]
    raw = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    return hash_bytes(offsets_to_numpy(binary), raw)
