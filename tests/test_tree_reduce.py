"""Lloyd partials reduced on the workers in a fixed binary tree by partition index: equal to a
float64 reference, bit-identical across 1, 2 and 3 workers, one k x d total per step to the client.
"""

from __future__ import annotations

import numpy as np
import pytest
from distributed import Client, LocalCluster

from kmeans_partition.runner.fit import DaskKMeans
from kmeans_partition.runner.lloyd import LloydPartial
from kmeans_partition.runner.tree_reduce import ONE_TASK_BYTES, combine_partials, finish_tree
from dask_support import blobs, scatter_partitions

K, N_PARTS, STEPS = 7, 5, 4


class GatherRecorder:
    """A client whose `gather` notes what comes back (the rest is the real client's)."""

    def __init__(self, client: Client):
        self._client, self.gathered = client, []

    def gather(self, futures, *args, **kwargs):
        result = self._client.gather(futures, *args, **kwargs)
        self.gathered.append(result)
        return result

    def __getattr__(self, name):
        return getattr(self._client, name)


def fit_with(n_workers: int, x: np.ndarray, start: np.ndarray):
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        parts, rows = scatter_partitions(client, x, N_PARTS)
        recorder = GatherRecorder(client)
        model = DaskKMeans(recorder, parts, rows, K, batch=256, random_state=0)
        result = model.lloyd(start, max_iter=STEPS, tol_abs=0.0)
        return result, recorder.gathered


def reference_lloyd(x: np.ndarray, start: np.ndarray, steps: int) -> np.ndarray:
    """Plain float64 Lloyd (no empty clusters on this data)."""
    x64, c = x.astype(np.float64), start.astype(np.float64)
    for _ in range(steps):
        labels = np.argmin(((x64[:, None, :] - c[None]) ** 2).sum(axis=2), axis=1)
        c = np.stack([x64[labels == j].mean(axis=0) for j in range(K)])
    return c


@pytest.fixture(scope="module")
def runs():
    x = blobs(3000, 16, K, seed=31, spread=0.4)
    start = x[np.random.default_rng(1).choice(len(x), K, replace=False)]
    return x, start, {n: fit_with(n, x, start) for n in (1, 2, 3)}


def test_equal_to_float64_reference_and_bit_identical_across_worker_counts(runs):
    x, start, by_workers = runs
    one = by_workers[1][0]
    assert one.n_iter == STEPS
    np.testing.assert_allclose(one.centroids, reference_lloyd(x, start, one.n_iter), rtol=0, atol=2e-6)
    for n in (2, 3):
        other = by_workers[n][0]
        assert other.centroids.tobytes() == one.centroids.tobytes(), f"{n} workers"
        assert other.inertia_history == one.inertia_history


def test_client_receives_one_total_per_step(runs):
    _, _, by_workers = runs
    for result, gathered in by_workers.values():
        assert len(gathered) == result.n_iter  # nothing else gathered during Lloyd
        assert all(isinstance(g, LloydPartial) and g.sums.shape == (K, 16) for g in gathered)


def test_tree_pairs_by_index():
    """(0+1)+(2+3), then +4: the order the tree fixes, checked with strings."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        leaves = [client.scatter(s) for s in "abcde"]
        as_leaves = {(0, i): leaf for i, leaf in enumerate(leaves)}
        assert finish_tree(client, 5, as_leaves, lambda a, b: f"({a}{b})").result() == "(((ab)(cd))e)"
        assert finish_tree(client, 1, {(0, 0): leaves[0]}, lambda a, b: a + b) is leaves[0]
        one_task = finish_tree(client, 5, as_leaves, lambda a, b, mark: f"({a}{mark}{b})", node_bytes=1, mark="+")
        assert one_task.result() == "(((a+b)+(c+d))+e)"
        over = finish_tree(client, 5, as_leaves, lambda a, b: f"({a}{b})", node_bytes=ONE_TASK_BYTES)
        assert over.result() == "(((ab)(cd))e)"  # too large for one task: a task per node, same order


def test_combined_far_rows_are_the_overall_farthest_in_partition_order():
    def partial(dist, rows):
        d = np.asarray(dist, dtype=np.float32)
        return LloydPartial(np.zeros((2, 1)), np.zeros(2, np.int64), 0.0, 0, d, np.asarray(rows, np.float32)[:, None])

    left, right = partial([5, 3, 3], [10, 11, 12]), partial([4, 3], [20, 21])
    both = combine_partials(left, right, keep=4)
    assert both.far_dist.tolist() == [5, 4, 3, 3]
    assert both.far_rows[:, 0].tolist() == [10, 20, 11, 12]  # ties: lower partition, then lower row


class ImmediateClient:
    """Runs each submitted function at once; its "future" is the value (enough for the tree's plan)."""

    calls = 0

    def submit(self, func, *args, pure=False, priority=0, **kwargs):
        self.calls += 1
        return func(*args, **kwargs)


def test_workers_partial_trees_finish_to_the_whole_trees_order():
    """Any split of the leaves over workers (runs, alternating, scattered): each worker combines what
    it can (`LocalTree`), the client's plan finishes the rest, and the result is `tree_reduce`'s."""
    from kmeans_partition.runner.tree_reduce import LocalTree, local_nodes

    def pair(a, b):
        return f"({a}{b})"

    def whole_tree(values):  # the documented order, level by level
        while len(values) > 1:
            odd_last = values[len(values) // 2 * 2:]
            values = [pair(values[i], values[i + 1]) for i in range(0, len(values) - 1, 2)] + odd_last
        return values[0]

    rng = np.random.default_rng(0)
    client = ImmediateClient()
    for n in range(1, 41):
        leaves = [chr(48 + i) for i in range(n)]
        whole = whole_tree(leaves)
        for owners in (np.zeros(n, int), np.arange(n) % 2, np.arange(n) * 3 // n, rng.integers(0, 4, n)):
            sources = {}
            for w in np.unique(owners):
                indices = [int(i) for i in np.flatnonzero(owners == w)]
                tree = LocalTree(n, pair)
                for i in indices:
                    tree.add(i, leaves[i])
                assert sorted(tree.nodes) == sorted(local_nodes(n, indices))
                sources.update(tree.nodes)
            assert finish_tree(client, n, sources, pair) == whole, (n, owners)
            client.calls = 0
            assert finish_tree(client, n, sources, pair, node_bytes=1) == whole, (n, owners)  # in one task
            assert client.calls == (1 if len(sources) > 1 else 0)
