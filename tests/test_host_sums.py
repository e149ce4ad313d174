"""The host's per-label sums (`host_sums`): scipy's CSC kernel without importing scipy.sparse, equal
bit for bit to scipy.sparse's product and close to a float64 NumPy reference."""

import subprocess
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp

from kmeans_partition.runner import host_sums


def reference(labels, rows, k):
    out = np.zeros((k, rows.shape[1]))
    np.add.at(out, labels, rows.astype(np.float64))
    return out


def scipy_product(labels, rows, k):
    n = len(labels)
    return np.asarray(sp.csr_matrix((np.ones(n, rows.dtype), (labels, np.arange(n))), shape=(k, n)) @ rows)


@pytest.mark.parametrize("n, d, k, dtype", [(4096, 33, 100, np.float32), (2048, 17, 1000, np.float64),
                                             (500, 5, 40000, np.float32), (7, 3, 1, np.float32),
                                             (0, 4, 3, np.float32)])
def test_sums_equal_scipy_sparse_bit_for_bit(n, d, k, dtype):
    """Also k above 32767, labels with no rows, n = 0; int32 and int64 labels."""
    rng = np.random.default_rng(n + k)
    rows = rng.standard_normal((n, d)).astype(dtype)
    labels = rng.integers(0, k, n).astype(np.int32 if n % 2 == 0 else np.int64)
    assert host_sums.sparsetools() is not None  # scipy's kernel is there in the test environment
    got = host_sums.segment_sum(labels, rows, k, np.ones(n + 5, dtype))
    assert got.shape == (k, d) and got.dtype == dtype
    np.testing.assert_array_equal(got, scipy_product(labels, rows, k))
    np.testing.assert_allclose(got, reference(labels, rows, k), rtol=1e-5, atol=1e-4)


def test_strided_rows_and_the_scipy_sparse_fallback(monkeypatch):
    rng = np.random.default_rng(3)
    wide = rng.standard_normal((300, 12)).astype(np.float32)
    rows, labels = wide[:, ::2], rng.integers(0, 9, 300).astype(np.int32)
    direct = host_sums.segment_sum(labels, rows, 9)
    np.testing.assert_array_equal(direct, scipy_product(labels, np.ascontiguousarray(rows), 9))
    monkeypatch.setattr(host_sums, "_kernel", [None])  # the extension missing or failing its check
    np.testing.assert_array_equal(host_sums.segment_sum(labels, rows, 9), direct)


def test_a_kernel_that_sums_wrong_or_fails_is_not_used():
    wrong = types.SimpleNamespace(csc_matvecs=lambda *args: args[-1].__setitem__(slice(None), 1.0))
    failing = types.SimpleNamespace(csc_matvecs=lambda *args: (_ for _ in ()).throw(ValueError("bad")))
    assert host_sums._checked(wrong) is None and host_sums._checked(failing) is None
    assert host_sums._checked(None) is None
    assert host_sums._checked(host_sums.sparsetools()) is not None


def test_a_fresh_process_sums_without_importing_scipy_sparse_and_can_import_it_after():
    code = (
        "import sys, numpy as np\n"
        "from kmeans_partition.runner import host_sums\n"
        "labels = np.array([1, 0, 1, 2], np.int32); rows = np.arange(8, dtype=np.float32).reshape(4, 2)\n"
        "got = host_sums.segment_sum(labels, rows, 3)\n"
        "print(sorted(m for m in sys.modules if m.startswith('scipy') and m != 'scipy.sparse._sparsetools'))\n"
        "import scipy.sparse as sp\n"
        "print((sp.csr_matrix((np.ones(4, np.float32), (labels, np.arange(4))), shape=(3, 4)) @ rows).tolist())\n"
        "print(got.tolist())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    before, product, ours = done.stdout.strip().splitlines()
    assert before == "[]"  # no scipy package, no scipy.sparse: only the kernel's extension
    assert product == ours == "[[2.0, 3.0], [4.0, 6.0], [6.0, 7.0]]"
