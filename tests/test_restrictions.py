"""Loose worker restrictions after every worker is lost (`runner/restrictions.py`): a task placed
on a worker that died, with no worker left at that moment, runs on a worker that joins later."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from distributed import Client
from distributed.protocol.pickle import dumps

from kmeans_partition.runner import restrictions
from kmeans_partition.runner.restrictions import ForgetLostWorkers, drop_workers
from fault_support import connect, dask_processes


def task(workers, loose=True):
    return SimpleNamespace(worker_restrictions=set(workers) if workers is not None else None,
                           loose_restrictions=loose)


def test_drop_workers_drops_only_the_lost_address_from_loose_restrictions():
    one, two, strict, other, free = task({"a"}), task({"a", "b"}), task({"a"}, loose=False), task({"b"}), task(None)
    assert drop_workers([one, two, strict, other, free], lambda address: address == "a") == 2
    assert one.worker_restrictions is None  # nothing left: any worker
    assert two.worker_restrictions == {"b"}
    assert strict.worker_restrictions == {"a"}  # strict: the user asked for that worker only
    assert other.worker_restrictions == {"b"} and free.worker_restrictions is None


def test_the_plugin_reaches_a_scheduler_without_our_package():
    """Sent by value: the scheduler unpickles it with `kmeans_partition` impossible to import."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(restrictions)
    try:
        payload = dumps(ForgetLostWorkers())
    finally:
        cloudpickle.unregister_pickle_by_value(restrictions)
    code = (
        "import sys, pickle\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'kmeans_partition': raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "plugin = pickle.loads(sys.stdin.buffer.read())\n"
        "from distributed.diagnostics.plugin import SchedulerPlugin\n"
        "assert isinstance(plugin, SchedulerPlugin) and plugin.idempotent\n"
        "t = type('T', (), {'worker_restrictions': {'x'}, 'loose_restrictions': True})()\n"
        "plugin.remove_worker(type('S', (), {'tasks': {'k': t}})(), 'x')\n"
        "assert t.worker_restrictions is None\n"
        "u = type('T', (), {'worker_restrictions': {'y', 'z'}, 'loose_restrictions': True})()\n"
        "plugin.update_graph(type('S', (), {'tasks': {'u': u}, 'workers': {'z': 0}})(), tasks=['u', 'absent'])\n"
        "assert u.worker_restrictions == {'z'}\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, timeout=60)
    assert done.stdout.strip() == b"ok", done.stderr.decode()[-2000:]


@pytest.mark.parametrize("installed", [True, False])
def test_a_placed_task_runs_on_a_new_worker_after_every_worker_died(tmp_path, installed):
    """Without the plugin the task waits forever (Dask's ``no-worker`` state); with it, it runs."""
    with dask_processes(1, tmp_path) as procs, connect(procs.address, 1) as client:
        if installed:
            assert restrictions.register(client)
        (address,) = client.scheduler_info()["workers"]
        future = client.submit(time.sleep, 1.0, workers=[address], allow_other_workers=True, pure=False)
        deadline = time.monotonic() + 30
        while not client.processing().get(address) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.processing().get(address), "the task never ran on its worker"
        (proc,) = procs.workers.values()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        procs.replenish(1)
        if installed:
            assert future.result(timeout=60) is None  # ran: time.sleep's result
        else:  # the Dask behaviour the plugin works around (distributed is not pinned)
            try:
                future.result(timeout=3)
            except TimeoutError:
                assert client.sync(client.scheduler.get_task_status, keys=[future.key])[future.key] == "no-worker"
            else:
                pytest.skip("this distributed runs the task without the plugin: restrictions.py may go")


def test_a_task_placed_on_a_worker_already_gone_runs_on_a_later_worker(tmp_path):
    """A stale placement (the worker died before the submit, none is left): runs once one joins."""
    with dask_processes(1, tmp_path) as procs, connect(procs.address, 1) as client:
        assert restrictions.register(client)
        (address,) = client.scheduler_info()["workers"]
        (proc,) = procs.workers.values()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while client.scheduler_info()["workers"] and time.monotonic() < deadline:
            time.sleep(0.05)
        future = client.submit(time.sleep, 0.1, workers=[address], allow_other_workers=True, pure=False)
        procs.replenish(1)
        assert future.result(timeout=60) is None


def test_a_scheduler_refusing_the_plugin_gets_a_warning_not_a_failure(caplog):
    class Refusing:  # a client whose scheduler does not accept pickled plugins
        def register_plugin(self, plugin, name=None):
            raise RuntimeError("pickled plugins are disabled")

    with caplog.at_level("WARNING", logger="kmeans_partition"):
        assert restrictions.register(Refusing()) is False
    assert "pickled plugins are disabled" in caplog.text and "every worker is lost at once" in caplog.text
