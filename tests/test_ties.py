"""Near ties decided by exact distances: labels equal the float64 argmin whatever the GEMM's shape."""

import numpy as np
import pytest

from kmeans_partition.runner import backend as be
from kmeans_partition.runner import bounds as bd
from kmeans_partition.runner import kmeans as km
from kmeans_partition.runner import ties
from kmeans_partition.runner.lloyd import PruningCosts, lloyd_partial, reduce_lloyd
from kmeans_partition.runner.summary import nearest_with_second
from array_support import on  # noqa: F401  (fixture: NumPy, array-api-strict on a non-default device)
from dask_support import blobs


def twin_centroids(x: np.ndarray, pairs: int, seed: int) -> np.ndarray:
    """``pairs`` rows of ``x`` and, after each, a twin a few float32 ulps away: near ties everywhere."""
    rng = np.random.default_rng(seed)
    base = x[rng.choice(len(x), pairs, replace=False)]
    twin = base.copy()
    coords = rng.integers(x.shape[1], size=(pairs, 3))
    for i in range(pairs):
        for j in coords[i]:
            twin[i, j] = np.nextafter(twin[i, j], np.float32(2.0) if i % 2 else np.float32(-2.0))
    return np.stack([base, twin], axis=1).reshape(2 * pairs, x.shape[1])


