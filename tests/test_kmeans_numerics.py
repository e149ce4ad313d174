"""The block numerics against NumPy float64 references."""

import numpy as np
import pytest

from kmeans_partition.runner import kmeans as km
from kmeans_partition.runner.lloyd import lloyd_partial, reduce_lloyd
from array_support import on  # noqa: F401  (fixture: NumPy, array-api-strict on a non-default device)
from dask_support import blobs


def brute_force(x, c):
    d2 = ((x.astype(np.float64)[:, None, :] - c.astype(np.float64)[None]) ** 2).sum(-1)
    return d2.argmin(1), d2.min(1)


@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_nearest_matches_float64_brute_force(batch, on):
    x = blobs(500, 12, 6, seed=1)
    c = x[np.random.default_rng(2).choice(500, 9, replace=False)] * 0.9
    labels, d2 = km.nearest(on(km.augment_rows(x)), on(km.row_sq_norms(x)), on(km.augment_centroids(c)), batch)
    labels, d2 = on.check(labels), on.check(d2)
    ref_labels, ref_d2 = brute_force(x, c)
    sorted_d2 = np.sort(((x[:, None, :].astype(np.float64) - c[None]) ** 2).sum(-1), axis=1)
    clear = sorted_d2[:, 1] - sorted_d2[:, 0] > 1e-5  # rows without a near-tie
    assert np.array_equal(labels[clear], ref_labels[clear])
    np.testing.assert_allclose(d2, ref_d2, atol=2e-6)
    assert labels.dtype == np.int32 and d2.dtype == np.float32 and (d2 >= 0).all()


def test_cluster_sums_match_numpy(on):
    x = blobs(300, 5, 3, seed=3)
    labels = np.random.default_rng(4).integers(7, size=300).astype(np.int32)
    sums, counts = km.cluster_sums(on(x), on(labels), 7)
    sums, counts = on.check(sums), on.check(counts)
    for j in range(7):
        np.testing.assert_allclose(sums[j], x[labels == j].astype(np.float64).sum(0), rtol=1e-5, atol=1e-5)
        assert counts[j] == np.count_nonzero(labels == j)


def test_tolerance_is_sklearn_definition():
    x = blobs(400, 8, 4, seed=5).astype(np.float64)
    ours = km.tolerance(x.sum(0), (x * x).sum(0), len(x), 1e-4)
    assert ours == pytest.approx(np.mean(np.var(x, axis=0)) * 1e-4, rel=1e-9)
    assert km.tolerance(x.sum(0), (x * x).sum(0), len(x), 0.0) == 0.0


def test_reduce_reseeds_empty_cluster_at_farthest_row_never_nan(on):
    x = blobs(200, 4, 2, seed=6)
    centroids = np.stack([x[0], x[0], x[1]])  # centroid 1 duplicates 0: it gets no rows
    partial, _ = lloyd_partial(on(km.augment_rows(x)), on(km.row_sq_norms(x)), centroids, 64)
    update = reduce_lloyd([partial], centroids)
    assert update.n_reseeded == 1
    assert np.isfinite(update.centroids).all()
    _, d2 = brute_force(x, centroids)
    np.testing.assert_allclose(update.centroids[1], x[np.argmax(d2)], atol=1e-6)


def test_reduce_keeps_position_when_no_candidate_left(on):
    x = (np.ones((1, 3)) / np.sqrt(3)).astype(np.float32)
    centroids = np.stack([x[0], x[0] * 0.5, -x[0]])
    partial, _ = lloyd_partial(on(km.augment_rows(x)), on(km.row_sq_norms(x)), centroids, 8)
    update = reduce_lloyd([partial], centroids)
    assert np.isfinite(update.centroids).all()
    assert update.n_reseeded == 2
    np.testing.assert_array_equal(update.centroids[2], centroids[2])


def test_weighted_kmeans_pp_picks_distinct_heavy_points():
    rng = np.random.default_rng(7)
    points = np.concatenate([np.zeros((5, 2)), np.full((5, 2), 10.0), np.full((1, 2), -10.0)])
    weights = np.array([1.0] * 10 + [0.0])
    chosen = km.weighted_kmeans_pp(points, weights, 2, rng)
    assert len(set(points[chosen, 0])) == 2  # one from each heavy group
    assert 10 not in chosen  # zero weight is never drawn


def test_cluster_sums_error_does_not_grow_with_cluster_size():
    rng = np.random.default_rng(8)
    x = (0.05 + 0.05 * rng.standard_normal((200_000, 4))).astype(np.float32)
    labels = np.zeros(len(x), dtype=np.int32)
    sums, _ = km.cluster_sums(x, labels, 1)
    reference = x.astype(np.float64).sum(0)
    assert np.abs(sums[0] / reference - 1).max() < 1e-6  # one float32 pass: ~1e-5


def test_block_sums_do_not_depend_on_when_blocks_are_added():
    rng = np.random.default_rng(9)
    x = km.augment_rows(blobs(10_000, 6, 3, seed=10))
    labels = rng.integers(5, size=len(x)).astype(np.int32)
    reference, ref_counts = km.cluster_sums(x, labels, 5)
    stepwise = km.BlockSums(x, labels, 5)
    for stop in sorted(rng.integers(0, len(x), size=7)):
        stepwise.advance(int(stop))
    sums, counts = stepwise.result()
    np.testing.assert_array_equal(sums, reference)
    np.testing.assert_array_equal(counts, ref_counts)
    # fused into the distance blocks of `nearest`
    c = km.augment_centroids(x[:5, :-1])
    fused = km.BlockSums.for_rows(x, 5)
    labels2, _ = km.nearest(x, km.row_sq_norms(x[:, :-1]), c, 999, fused)
    np.testing.assert_array_equal(fused.result()[0], km.cluster_sums(x, labels2, 5)[0])
    np.testing.assert_allclose(sums[:, :-1], [x[labels == j, :-1].astype(np.float64).sum(0) for j in range(5)],
                               rtol=1e-5, atol=1e-4)
