"""Bound-pruned Lloyd steps against the full computation and float64 distances."""

import os
import subprocess
import sys

import numpy as np
import pytest

from kmeans_partition.runner import bounds as bd
from kmeans_partition.runner import kmeans as km
from kmeans_partition.runner.lloyd import LloydReduction, PruningCosts, lloyd_partial, reduce_lloyd
from array_support import on  # noqa: F401  (fixture: NumPy, array-api-strict on a non-default device)
from dask_support import blobs


def run_steps(x, centroids, steps, batch, pruned, costs=PruningCosts(), on=np.asarray):
    """Lloyd steps on one partition (rows moved by ``on``); yields (centroids used, partial, bounds) per step."""
    xa, x_sq = on(km.augment_rows(x)), on(km.row_sq_norms(x))
    previous, drift = None, None
    for _ in range(steps):
        partial, bounds = lloyd_partial(xa, x_sq, centroids, batch, previous if pruned else None, drift, costs)
        yield centroids, partial, bounds
        update = reduce_lloyd([partial], centroids)
        previous, drift, centroids = (partial, bounds), update.drift, update.centroids


def true_distances(x, c):
    return np.sqrt(((x.astype(np.float64)[:, None, :] - c.astype(np.float64)[None]) ** 2).sum(-1))


@pytest.mark.parametrize("k,batch,costs", [(40, 97, PruningCosts()), (3, 1000, PruningCosts(always_bounds_from_k=1)),
                                           (1, 50, PruningCosts(always_bounds_from_k=1))])
def test_pruned_steps_equal_full_steps(k, batch, costs):
    """(Below 10 clusters bounds never pay for their upkeep by default: there they are forced.)"""
    x = blobs(3000, 16, 12, seed=11, spread=0.25)
    c0 = x[np.random.default_rng(12).choice(len(x), k, replace=False)]
    full = list(run_steps(x, c0, 12, batch, pruned=False))
    pruned = list(run_steps(x, c0, 12, batch, pruned=True, costs=costs))
    last_labels = None
    for (c_f, p_f, b_f), (c_p, p_p, b_p) in zip(full, pruned):
        np.testing.assert_array_equal(c_p, c_f)
        np.testing.assert_array_equal(b_p.labels, b_f.labels)
        np.testing.assert_array_equal(p_p.sums, p_f.sums)
        np.testing.assert_array_equal(p_p.far_dist, p_f.far_dist)  # exact distances (ties.py)
        np.testing.assert_array_equal(p_p.far_rows, p_f.far_rows)
        changed = -1 if last_labels is None else int((last_labels != b_f.labels).sum())
        assert p_p.n_changed == changed
        last_labels = b_f.labels
        assert p_p.inertia == pytest.approx(p_f.inertia, rel=1e-9)
    recomputed = [p.n_recomputed for _, p, _ in pruned[1:]]
    assert min(recomputed) < 0.5 * len(x), recomputed  # the bounds did skip rows
    assert all(p.n_recomputed == len(x) for _, p, _ in full)


def test_bounds_hold_for_exact_distances(on):
    keep_bounds = PruningCosts(always_bounds_from_k=1)  # bounds every step
    x = blobs(2000, 24, 10, seed=13, spread=0.4)
    c0 = x[np.random.default_rng(14).choice(len(x), 30, replace=False)]
    checked = 0
    for centroids, _, bounds in run_steps(x, c0, 10, 128, pruned=True, costs=keep_bounds, on=on):
        if bounds.upper is None:  # a step that kept no bounds (the first one)
            continue
        checked += 1
        labels, upper, lower = on.check(bounds.labels), on.check(bounds.upper), on.check(bounds.lower)
        dist = true_distances(x, centroids)
        rows = np.arange(len(x))
        own = dist[rows, labels]
        dist[rows, labels] = np.inf
        assert (upper >= own).all()
        assert (on.check(bounds.assigned_lower) <= own).all()
        assert (lower <= dist.min(axis=1)).all()
    assert checked >= 8


