"""A real `dask scheduler` and `dask worker` processes (no nanny: a SIGKILL ends the worker for good),
and a progress sink that SIGKILLs one worker when the job reaches a given event.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from distributed import Client
from dask.utils import key_split

from kmeans_partition.runner.progress import ProgressSnapshot

DASK = str(Path(sys.executable).with_name("dask"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def dask_processes(n_workers: int, tmp: Path):
    """Yields (scheduler address, {worker name: Popen}); every process started here is ended here."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = []
    log = open(tmp / "dask.log", "ab")
    try:
        procs.append(subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0",
             "--no-show"], stdout=log, stderr=log, env=env,
        ))
        workers = {}
        for i in range(n_workers):
            name = f"w{i}"
            workers[name] = subprocess.Popen(
                [DASK, "worker", address, "--name", name, "--nthreads", "1", "--no-nanny",
                 "--host", "127.0.0.1", "--no-dashboard", "--local-directory", str(tmp / name)],
                stdout=log, stderr=log, env=env,
            )
            procs.append(workers[name])
        yield address, workers
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def connect(address: str, n_workers: int, timeout: float = 60) -> Client:
    client = Client(address, timeout=timeout)
    client.wait_for_workers(n_workers, timeout=timeout)
    return client


class KillWorker:
    """Progress sink: SIGKILL the worker holding the most data when `event` first happens.

    ``event``: a stage name ("reading", "initialising", "fitting", "assigning", "writing") or an
    event with a count: ("rows_read", 1), ("iteration", 2), ("assigned", 1), ("rows_written", 1).
    """

    def __init__(self, client: Client, workers: dict, event, count: int = 1, task: Optional[str] = None):
        self.client, self.workers, self.event, self.count, self.task = client, workers, event, count, task
        self.seen = 0
        self.watcher: Optional[threading.Thread] = None
        self.killed: Optional[str] = None
        self.killed_at: Optional[float] = None

    def on_progress(self, snap: ProgressSnapshot, event: str) -> None:
        if self.killed is not None:
            return
        hit = (event == "stage" and snap.stage == self.event) or event == self.event
        if not hit:
            return
        self.seen += 1
        if self.seen == self.count:
            if self.task is None:
                self.kill()
            else:  # kill the first worker seen running a task of that name, from a thread
                self.watcher = threading.Thread(target=self.watch, daemon=True)
                self.watcher.start()

    def watch(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.killed is None and time.monotonic() < deadline:
            for addr, keys in self.client.processing().items():
                if any(key_name(k) == self.task for k in keys):
                    self.kill(addr)
                    return
            time.sleep(0.005)

    def kill(self, victim: Optional[str] = None) -> None:
        info = self.client.scheduler_info(n_workers=-1)["workers"]
        names = {addr: w.get("name") for addr, w in info.items()}
        if victim is None:
            held = self.client.has_what()
            alive = [a for a in names if str(names[a]) in self.workers]
            victim = max(alive, key=lambda a: (len(held.get(a, ())), str(names[a])))
        proc = self.workers[str(names[victim])]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        self.killed, self.killed_at = str(names[victim]), time.perf_counter()

    def on_result(self, result) -> None:
        pass

    def close(self) -> None:
        pass


def key_name(key) -> str:
    return key_split(key)
