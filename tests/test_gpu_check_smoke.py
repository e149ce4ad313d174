"""bench/gpu_check.py (the one GPU script) on CPU: its NumPy path (``--cpu-smoke``) on tiny shapes.

The GPU run itself needs CuPy and a GPU; here only the code paths and the numerics that do not
depend on the device are checked."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_smoke_writes_the_table(check, tmp_path):
    """The whole script on NumPy, our engine included (NumPy partitions on a CPU LocalCluster)."""
    out = tmp_path / "gpu.md"
    argv = ["--out", str(out), "--cpu-smoke", "--rows", "3000", "--dim", "16", "--ks", "8,20", "--iters", "2",
            "--sample", "500", "--block", "700", "--chunk", "1000", "--true-clusters", "10"]
    assert check.main(argv) == 0
    text = out.read_text()
    number = r"([0-9.]+) \(([0-9.]+)x\)"
    rows = re.findall(rf"^\| (\d+) \| ([0-9.]+) \| {number} \| - \| {number} \| {number} "
                      r"\| (\d+) of 500 \((\d+)\) \| - \|$", text, flags=re.MULTILINE)
    assert [r[0] for r in rows] == ["8", "20"], text
    for _, floor, lloyd, ratio, off, off_ratio, on, on_ratio, differ, ties in rows:
        assert float(lloyd) > 0 and float(floor) >= 0 and float(off) > 0 and float(on) > 0
        assert int(differ) == int(ties) == 0  # NumPy against the NumPy engine: the same labels
    assert "labels reference, k=8: runner.kmeans.nearest" in text
    gaps = re.findall(r"centroids after 2 iterations within ([0-9.e+-]+) of the plain Lloyd's", text)
    assert len(gaps) == 2 and all(float(g) < 1e-4 for g in gaps), text  # our engine = the plain Lloyd
    assert "LocalCluster, 2 CPU worker processes" in text and "--cpu-smoke" in text.splitlines()[-1]
    reductions = re.findall(r"k-means\|\| reduction, k=(\d+), [0-9,]+ candidates: device [0-9.]+ s, NumPy [0-9.]+ s; "
                            r"(\d+) of \d+ centres the same", text)
    assert reductions == [("8", "8"), ("20", "20")], text  # NumPy both times: the same centres


def test_chunks_are_reproducible_and_unit_norm(check):
    a = check.make_chunk(np, 3, 50, 8, 5, seed=1, spread=0.5)
    assert np.array_equal(a, check.make_chunk(np, 3, 50, 8, 5, seed=1, spread=0.5))
    assert not np.array_equal(a, check.make_chunk(np, 4, 50, 8, 5, seed=1, spread=0.5))
    assert a.dtype == np.float32 and np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-6)
    whole = check.make_data(np, 130, 8, 5, seed=1, spread=0.5, chunk=50)
    assert np.array_equal(whole[100:130], check.make_chunk(np, 2, 30, 8, 5, seed=1, spread=0.5))


def test_plain_lloyd_matches_scikit_learn_from_the_same_start(check):
    sklearn = pytest.importorskip("sklearn.cluster")
    x = check.make_data(np, 2000, 12, 6, seed=2, spread=0.4, chunk=700)
    c0 = check.initial_centroids(lambda rows: x[rows], len(x), 6, seed=3)
    ours, seconds = check.xp_lloyd(np, x, c0, iters=4, block=300)
    ref = sklearn.KMeans(6, init=c0.astype(np.float64), n_init=1, max_iter=4, tol=0, algorithm="lloyd")
    ref.fit(x.astype(np.float64))
    assert seconds > 0 and np.allclose(ours, ref.cluster_centers_, atol=1e-5)


def test_block_sums_equal_a_dense_one_hot_product(check):
    rng = np.random.default_rng(0)
    part = rng.standard_normal((40, 3)).astype(np.float32)
    labels = rng.integers(0, 5, 40)
    dense = np.eye(5, dtype=np.float64)[labels].T @ part.astype(np.float64)
    assert np.allclose(check.block_sums(np, labels, part, 5), dense, atol=1e-5)


def test_tie_bound_is_the_engines(check):
    from kmeans_partition.runner.bounds import score_error

    rng = np.random.default_rng(1)
    x_sq, c = rng.random(10).astype(np.float32), rng.standard_normal((4, 7)).astype(np.float32)
    assert np.array_equal(check.tie_bound(x_sq, c), score_error(x_sq, c))


def test_label_differences_count_only_real_ties_as_ties(check):
    c = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    x = np.array([[np.sqrt(0.5), np.sqrt(0.5)], [1.0, 0.0]], dtype=np.float32)  # a tie, then a clear row
    assert check.label_differences(x, c, np.array([0, 0]), np.array([1, 1])) == (2, 1)
    assert check.label_differences(x, c, np.array([0, 0]), np.array([0, 0])) == (0, 0)
