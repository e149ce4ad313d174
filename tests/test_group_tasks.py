"""One task per worker group and pass: the grouping, and the task counts of the init and the Lloyd
steps (which once grew with the number of partitions), with results equal whatever the grouping."""

from __future__ import annotations

import collections

from distributed import Client, LocalCluster, get_task_stream
from dask.utils import key_split

from kmeans_partition.runner.fit import DaskKMeans, fit
from kmeans_partition.runner.group_tasks import worker_groups
from dask_support import blobs, scatter_partitions


def test_groups_follow_the_placement_and_keep_unplaced_partitions_apart():
    a, b = {"workers": ["tcp://a"], "allow_other_workers": True}, {"workers": ["tcp://b"], "allow_other_workers": True}
    groups = worker_groups([a, a, {}, b, a, {}, b])
    assert [indices for indices, _ in groups] == [[0, 1, 4], [2], [3, 6], [5]]
    assert [where for _, where in groups] == [a, {}, b, {}]


def _fit_counting_tasks(n_workers: int, n_parts: int, contiguous: bool = True):
    x = blobs(6000, 8, 6, seed=11)
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        parts, rows = scatter_partitions(client, x, n_parts, contiguous)
        model = DaskKMeans(client, parts, rows, 6, batch=256, random_state=4)
        with get_task_stream(client) as stream:
            result = fit(model, "k-means||", 2.0, max_iter=4, tol_abs=0.0)
        names = collections.Counter(key_split(task["key"]) for task in stream.data)
        return result, names, len(model.groups)


def test_a_pass_is_one_task_per_worker_and_the_result_does_not_depend_on_the_grouping():
    one, names_one, groups_one = _fit_counting_tasks(1, 24)
    two, names, groups = _fit_counting_tasks(2, 24)
    assert groups_one == 1 and groups == 2
    passes = 1 + 2  # the first candidate's pass, then one per k-means|| round
    assert names["nearest_candidate"] == passes * groups  # was one per partition and pass: 72
    assert names["oversample"] == names["state_cost"] == 2 * groups
    assert names["lloyd_steps"] == two.n_iter * groups and "lloyd_step" not in names
    # contiguous runs: each worker's partials are combined inside its tasks and a few tasks finish
    # the tree: fewer tasks than partitions per pass (a Lloyd step was 4 per partition)
    assert sum(names.values()) < 24 * (two.n_iter + passes), names
    scattered, _, _ = _fit_counting_tasks(3, 24, contiguous=False)  # any placement: the same result
    for other in (two, scattered):
        assert one.centroids.tobytes() == other.centroids.tobytes()
        assert one.inertia_history == other.inertia_history