def test_steps_without_bounds_when_pruning_does_not_pay(on):
    never_pays = PruningCosts(upkeep=1e9)  # the sample never predicts enough settled rows
    x = blobs(2000, 16, 10, seed=19, spread=0.25)
    c0 = x[np.random.default_rng(20).choice(len(x), 20, replace=False)]
    full = list(run_steps(x, c0, 14, 256, pruned=False))
    pruned = list(run_steps(x, c0, 14, 256, pruned=True, costs=never_pays, on=on))
    for (c_f, _, b_f), (c_p, _, b_p) in zip(full, pruned):
        np.testing.assert_array_equal(c_p, c_f)
        np.testing.assert_array_equal(on.check(b_p.labels), b_f.labels)
    assert all(b.upper is None and b.sample is not None for _, _, b in pruned)  # never a bounds step
    assert sum(p.n_recomputed for _, p, _ in pruned) == 14 * len(x)


def test_a_wrong_prediction_backs_off(monkeypatch):
    """When the sample promises settled rows the bounds then do not deliver, the steps back off:
    1, 2, 4 ... (at most ``max_backoff``) plain steps before the sample is asked again."""
    x = blobs(2000, 16, 10, seed=19, spread=0.25)
    c0 = x[np.random.default_rng(20).choice(len(x), 20, replace=False)]  # k = 20
    monkeypatch.setattr(bd.BoundsSample, "settled_fraction", lambda *args: np.inf)

    def kept(costs):
        return ["plain" if b.upper is None else "bounds" for _, _, b in run_steps(x, c0, 14, 256, True, costs)]

    assert kept(PruningCosts(upkeep=1e9))[:8] == ["plain", "bounds", "bounds", "plain", "bounds", "bounds",
                                                  "plain", "plain"]
    pairs = ["bounds", "bounds", "plain", "plain"]  # compute + try, then at most 2 plain steps
    capped = kept(PruningCosts(upkeep=1e9, max_backoff=2))
    assert capped == ["plain", "bounds", "bounds", "plain"] + pairs * 2 + pairs[:2]
    assert kept(PruningCosts(upkeep=1e9, always_bounds_from_k=20)) == ["plain"] + ["bounds"] * 13


def test_the_sample_predicts_the_settled_share_of_all_rows():
    """`BoundsSample` (1024 of 20,000 rows) against every row's bounds moved by the same drift."""
    x = blobs(20000, 16, 12, seed=3, spread=0.25)
    xa, x_sq = km.augment_rows(x), km.row_sq_norms(x)
    centroids = x[np.random.default_rng(4).choice(len(x), 40, replace=False)]
    keep = PruningCosts(always_bounds_from_k=1)
    partial, state = lloyd_partial(xa, x_sq, centroids, 4096, costs=keep)
    shares = []
    for _ in range(4):
        update = reduce_lloyd([partial], centroids)
        partial, state_next = lloyd_partial(xa, x_sq, update.centroids, 4096, (partial, state), update.drift, keep)
        if state.upper is not None:  # every row's bounds under `centroids`: the truth for this drift
            upper, lower, _ = bd.shifted(state, update.drift)
            truth = float(bd.settled(upper, lower, bd.score_error(x_sq, update.centroids)).mean())
            sample = bd.BoundsSample.of(xa, x_sq, km.augment_centroids(centroids), centroids)
            assert sample.rows.shape[0] <= bd.SAMPLE_ROWS
            shares.append((sample.settled_fraction(x_sq, update.centroids, update.drift), truth))
        centroids, state = update.centroids, state_next
    assert len(shares) == 3 and any(0.1 < truth < 0.95 for _, truth in shares), shares
    for predicted, truth in shares:
        assert abs(predicted - truth) < 0.05, shares


def test_check_costs_change_the_work_never_the_result():
    x = blobs(3000, 16, 12, seed=11, spread=0.25)
    c0 = x[np.random.default_rng(12).choice(len(x), 40, replace=False)]
    full = list(run_steps(x, c0, 12, 97, pruned=False))
    work = {}
    cheap, dear = PruningCosts(gather=0, tighten=0), PruningCosts(gather=1e9, tighten=1e9)
    for name, costs in {"cheap": cheap, "dear": dear}.items():
        pruned = list(run_steps(x, c0, 12, 97, pruned=True, costs=costs))
        for (c_f, _, b_f), (c_p, _, b_p) in zip(full, pruned):
            np.testing.assert_array_equal(c_p, c_f)
            np.testing.assert_array_equal(b_p.labels, b_f.labels)
        work[name] = sum(p.n_recomputed for _, p, _ in pruned)
    assert work["cheap"] < work["dear"] == 12 * len(x)


