"""NORMALISE stage: parity with a NumPy float64 reference, robustness, errors."""

import numpy as np
import pytest

from kmeans_partition.runner import normalise
from kmeans_partition.runner.normalise import normalise_rows
from kmeans_partition.runner.read import InputError


def reference(x: np.ndarray) -> np.ndarray:
    wide = x.astype(np.float64)
    return wide / np.linalg.norm(wide, axis=1, keepdims=True)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_matches_float64_reference(dtype):
    x = (np.random.default_rng(1).standard_normal((300, 37)) * 3).astype(dtype)
    original = x.copy()
    y = normalise_rows(x, "mem://x", 0)
    assert y.dtype == np.float32 and y.flags.c_contiguous and y.shape == x.shape
    np.testing.assert_allclose(y, reference(x), rtol=0, atol=2e-7)
    np.testing.assert_allclose(np.linalg.norm(y.astype(np.float64), axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(x, original)  # input never modified
    assert y is not x and not np.shares_memory(x, y)


def test_extreme_magnitudes_normalise_correctly():
    f32 = np.finfo(np.float32)
    x = np.array(
        [
            [f32.max, f32.max, 0.0],  # squared norm overflows float32
            [f32.smallest_subnormal, 0.0, f32.smallest_subnormal],  # squares underflow float32
            [np.finfo(np.float16).smallest_subnormal, 0.0, 0.0],
        ],
        dtype=np.float32,
    )
    y = normalise_rows(x, "mem://x", 0)
    expected = np.array([[2**-0.5, 2**-0.5, 0], [2**-0.5, 0, 2**-0.5], [1, 0, 0]])
    np.testing.assert_allclose(y, expected, atol=1e-7)
    big = np.array([[1e308, 1e308], [5e-324, 0.0]])  # float64 overflow / underflow of squares
    np.testing.assert_allclose(normalise_rows(big, "mem://x", 0), [[2**-0.5, 2**-0.5], [1, 0]], atol=1e-7)


def test_rows_spanning_blocks_keep_their_row_numbers(monkeypatch):
    monkeypatch.setattr(normalise, "BLOCK_ROWS", 4)
    x = np.random.default_rng(2).standard_normal((11, 5)).astype(np.float32)
    np.testing.assert_allclose(normalise_rows(x, "mem://x", 0), reference(x), atol=2e-7)
    x[9] = 0
    with pytest.raises(InputError, match="zero vector") as caught:
        normalise_rows(x, "mem://x", 100)
    assert caught.value.row == 109 and "row 109" in str(caught.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_names_source_and_row(bad):
    x = np.ones((5, 3), np.float32)
    x[3, 1] = bad
    with pytest.raises(InputError, match="NaN or Inf") as caught:
        normalise_rows(x, "s3://b/k.parquet", 40)
    assert (caught.value.source, caught.value.row) == ("s3://b/k.parquet", 43)
    assert str(caught.value).startswith("s3://b/k.parquet: row 43:")


def test_zero_vector_cannot_be_normalised():
    x = np.ones((4, 3), np.float64)
    x[2] = 0.0
    with pytest.raises(InputError, match="cannot be normalised") as caught:
        normalise_rows(x, "file:///d/x.parquet", 10)
    assert caught.value.row == 12


def test_empty_and_bad_shapes():
    assert normalise_rows(np.empty((0, 4), np.float32), "mem://x", 0).shape == (0, 4)
    with pytest.raises(ValueError, match="2-D"):
        normalise_rows(np.ones(3, np.float32), "mem://x", 0)
