"""The array backend: kernels on NumPy and on array-api-strict (non-default device) against NumPy float64.

Labels may differ from the float64 reference only on near-ties, flagged by the bound the engine
itself uses (`bounds.score_error`, twice: two float32 scores each off by at most that).
"""

from __future__ import annotations

import types

import numpy as np
import pyarrow as pa
import pytest

from kmeans_partition.runner import backend as be
from kmeans_partition.runner import bounds as bd
from kmeans_partition.runner import kmeans as km
from kmeans_partition.runner.lloyd import PruningCosts, lloyd_partial, reduce_lloyd
from kmeans_partition.runner import normalise
from kmeans_partition.runner.normalise import normalise_rows
from kmeans_partition.runner.partition import Partition, partition_stats
from array_support import OnDevice, on  # noqa: F401  (fixture)
from dask_support import blobs


def reference(x, c):
    """float64 squared distances (n, k)."""
    return ((x.astype(np.float64)[:, None, :] - c.astype(np.float64)[None]) ** 2).sum(-1)


def near_tie(x, c, labels_a, labels_b):
    """Rows where two labelings differ by less than the engine's rounding bound (twice)."""
    d2 = reference(x, c)
    rows = np.arange(len(x))
    gap = np.abs(d2[rows, labels_a] - d2[rows, labels_b])
    return gap <= 2 * bd.score_error(km.row_sq_norms(x), c)


def test_strict_device_refuses_host_mixing():
    on = OnDevice("strict")
    a = on(np.ones(3, np.float32))
    with pytest.raises(ValueError):
        a + on.xp.asarray(np.ones(3, np.float32))  # default device
    with pytest.raises(RuntimeError):
        np.asarray(a)


@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_nearest(on, batch):
    x = blobs(400, 12, 6, seed=1)
    c = x[np.random.default_rng(2).choice(400, 9, replace=False)] * 0.9
    labels, d2 = km.nearest(on(km.augment_rows(x)), on(km.row_sq_norms(x)), on(km.augment_centroids(c)), batch)
    labels, d2 = on.check(labels), on.check(d2)
    ref = reference(x, c)
    wrong = labels != ref.argmin(1)
    assert not (wrong & ~near_tie(x, c, labels, ref.argmin(1))).any()
    np.testing.assert_allclose(d2, ref.min(1), atol=2e-6)
    assert labels.dtype == np.int32 and d2.dtype == np.float32 and (d2 >= 0).all()


def test_nearest_two(on):
    x = blobs(300, 10, 5, seed=3)
    c = x[:7] * 0.8
    xa, ca = km.augment_rows(x), km.augment_centroids(c)
    scores = on(np.empty((300, 7), np.float32))
    lab, first, second, _ = km.nearest_two(on(xa), on(ca).T, scores)
    ref = np.sort(reference(x, c), axis=1) - (x.astype(np.float64) ** 2).sum(1)[:, None]
    np.testing.assert_allclose(on.check(first), ref[:, 0], atol=3e-6)
    np.testing.assert_allclose(on.check(second), ref[:, 1], atol=3e-6)
    assert on.check(lab).dtype == np.int32


def test_augment_and_norms(on):
    x = blobs(50, 6, 3, seed=4)
    xa, ca = on.check(km.augment_rows(on(x))), on.check(km.augment_centroids(on(x[:4])))
    np.testing.assert_array_equal(xa[:, :-1], x)
    assert (xa[:, -1] == 1).all()
    np.testing.assert_allclose(ca[:, -1], (x[:4].astype(np.float64) ** 2).sum(1), rtol=1e-6)
    np.testing.assert_allclose(on.check(km.row_sq_norms(on(x))), (x.astype(np.float64) ** 2).sum(1), rtol=1e-6)
    host_c = km.augment_centroids(x[:4], ref=on(x))  # host centroids moved to the rows' device
    np.testing.assert_array_equal(on.check(host_c), ca)


@pytest.mark.parametrize("n", [300, 9000])  # one block, several `SUM_BLOCK` blocks
def test_cluster_sums(on, n):
    x = blobs(n, 5, 3, seed=5)
    labels = np.random.default_rng(6).integers(7, size=n).astype(np.int32)
    sums, counts = km.cluster_sums(on(x), on(labels), 7)
    sums, counts = on.check(sums), on.check(counts)
    for j in range(7):
        np.testing.assert_allclose(sums[j], x[labels == j].astype(np.float64).sum(0), rtol=1e-5, atol=1e-5)
        assert counts[j] == np.count_nonzero(labels == j)
    assert sums.dtype == np.float64 and counts.dtype == np.int64