def test_labels_are_nearest_in_float64_where_no_near_tie(on):
    x = blobs(1500, 20, 8, seed=15)
    c0 = x[:25].copy()
    for centroids, _, bounds in run_steps(x, c0, 8, 64, pruned=True, on=on):
        dist = np.sort(true_distances(x, centroids) ** 2, axis=1)
        clear = dist[:, 1] - dist[:, 0] > 1e-5
        reference = (true_distances(x, centroids) ** 2).argmin(axis=1)
        np.testing.assert_array_equal(on.check(bounds.labels)[clear], reference[clear])


def test_inertia_equals_sum_of_squared_distances(on):
    x = blobs(800, 10, 5, seed=16)
    c = x[:7] * 0.8
    partial, bounds = lloyd_partial(on(km.augment_rows(x)), on(km.row_sq_norms(x)), c, 100)
    reference = (true_distances(x, c).min(axis=1) ** 2).sum()
    assert partial.inertia == pytest.approx(reference, rel=1e-6)


def test_farthest_selects_like_a_full_sort_with_ties():
    rng = np.random.default_rng(17)
    values = rng.integers(0, 50, size=400).astype(np.float32)  # many ties
    known = rng.random(400) < 0.3
    slack = rng.random(400).astype(np.float64) * 5
    upper = values + slack
    reference = np.lexsort((np.arange(400), -values.astype(np.float64)))[:16]
    partial_values = np.where(known, values, np.nan).astype(np.float32)
    computed = []

    def compute(rows):
        computed.append(len(rows))
        return values[rows]

    chosen, chosen_values = bd.farthest(partial_values, known.copy(), upper, 16, compute)
    np.testing.assert_array_equal(chosen, reference)
    np.testing.assert_array_equal(chosen_values, values[reference])
    assert sum(computed) < (~known).sum()  # only rows that could enter the top were computed


def test_most_drifted_and_skipped_shift():
    drift = np.array([0.1, 0.15, 0.2, 0.05] * 16)  # k = 64 -> 2 measured directly
    drift[[1, 40]] = 0.9
    moved = bd.most_drifted(drift)
    np.testing.assert_array_equal(moved, [1, 40])
    bounds = bd.RowBounds(
        np.array([1, 0], dtype=np.int32), np.ones(2, np.float32), np.full(2, 3.0, np.float32), np.ones(2, np.float32)
    )
    upper, lower, assigned_lower = bd.shifted(bounds, drift, moved)
    assert upper[0] >= 1.9 and upper[1] >= 1.1  # own drift added
    assert lower[0] == pytest.approx(3.0 - 0.2, rel=1e-5)  # largest drift outside `moved`
    assert assigned_lower[0] == pytest.approx(0.1, rel=1e-4)


def test_reduction_adds_in_partition_order_whatever_the_arrival():
    x = blobs(900, 8, 4, seed=18)
    c = x[:6].copy()
    xa, x_sq = km.augment_rows(x), km.row_sq_norms(x)
    partials = [lloyd_partial(xa[i::3].copy(), x_sq[i::3].copy(), c, 50)[0] for i in range(3)]
    in_order = reduce_lloyd(partials, c)
    shuffled = LloydReduction(3)
    for i in (2, 0, 1):
        shuffled.add(i, partials[i])
    out_of_order = shuffled.finish(c)
    np.testing.assert_array_equal(out_of_order.centroids, in_order.centroids)
    assert out_of_order.inertia == in_order.inertia
    with pytest.raises(RuntimeError, match="missing"):
        LloydReduction(2).finish(c)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_malloc_relaxed_only_under_the_dask_trim_setting():
    code = "from kmeans_partition.runner.worker_memory import relax_malloc_trim as r; print(r())"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    plain = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    dask_like = subprocess.run(
        [sys.executable, "-c", code], env={**env, "MALLOC_TRIM_THRESHOLD_": "65536"},
        capture_output=True, text=True, check=True,
    )
    assert plain.stdout.strip() == "False"
    assert dask_like.stdout.strip() == "True"
