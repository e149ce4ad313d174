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
            yield client
        finally:
            client.close()
        return
    workers = n_workers or max(1, CPU_COUNT)
    log.info("starting a local Dask cluster with %d worker processes", workers)
    with local_cluster(workers) as cluster, Client(cluster) as client:
        yield client


def local_cluster(n_workers: int, memory_limit=None, silence_logs: int = logging.CRITICAL) -> LocalCluster:
    """`n_workers` single-threaded worker processes started with `worker_memory.WORKER_ENV`
    (``memory_limit``: Dask's, per worker). Task errors reach the client, which reports them."""
    spawn_env = {**dask.config.get("distributed.nanny.pre-spawn-environ"), **WORKER_ENV}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": spawn_env}):  # read as each nanny starts
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                            memory_limit="auto" if memory_limit is None else memory_limit,
                            silence_logs=silence_logs)
