"""The Dask fit against scikit-learn (float64 reference), on a real LocalCluster."""

import gc
import time

import numpy as np
import pytest
from distributed import Client, LocalCluster
from sklearn.cluster import KMeans

from kmeans_partition.runner.fit import DaskKMeans, fit
from kmeans_partition.runner.lloyd import PruningCosts
from dask_support import blobs, dask_client, scatter_partitions  # noqa: F401


def inertia(x, c):
    x64 = x.astype(np.float64)
    return ((x64[:, None, :] - c.astype(np.float64)[None]) ** 2).sum(-1).min(1).sum()


@pytest.mark.parametrize("tol", [0.0, 1e-4])
def test_lloyd_matches_sklearn_from_same_initial_centroids(dask_client, tol):
    x = blobs(3000, 16, 8, seed=0, spread=0.45)
    init = x[np.random.default_rng(1).choice(len(x), 8, replace=False)]
    parts, rows = scatter_partitions(dask_client, x, 5)
    model = DaskKMeans(dask_client, parts, rows, 8, batch=256, random_state=0)
    ours = fit(model, "random", 2.0, 300, km_tol(x, tol), initial_centroids=init)
    ref = KMeans(8, init=init.astype(np.float64), n_init=1, max_iter=300, tol=tol, algorithm="lloyd")
    ref.fit(x.astype(np.float64))
    assert ours.n_iter == ref.n_iter_
    np.testing.assert_allclose(ours.centroids, ref.cluster_centers_, atol=2e-6)
    labels = ((x[:, None, :] - ours.centroids[None]) ** 2).sum(-1).argmin(1)
    assert np.array_equal(labels, ref.labels_)
    assert ours.converged


def km_tol(x, tol):
    return float(np.mean(np.var(x.astype(np.float64), axis=0)) * tol)


def test_kmeans_parallel_inertia_within_one_percent_of_sklearn_kmeanspp(dask_client):
    x = blobs(6000, 32, 25, seed=3, spread=0.35)
    parts, rows = scatter_partitions(dask_client, x, 4)
    model = DaskKMeans(dask_client, parts, rows, 25, batch=1024, random_state=42)
    ours = fit(model, "k-means||", 2.0, 300, km_tol(x, 1e-4))
    ref = KMeans(25, init="k-means++", n_init=1, random_state=42, tol=1e-4).fit(x.astype(np.float64))
    assert inertia(x, ours.centroids) <= 1.01 * ref.inertia_
    assert len(np.unique(ours.centroids, axis=0)) == 25


def test_random_init_draws_distinct_rows(dask_client):
    x = blobs(500, 6, 4, seed=4)
    parts, rows = scatter_partitions(dask_client, x, 3)
    model = DaskKMeans(dask_client, parts, rows, 10, batch=64, random_state=7)
    centroids = model.init_random()
    expected = np.random.default_rng(7).choice(500, 10, replace=False)
    np.testing.assert_array_equal(centroids, x[expected])


def test_kmeans_parallel_with_fewer_distinct_rows_than_k(dask_client):
    base = blobs(3, 4, 3, seed=5)
    x = np.repeat(base, 20, axis=0)
    parts, rows = scatter_partitions(dask_client, x, 2)
    model = DaskKMeans(dask_client, parts, rows, 5, batch=16, random_state=1)
    result = fit(model, "k-means||", 2.0, 50, 0.0)
    assert result.centroids.shape == (5, 4) and np.isfinite(result.centroids).all()
    assert inertia(x, result.centroids) == pytest.approx(0.0, abs=1e-6)


def test_same_result_whatever_the_number_of_workers(dask_client):
    x = blobs(4000, 8, 12, seed=6, spread=0.5)
    runs = []
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as one, Client(one) as solo:
        for client in (dask_client, solo):
            parts, rows = scatter_partitions(client, x, 6)
            model = DaskKMeans(client, parts, rows, 12, batch=300, random_state=11)
            runs.append(fit(model, "k-means||", 2.0, 100, 0.0))
    assert runs[0].n_iter == runs[1].n_iter
    np.testing.assert_array_equal(runs[0].centroids, runs[1].centroids)