def test_segment_sum_and_bincount(on):
    rng = np.random.default_rng(7)
    rows = rng.standard_normal((40, 3)).astype(np.float32)
    labels = rng.integers(0, 5, 40).astype(np.int32)
    dense = np.eye(5)[labels].T @ rows.astype(np.float64)
    np.testing.assert_allclose(on.check(be.segment_sum(on.xp, on(labels), on(rows), 5)), dense, atol=1e-5)
    np.testing.assert_array_equal(on.check(be.bincount(on.xp, on(labels), 6)), np.bincount(labels, minlength=6))
    weights = rng.random(40)
    np.testing.assert_allclose(on.check(be.bincount(on.xp, on(labels), 5, on(weights))),
                               np.bincount(labels, weights, minlength=5))


def test_rowdot_in_blocks(on, monkeypatch):
    monkeypatch.setattr(be, "ROWDOT_ROWS", 7)
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((30, 4)), rng.standard_normal((30, 4))
    np.testing.assert_allclose(on.check(be.rowdot(on.xp, on(a), on(b))), (a * b).sum(1), rtol=1e-12)
    got = on.check(be.rowdot(on.xp, on(a.astype(np.float32)), on(b.astype(np.float32)), dtype=on.xp.float32))
    assert got.dtype == np.float32


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_normalise_names_the_row_of_a_non_finite_value(on, bad):
    x = np.ones((20, 3), np.float32)
    x[13, 2] = bad
    with pytest.raises(Exception, match="NaN or Inf") as caught:
        normalise_rows(on(x), "s3://b/k.parquet", 40)
    assert (caught.value.source, caught.value.row) == ("s3://b/k.parquet", 53)


def test_normalise(on):
    x = (np.random.default_rng(8).standard_normal((200, 9)) * 3).astype(np.float64)
    x[3] *= 1e-160  # squares underflow: the rescaled path
    y = on.check(normalise_rows(on(x), "mem://x", 0))
    scaled = x / np.abs(x).max(axis=1, keepdims=True)  # a float64 reference that does not underflow
    np.testing.assert_allclose(y, scaled / np.linalg.norm(scaled, axis=1, keepdims=True), atol=2e-7)
    assert y.dtype == np.float32
    bad = x.copy()
    bad[7] = 0.0
    with pytest.raises(Exception, match="zero vector") as caught:
        normalise_rows(on(bad), "mem://x", 10)
    assert caught.value.row == 17


def test_normalise_host_rows_into_a_device_buffer(on, monkeypatch):
    """As a partition loads: host blocks go to the buffer's device one at a time."""
    monkeypatch.setattr(normalise, "BLOCK_ROWS", 16)
    x = (np.random.default_rng(8).standard_normal((50, 6)) * 3).astype(np.float32)
    xa = on(np.full((50, 7), 7.0, np.float32))
    normalise_rows(x, "mem://x", 0, out=xa[:, :-1])
    got = on.check(xa)
    np.testing.assert_allclose(got[:, :-1], x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True),
                               atol=2e-7)
    assert (got[:, -1] == 7.0).all()  # the ones column is left alone


def test_partition_stats(on):
    x = blobs(500, 8, 4, seed=9)
    part = Partition.from_normalised(0, "mem://x", 0, pa.array(np.arange(500)), on(x))
    on.check(part.xa)
    stats = partition_stats(part, block_bytes=128 * 8 * 8)
    np.testing.assert_allclose(stats.feature_sum, x.astype(np.float64).sum(0), rtol=1e-9)
    np.testing.assert_allclose(stats.feature_sq_sum, (x.astype(np.float64) ** 2).sum(0), rtol=1e-9)
    assert isinstance(stats.feature_sum, np.ndarray)


def _steps(on, x, c0, steps, batch, pruned, costs=PruningCosts()):
    xa, x_sq = on(km.augment_rows(x)), on(km.row_sq_norms(x))
    previous, drift, c = None, None, c0
    for _ in range(steps):
        partial, state = lloyd_partial(xa, x_sq, c, batch, previous if pruned else None, drift, costs)
        yield c, partial, state
        update = reduce_lloyd([partial], c)
        previous, drift, c = (partial, state), update.drift, update.centroids