def exact_labels(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The float64 argmin (lowest index on ties), computed by broadcasting, not by `ties`."""
    d = ((x.astype(np.float64)[:, None, :] - c.astype(np.float64)[None]) ** 2).sum(-1)
    return d.argmin(axis=1).astype(np.int32)


def data(n=3000, d=48, pairs=20, seed=5):
    x = blobs(n, d, 12, seed=seed, spread=0.3)
    return x, twin_centroids(x, pairs, seed + 1)


def test_float32_alone_gets_near_ties_wrong():
    """Shows the data make the rule matter: plain float32 argmins disagree with the exact ones."""
    x, c = data()
    labels, _ = km.nearest(km.augment_rows(x), km.row_sq_norms(x), km.augment_centroids(c), 4096)
    assert (labels != exact_labels(x, c)).sum() > 10


@pytest.mark.parametrize("batch", [4096, 333, 7])
def test_nearest_labels_are_the_exact_argmin(on, batch):
    x, c = data()
    xa, x_sq = on(km.augment_rows(x)), on(km.row_sq_norms(x))
    labels, dist_sq = km.nearest(xa, x_sq, on(km.augment_centroids(c)), batch, centroids=c)
    host = be.to_host(labels)
    np.testing.assert_array_equal(host, exact_labels(x, c))
    exact = ((x.astype(np.float64) - c[host].astype(np.float64)) ** 2).sum(1)
    np.testing.assert_allclose(be.to_host(dist_sq), exact, atol=1e-5)


def test_subset_products_give_the_labels_of_whole_blocks():
    """`nearest_two` on gathered subsets (the bounded steps' products) + the rule == whole blocks."""
    x, c = data(n=2000)
    xa, x_sq, ca = km.augment_rows(x), km.row_sq_norms(x), km.augment_centroids(c)
    whole, _ = km.nearest(xa, x_sq, ca, 4096, centroids=c)
    rng = np.random.default_rng(9)
    for size in (5, 61, 700):
        rows = np.sort(rng.choice(len(x), size, replace=False))
        block = np.ascontiguousarray(xa[rows])
        lab, first, second, scores = km.nearest_two(block, ca.T, np.empty((size, len(c)), np.float32))
        found = ties.settle_block(block, scores, lab, first, ties.slack(x_sq[rows], c), c, second)
        if found is not None:
            lab[found.rows] = found.labels
        np.testing.assert_array_equal(lab, whole[rows])


def test_bounded_steps_equal_plain_steps_on_near_ties():
    """Lloyd with bounds (subset GEMMs) and without: the same labels and centroids, bit for bit."""
    x, c0 = data(n=4000, pairs=15, seed=21)
    xa, x_sq = km.augment_rows(x), km.row_sq_norms(x)
    keep = PruningCosts(always_bounds_from_k=1)  # bounds every step
    runs, bounded_steps = [], 0
    for pruned in (False, True):
        centroids, previous, drift, labels = c0, None, None, []
        for _ in range(8):
            partial, state = lloyd_partial(xa, x_sq, centroids, 256, previous if pruned else None, drift, keep)
            update = reduce_lloyd([partial], centroids)
            labels.append(state.labels.copy())
            bounded_steps += state.upper is not None and pruned
            previous, drift, centroids = (partial, state), update.drift, update.centroids
        runs.append((labels, centroids))
    for plain, bounded in zip(*[r[0] for r in runs]):
        np.testing.assert_array_equal(bounded, plain)
    np.testing.assert_array_equal(runs[1][1], runs[0][1])
    assert np.array_equal(runs[0][0][0], exact_labels(x, c0))
    assert bounded_steps == 7


def test_assign_labels_and_second_with_near_ties(on):
    x, c = data(n=1500)
    labels, _, second = nearest_with_second(on(km.augment_rows(x)), on(km.row_sq_norms(x)),
                                            on(km.augment_centroids(c)), 500, c)
    labels, second = be.to_host(labels), be.to_host(second)
    np.testing.assert_array_equal(labels, exact_labels(x, c))
    assert (second != labels).all()
    d = ((x.astype(np.float64)[:, None, :] - c.astype(np.float64)[None]) ** 2).sum(-1)
    d[np.arange(len(x)), labels] = np.inf
    # the second is the exact runner-up wherever the best two are near ties (twins)
    assert (second == d.argmin(axis=1)).mean() > 0.99


def test_farthest_ranks_by_exact_values_whatever_the_rounding():
    rng = np.random.default_rng(3)
    exact = np.round(rng.random(500) * 50, 0) + rng.random(500) * 1e-4  # clusters of near-equal values
    noise = 1e-3
    reference = np.lexsort((np.arange(500), -exact))[:16]
    for trial in range(5):
        computed = (exact + rng.uniform(-noise, noise, 500)).astype(np.float32)
        known = rng.random(500) < 0.5
        upper = computed + noise
        chosen, values = bd.farthest(np.where(known, computed, np.nan).astype(np.float32), known.copy(), upper, 16,
                                     lambda rows: computed[rows], exact=lambda rows: exact[np.asarray(rows)],
                                     slack=2 * noise)
        np.testing.assert_array_equal(chosen, reference)
        np.testing.assert_array_equal(values, exact[reference])


def test_exact_sq_does_not_depend_on_the_other_pairs():
    rng = np.random.default_rng(4)
    x, c = rng.standard_normal((5000, 384)).astype(np.float32), rng.standard_normal((5000, 384)).astype(np.float32)
    every = ties.exact_sq(x, c)
    for rows in (np.arange(3), np.arange(4990, 5000), rng.choice(5000, 777, replace=False)):
        np.testing.assert_array_equal(ties.exact_sq(x[rows], c[rows]), every[rows])


def test_lloyd_step_does_not_depend_on_the_block_size():
    x, c = data(n=3000)
    xa, x_sq = km.augment_rows(x), km.row_sq_norms(x)
    big, state_big = lloyd_partial(xa, x_sq, c, 4096)
    small, state_small = lloyd_partial(xa, x_sq, c, 7)
    np.testing.assert_array_equal(state_small.labels, state_big.labels)
    np.testing.assert_array_equal(small.sums, big.sums)
    np.testing.assert_array_equal(small.far_dist, big.far_dist)


def test_farthest_with_many_identical_rows_is_exact_and_chunked(monkeypatch):
    """Duplicates tie for the farthest place: every one is ranked exactly, a chunk at a time."""
    monkeypatch.setattr(ties, "EXACT_CHUNK", 16)
    rng = np.random.default_rng(8)
    x = np.repeat(blobs(3, 8, 1, seed=2), [5, 200, 5], axis=0)  # 200 copies of one row
    x = x[rng.permutation(len(x))]
    c = blobs(4, 8, 1, seed=9)
    xa, x_sq = km.augment_rows(x), km.row_sq_norms(x)
    partial, state = lloyd_partial(xa, x_sq, c, 64)
    exact = ((x.astype(np.float64) - c[state.labels].astype(np.float64)) ** 2).sum(1)
    reference = np.lexsort((np.arange(len(x)), -exact))[:len(partial.far_dist)]
    np.testing.assert_array_equal(partial.far_dist, exact[reference])
    np.testing.assert_array_equal(partial.far_rows, x[reference])