def test_a_step_keeps_each_workers_bounds_but_no_partial_sums(dask_client):
    """After a step the workers hold each partition's bounds (one future per worker group) and no
    k x d partial sums: held on as the next step's input they would double the partials kept."""
    from kmeans_partition.runner.bounds import RowBounds

    x = blobs(1200, 8, 6, seed=2)
    parts, rows = scatter_partitions(dask_client, x, 4)
    model = DaskKMeans(dask_client, parts, rows, 6, batch=128, random_state=0)

    def keys(dask_worker):
        return list(dask_worker.data)

    before = {key for held_keys in dask_client.run(keys).values() for key in held_keys}  # other tests'
    gc.disable()  # futures must go when their last reference does, not at a garbage collection
    try:
        update, held = model.step_all(x[:6].copy())
        held_after = _partials_held_after_release(dask_client, before)
    finally:
        gc.enable()
    assert held_after == 0
    groups = dask_client.gather(held)
    holders = {address for addresses in dask_client.who_has(parts).values() for address in addresses}
    assert len(groups) == len(model.groups) == len(holders)
    assert all(isinstance(b, RowBounds) for group in groups for b in group)
    assert sum(len(b.labels) for group in groups for b in group) == len(x) and update.centroids.shape == (6, 8)



def _partials_held(dask_worker, before):
    from kmeans_partition.runner.lloyd import LloydPartial

    values = [v for key, v in list(dask_worker.data.items()) if key not in before]
    return sum(isinstance(v, LloydPartial) or (isinstance(v, tuple) and isinstance(v[0], dict)) for v in values)


def _partials_held_after_release(client, before) -> int:
    """Lloyd partials (or group results holding them) in the workers' memory, new since ``before``,
    once the client's releases reached the workers (polled up to 10 s)."""
    deadline = time.monotonic() + 10
    while sum(client.run(_partials_held, before=before).values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return sum(client.run(_partials_held, before=before).values())


_HELD_AT_COMBINE: list = []


def _counting_combine(left, right, keep):
    """`combine_partials`, noting how many distinct partials the (in-process) worker holds."""
    from distributed import get_worker

    from kmeans_partition.runner.lloyd import LloydPartial
    from kmeans_partition.runner.tree_reduce import combine_partials

    data = list(get_worker().data.values())
    alive = {id(v) for v in data if isinstance(v, LloydPartial)}
    alive |= {id(v[0]) for v in data if isinstance(v, tuple) and v and isinstance(v[0], LloydPartial)}
    _HELD_AT_COMBINE.append(len(alive))
    return combine_partials(left, right, keep)


def test_a_worker_reduces_its_partitions_partials_in_its_step_task(monkeypatch):
    """One task per worker and iteration steps its partitions and combines their partials as they
    are made: no partial waits in the worker's Dask memory at any combine (with a task per
    partition, a worker held several, up to one per partition before the reduction ran early)."""
    from kmeans_partition.runner import group_tasks

    monkeypatch.setattr(group_tasks, "combine_partials", _counting_combine)
    _HELD_AT_COMBINE.clear()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        x = blobs(4000, 8, 6, seed=3)
        parts, rows = scatter_partitions(client, x, 24)
        model = DaskKMeans(client, parts, rows, 6, batch=128, random_state=0)
        result = fit(model, "random", 2.0, 3, 0.0, initial_centroids=x[:6].copy())
    assert result.n_iter == 3 and len(_HELD_AT_COMBINE) == 3 * 23 and len(model.groups) == 1
    assert max(_HELD_AT_COMBINE) == 0, _HELD_AT_COMBINE


def test_a_step_drops_the_bounds_it_used_and_keeps_their_labels(dask_client):
    """A worker's task frees each partition's last bounds once its step is done (two sets of a
    worker's bounds lived to the end of the task); the labels stay for a redone step's count."""
    k = PruningCosts().always_bounds_from_k  # bounds every step (below, only where they pay)
    x = blobs(2000, 8, 6, seed=2)
    parts, rows = scatter_partitions(dask_client, x, 4)
    model = DaskKMeans(dask_client, parts, rows, k, batch=128, random_state=0)
    first, held1 = model.step_all(x[:k].copy())
    second, held2 = model.step_all(first.centroids, held1, first.drift)
    before = [b for group in dask_client.gather(held2) for b in group]
    assert all(b.upper is not None and b.lower is not None for b in before)  # the second step made bounds
    model.step_all(second.centroids, held2, second.drift)
    after = [b for group in dask_client.gather(held2) for b in group]
    assert all(b.upper is None and b.lower is None and b.assigned_lower is None for b in after)
    for old, new in zip(before, after):
        np.testing.assert_array_equal(old.labels, new.labels)