@pytest.mark.parametrize("costs", [PruningCosts(), PruningCosts(upkeep=-1, gather=0, tighten=0)])
def test_lloyd_steps_match_numpy(on, costs):
    """Pruned steps on the library equal full steps on NumPy: same centroids, labels, sums."""
    x = blobs(3000, 16, 12, seed=11, spread=0.25)
    c0 = x[np.random.default_rng(12).choice(len(x), 40, replace=False)]
    full = list(_steps(OnDeviceNumpy(), x, c0, 12, 97, pruned=False))
    pruned = list(_steps(on, x, c0, 12, 97, pruned=True, costs=costs))
    last = None
    exact = on.name == "numpy"  # another library sums blocks in another order: equal to rounding
    for (c_f, p_f, s_f), (c_p, p_p, s_p) in zip(full, pruned):
        labels = on.check(s_p.labels)
        if exact:
            np.testing.assert_array_equal(c_p, c_f)
            np.testing.assert_array_equal(labels, s_f.labels)
            np.testing.assert_array_equal(p_p.sums, p_f.sums)
            np.testing.assert_array_equal(p_p.far_rows, p_f.far_rows)
            assert p_p.n_changed == (-1 if last is None else int((last != s_f.labels).sum()))
        else:
            np.testing.assert_allclose(c_p, c_f, atol=1e-5)
            differ = labels != s_f.labels
            assert not (differ & ~near_tie(x, c_p, labels, s_f.labels)).any()
            own_sums = np.eye(len(c_p))[labels].T @ x.astype(np.float64)  # float64, from its own labels
            np.testing.assert_allclose(p_p.sums, own_sums, rtol=1e-5, atol=1e-5)
            inertia = reference(x, c_p)[np.arange(len(x)), labels].sum()
            assert p_p.inertia == pytest.approx(inertia, rel=1e-5)
        assert p_p.inertia == pytest.approx(p_f.inertia, rel=1e-3)
        assert isinstance(p_p.sums, np.ndarray) and isinstance(p_p.far_dist, np.ndarray)
        last = s_f.labels
    assert min(p.n_recomputed for _, p, _ in pruned[1:]) < len(x)  # the bounds did skip rows
    # against float64: the first step's labels are the nearest centroid except near-ties
    labels = on.check(pruned[0][2].labels)
    ref = reference(x, c0).argmin(1)
    assert not ((labels != ref) & ~near_tie(x, c0, labels, ref)).any()


class OnDeviceNumpy:
    def __call__(self, values):
        return np.asarray(values)


def test_farthest(on):
    rng = np.random.default_rng(17)
    values = rng.integers(0, 50, size=300).astype(np.float32)
    known = rng.random(300) < 0.3
    upper = values + rng.random(300) * 5
    chosen, chosen_values = bd.farthest(on(np.where(known, values, np.nan).astype(np.float32)), on(known),
                                        on(upper), 16, lambda rows: on(values)[rows])
    reference_rows = np.lexsort((np.arange(300), -values.astype(np.float64)))[:16]
    np.testing.assert_array_equal(chosen, reference_rows)
    np.testing.assert_array_equal(chosen_values, values[reference_rows])


def test_partition_namespace_chooses_cupy_only_when_asked_and_available(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    calls = []

    def fake_import(name, devices=1):
        calls.append(name)
        if name == "cupy":
            runtime = types.SimpleNamespace(getDeviceCount=lambda: devices)
            return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime))
        return types.SimpleNamespace(__name__="array_api_compat.cupy")

    assert be.is_numpy(be.partition_namespace("auto", fake_import)) and calls == []  # no device assigned
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert be.partition_namespace("auto", fake_import).__name__ == "array_api_compat.cupy"
    assert be.is_numpy(be.partition_namespace("numpy", fake_import))
    assert be.is_numpy(be.partition_namespace("auto", lambda n: fake_import(n, devices=0)))

    def missing(name):
        raise ImportError("No module named 'cupy'")

    assert be.is_numpy(be.partition_namespace("auto", missing))
    with pytest.raises(ImportError, match="cupy"):
        be.partition_namespace("cupy", missing)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert be.is_numpy(be.partition_namespace("auto", fake_import))
    with pytest.raises(ValueError, match="unknown array backend"):
        be.partition_namespace("torch", fake_import)


def test_block_rows_caps_host_score_blocks_not_gpu_ones():
    assert be.block_rows(np, 32768, 1000) == be.GEMM_ROWS  # 8 MB of scores, not 131 MB
    assert be.block_rows(np, 32768, 100) == be.HOST_BLOCK_SMALL_ENTRIES // 100  # 4 MB at small k, not 13 MB
    assert be.block_rows(np, 32768, 10_000) == be.HOST_BLOCK_ENTRIES // 10_000  # 16 MB at large k, not 164 MB
    assert be.block_rows(np, 100, 1000) == 100  # the user's batch still bounds it
    assert be.block_rows(np, 32768, 10_000_000) == 256  # a floor of rows at huge k
    import array_api_strict

    assert be.block_rows(array_api_strict, 32768, 1000) == 32768  # other libraries (GPUs): the batch
