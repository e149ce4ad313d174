"""Partitions stay with the worker that read them: the clusters this tool starts do not steal work
(`cluster.SCHEDULER_CONFIG`), and a given scheduler that does is reported (real scheduler and
worker processes)."""

import logging
import time

import dask
from distributed import Client, LocalCluster, get_worker

from fault_support import connect, dask_processes
from kmeans_partition.operator.builders import SCHEDULER_SETTINGS_ENV
from kmeans_partition.runner.cluster import local_cluster, warn_if_stealing


def mkdir(path):
    path.mkdir()
    return path


def placed_tasks_run_where_placed(client: Client) -> list[bool]:
    """Occupy one worker, then give it six loosely placed tasks (as `memory_mode.spread` and
    `stage_support.placement` do) while the other is idle: did each run on its placed worker?"""
    def where_run(seconds: float, i: int) -> str:  # nested: pickled by value for worker processes
        time.sleep(seconds)
        return get_worker().address

    busy, idle = sorted(client.scheduler_info()["workers"])
    blocker = client.submit(time.sleep, 2.0, workers=[busy], pure=False)
    placed = [client.submit(where_run, 0.2, i, workers=[busy], allow_other_workers=True, pure=False)
              for i in range(6)]
    blocker.result()
    return [address == busy for address in client.gather(placed)]


def test_the_embedded_cluster_keeps_tasks_with_their_placed_worker():
    with local_cluster(2) as cluster, Client(cluster) as client:
        assert all(placed_tasks_run_where_placed(client))
        assert warn_if_stealing(client, cluster.scheduler_address) is False


def test_the_control_a_stealing_scheduler_moves_placed_tasks_to_the_idle_worker():
    with dask.config.set({"distributed.scheduler.work-stealing": True}):
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
            with Client(cluster) as client:
                assert not all(placed_tasks_run_where_placed(client))


def test_a_given_scheduler_that_steals_is_reported_and_the_operators_settings_turn_it_off(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="kmeans_partition")
    with dask_processes(2, mkdir(tmp_path / "default")) as procs, connect(procs.address, 2) as client:
        assert warn_if_stealing(client, procs.address) is True
    assert "steals work" in caplog.text and "WORK_STEALING=False" in caplog.text
    caplog.clear()
    operator_env = {item["name"]: item["value"] for item in SCHEDULER_SETTINGS_ENV}  # the DaskCluster's scheduler
    with dask_processes(2, mkdir(tmp_path / "operator"), operator_env) as procs, connect(procs.address, 2) as client:
        assert warn_if_stealing(client, procs.address) is False
        assert all(placed_tasks_run_where_placed(client))
    assert "steals work" not in caplog.text


def test_the_next_write_group_goes_to_the_worker_whose_write_just_ended():
    from kmeans_partition.runner.write_tasks import GroupWriter

    with local_cluster(2) as cluster, Client(cluster) as client:
        first, second = sorted(client.scheduler_info()["workers"])
        writer = GroupWriter(client, out=None, storage_options={}, progress=None)
        assert writer.initial_slots() == [{"workers": [a], "allow_other_workers": True} for a in (first, second)]
        for address in (first, second):
            done = client.submit(len, [1, 2], workers=[address], pure=False)
            done.result()
            assert writer.freed_slot(done) == {"workers": [address], "allow_other_workers": True}
