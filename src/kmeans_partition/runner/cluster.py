"""Where the job computes: a given Dask scheduler, or a LocalCluster sized to the machine."""

from __future__ import annotations

import asyncio
import logging
from contextlib import contextmanager
from typing import Iterator, Optional

import dask
from dask.system import CPU_COUNT
from distributed import Client, LocalCluster

from kmeans_partition import settings
from kmeans_partition.runner.worker_memory import WORKER_ENV

log = logging.getLogger("kmeans_partition")

#: Scheduler settings of the clusters this tool starts: the embedded LocalCluster here, the operator's
#: DaskCluster through its scheduler's environment (`operator.builders.SCHEDULER_SETTINGS_ENV`, the same
#: settings; a test checks). No work stealing: the job places each partition's tasks on the worker that
#: read it (`memory_mode.spread`, `stage_support.placement`), loosely, so that they still run after that
#: worker is lost; Dask's stealing moves such tasks to a less busy worker, which then reads partitions
#: that are not its share, or copies them over (an out-of-core partition into memory). With one of two
#: workers at half speed (500k x 384, k=1000; `bench/uneven_load.py`): the faster worker's peak RSS
#: 635-674 MiB with stealing, 570-584 without (share 382); the job 12-30% longer without.
SCHEDULER_CONFIG = {"distributed.scheduler.work-stealing": False}


def scheduler_address(explicit: Optional[str]) -> Optional[str]:
    """The spec's address, else env DASK_SCHEDULER_ADDRESS, else None (local cluster)."""
    return explicit or settings.scheduler_address()


def wait_for_expected_workers(client: Client, expected: Optional[int], timeout: float) -> int:
    """Wait up to `timeout` seconds for `expected` workers; go on with those present, saying so.

    Partitions are planned from the workers present (two per worker), so a run that starts
    before its workers arrive splits its input more coarsely. Returns the workers present."""
    if expected and expected > 1:
        try:
            client.wait_for_workers(expected, timeout=timeout)
        except (TimeoutError, asyncio.TimeoutError):
            present = len(client.scheduler_info(n_workers=-1).get("workers", {}))
            log.warning("%d of the %d requested Dask workers arrived within %gs; going on with %d",
                        present, expected, timeout, present)
    present = len(client.scheduler_info(n_workers=-1).get("workers", {}))
    log.info("%d Dask worker(s) present", present)
    return present


@contextmanager
def dask_client(address: Optional[str], n_workers: Optional[int] = None) -> Iterator[Client]:
    """A client for `address`, or for a LocalCluster with one single-threaded worker process per core.

    Worker processes with one thread each keep BLAS single-threaded per process,
    which is the fastest layout for the blocked GEMMs and keeps results
    independent of thread scheduling.
    """
    address = scheduler_address(address)
    if address:
        log.info("connecting to Dask scheduler %s", address)
        timeout = settings.connect_timeout()  # for a remote scheduler and its workers
        client = Client(address, timeout=timeout)
        try:
            client.wait_for_workers(1, timeout=timeout)
            wait_for_expected_workers(client, settings.expected_workers(), settings.workers_timeout())
            warn_if_stealing(client, address)
            yield client
        finally:
            client.close()
        return
    workers = n_workers or max(1, CPU_COUNT)
    log.info("starting a local Dask cluster with %d worker processes", workers)
    with local_cluster(workers) as cluster, Client(cluster) as client:
        yield client


def local_cluster(n_workers: int, memory_limit=None, silence_logs: int = logging.CRITICAL) -> LocalCluster:
    """`n_workers` single-threaded worker processes started with `worker_memory.WORKER_ENV`, under a
    scheduler with `SCHEDULER_CONFIG` (``memory_limit``: Dask's, per worker). Task errors reach the
    client, which reports them."""
    spawn_env = {**dask.config.get("distributed.nanny.pre-spawn-environ"), **WORKER_ENV}
    # Both read as the scheduler and each nanny start, within this call.
    with dask.config.set({"distributed.nanny.pre-spawn-environ": spawn_env, **SCHEDULER_CONFIG}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                            memory_limit="auto" if memory_limit is None else memory_limit,
                            silence_logs=silence_logs)


def warn_if_stealing(client: Client, address: str) -> bool:
    """Log a warning when the given scheduler steals work (see `SCHEDULER_CONFIG`); True if it does.
    A scheduler that refuses to run the check (``run_on_scheduler``) is left unchecked."""
    try:
        stealing = bool(client.run_on_scheduler(_steals))
    except Exception as err:  # noqa: BLE001 - e.g. a scheduler that does not unpickle functions
        log.info("could not ask scheduler %s whether it steals work: %r", address, err)
        return False
    if stealing:
        log.warning(
            "Dask scheduler %s steals work: under uneven load a worker may take partitions that are not "
            "its share (memory above the plan; out-of-core partitions copied into memory). Start it with "
            "DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING=False (the operator's clusters are).", address)
    return stealing


def _steals(dask_scheduler=None) -> bool:
    return "stealing" in dask_scheduler.extensions
