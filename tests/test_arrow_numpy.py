"""Arrow <-> NumPy without pandas, and the id hash, against pyarrow and a plain-Python reference."""

import datetime
import random

import numpy as np
import pyarrow as pa
import pytest

from kmeans_partition.runner.arrow_numpy import from_numpy, null_mask, offsets_to_numpy, to_numpy
from kmeans_partition.runner.id_hash import hash_ids
from kmeans_partition.runner.partition import count_duplicates

M64 = (1 << 64) - 1


def reference_mix(v: int) -> int:
    """SplitMix64's finaliser on Python integers (the documented hash, independent of NumPy)."""
    v ^= v >> 30
    v = (v * 0xBF58476D1CE4E5B9) & M64
    v ^= v >> 27
    v = (v * 0x94D049BB133111EB) & M64
    return v ^ (v >> 31)


def reference_hash(data: bytes) -> int:
    """The id_hash docstring's hash of one byte string, a word at a time in plain Python."""
    total = 0
    for slot in range(0, len(data), 8):
        word = int.from_bytes(data[slot : slot + 8].ljust(8, b"\0"), "little")
        total = (total + reference_mix((word + (slot // 8 + 1) * 0x9E3779B97F4A7C15) & M64)) & M64
    return reference_mix((total + len(data) * 0x9E3779B97F4A7C15) & M64)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint16, np.float16, np.float32, np.float64])
def test_numpy_round_trip_shares_memory_and_honours_slices(dtype):
    values = np.arange(10).astype(dtype)
    array = from_numpy(values)
    assert array.type == pa.from_numpy_dtype(dtype) and array.to_pylist() == values.tolist()
    back = to_numpy(array[3:7])
    assert back.dtype == dtype and back.tolist() == values[3:7].tolist()
    assert np.shares_memory(back, values)
    with pytest.raises(TypeError, match="1-D integer or float"):
        from_numpy(np.ones((2, 2)))
    with pytest.raises(TypeError, match="1-D integer or float"):
        from_numpy(np.ones(2, bool))


def test_null_masks_and_offsets_match_pyarrow_on_sliced_arrays():
    rng = np.random.default_rng(0)
    values = [None if rng.random() < 0.2 else int(v) for v in rng.integers(0, 9, 200)]
    array = pa.array(values)
    for start, stop in [(0, 200), (3, 190), (17, 18), (64, 64)]:
        piece = array[start:stop]
        assert null_mask(piece).tolist() == piece.is_null().to_pylist()
    words = pa.array(["", "a", "bcd", None, "ef", "ghij"] * 7)
    lists = pa.array([[1.0], [], [2.0, 3.0], None, [4.0, 5.0, 6.0]] * 5)
    for array in [words, words.cast(pa.large_string()), lists, lists.cast(pa.large_list(pa.float64()))]:
        piece = array[5:29]
        offsets = offsets_to_numpy(piece)
        lengths = [0 if v is None else len(v) for v in piece.to_pylist()]
        if pa.types.is_string(piece.type) or pa.types.is_large_string(piece.type):
            lengths = [0 if v is None else len(v.encode()) for v in piece.to_pylist()]
        assert offsets.dtype == np.int64 and np.diff(offsets).tolist() == lengths


def test_string_hashes_equal_the_documented_hash():
    rnd = random.Random(3)
    alphabet = ["a", "b", "\0", "é", "字", "\U0001F600"]
    texts = [''.join(rnd.choice(alphabet) for _ in range(rnd.randrange(0, 30))) for _ in range(3000)]
    array = pa.array(texts)
    hashes = hash_ids(array)
    assert hashes.dtype == np.uint64
    assert hashes.tolist() == [reference_hash(t.encode()) for t in texts]
    assert hash_ids(array[101:2003]).tolist() == hashes[101:2003].tolist()  # slices: offsets past 0
    binary = pa.array([t.encode() for t in texts], pa.binary())
    for same in [array.cast(pa.large_string()), array.cast(pa.string_view()), array.dictionary_encode(),
                 binary, binary.cast(pa.large_binary())]:
        assert hash_ids(same).tolist() == hashes.tolist()


def test_distinct_ids_get_distinct_hashes():
    ids = pa.array([f"doc-{i:07d}" for i in range(300_000)] + ["a", "a\0", "a\0\0", "", "\0", "\0\0" * 8])
    assert len(np.unique(hash_ids(ids))) == len(ids)
    numbers = np.concatenate([np.arange(-100_000, 100_000), [2**62, -(2**62), 2**63 - 1]])
    hashes = hash_ids(pa.array(numbers))
    assert len(np.unique(hashes)) == len(numbers)
    assert hash_ids(pa.array(numbers[:1000], pa.int32())).tolist() == hashes[:1000].tolist()


def test_other_scalar_ids_hash_by_value():
    cases = [
        [datetime.date(2020, 1, 1), datetime.date(2021, 5, 6), datetime.date(2020, 1, 1)],
        [1.5, 2.5, 1.5],
        [True, False, True],
        [datetime.datetime(2020, 1, 1, 3), datetime.datetime(2020, 1, 1, 4), datetime.datetime(2020, 1, 1, 3)],
    ]
    for values in cases:
        hashes = hash_ids(pa.array(values))
        assert hashes[0] == hashes[2] != hashes[1]
        assert hash_ids(pa.array(values)[1:]).tolist() == hashes[1:].tolist()


def test_duplicate_count_from_hashes():
    ids = pa.array([f"id-{i % 700}" for i in range(1000)])  # 300 extra occurrences
    hashes = hash_ids(ids)
    assert count_duplicates(hashes[:400], hashes[400:]) == 300
