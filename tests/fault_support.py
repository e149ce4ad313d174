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

# Manifest keys that differ between two identical runs: when, how long, where, and which workers.
VARYING_KEYS = ("created", "timings", "manifest_path", "centroids_path", "report_path", "engine")

#: phase -> (progress event after which to watch, its count, task name to kill during the phase).
PHASES = {
    "read": ("reading", 1, "load_partition"),
    "init": ("initialising", 1, "nearest_candidate"),
    "lloyd": ("iteration", 2, "lloyd_steps"),
    "assign": ("assigning", 1, "assign_partition"),
    "write": ("writing", 1, "write_group"),
}

DASK = str(Path(sys.executable).with_name("dask"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaskProcesses:
    """A `dask scheduler` and `dask worker` processes on 127.0.0.1 (no nanny: a SIGKILL ends a
    worker for good); `replenish` starts new workers in place of killed ones."""

    def __init__(self, tmp: Path, scheduler_env: Optional[dict] = None):
        self.tmp = tmp
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.log = open(tmp / "dask.log", "ab")
        self.started = 0
        self.workers: dict[str, subprocess.Popen] = {}  # the live ones, by name
        port = self.address.rsplit(":", 1)[1]
        self.scheduler = self._popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", port, "--dashboard-address", ":0", "--no-show"],
            {**self.env, **(scheduler_env or {})},
        )

    def _popen(self, args: list[str], env: Optional[dict] = None) -> subprocess.Popen:
        return subprocess.Popen(args, stdout=self.log, stderr=self.log, env=env or self.env)

    def replenish(self, n: int) -> None:
        """Start workers until `n` live ones were started (a killed one is dropped from `workers`)."""
        self.workers = {name: p for name, p in self.workers.items() if p.poll() is None}
        while len(self.workers) < n:
            name = f"w{self.started}"
            self.started += 1
            self.workers[name] = self._popen(
                [DASK, "worker", self.address, "--name", name, "--nthreads", "1", "--no-nanny",
                 "--host", "127.0.0.1", "--no-dashboard", "--local-directory", str(self.tmp / name)]
            )

    def close(self) -> None:
        procs = [*self.workers.values(), self.scheduler]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.log.close()


@contextmanager
def dask_processes(n_workers: int, tmp: Path, scheduler_env: Optional[dict] = None):
    """Yields a `DaskProcesses` with `n_workers` started; every process started here is ended here."""
    procs = DaskProcesses(tmp, scheduler_env)
    try:
        procs.replenish(n_workers)
        yield procs
    finally:
        procs.close()


def connect(address: str, n_workers: int, timeout: float = 60) -> Client:
    """A client once exactly `n_workers` workers are connected (killed ones gone)."""
    client = Client(address, timeout=timeout)
    deadline = time.monotonic() + timeout
    while len(client.scheduler_info(n_workers=-1)["workers"]) != n_workers:
        if time.monotonic() > deadline:
            client.close()
            raise TimeoutError(f"{n_workers} workers did not connect to {address}")
        time.sleep(0.1)
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
        self.late = False  # the phase ended before a task of it was seen running: killed at its end
        self.lock = threading.Lock()
        self.killed: Optional[str] = None
        self.killed_at: Optional[float] = None

    def on_progress(self, snap: ProgressSnapshot, event: str) -> None:
        if self.killed is not None:
            return
        if self.watcher is not None and event == "stage":  # the next stage began: kill now
            self.late = True
            self.kill()
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
                if self.killed is None and any(key_name(k) == self.task for k in keys):
                    self.kill(addr)
                    return
            time.sleep(0.005)

    def kill(self, victim: Optional[str] = None) -> None:
        with self.lock:
            if self.killed is None:
                self._kill(victim)

    def _kill(self, victim: Optional[str] = None) -> None:
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


class KillInTurn:
    """Progress sink: SIGKILL worker `first` at the first partition assigned (the centroids were
    just sent to every worker; a fresh worker takes its place), then worker `second` when the
    write starts. No worker present when the centroids were sent then survives."""

    def __init__(self, procs: DaskProcesses, first: str, second: str):
        self.procs, self.plan = procs, [("assigned", first), ("stage", second)]
        self.n_workers = len(procs.workers)
        self.killed: list[str] = []

    def on_progress(self, snap: ProgressSnapshot, event: str) -> None:
        if not self.plan or event != self.plan[0][0] or (event == "stage" and snap.stage != "writing"):
            return
        _, name = self.plan.pop(0)
        proc = self.procs.workers[name]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        self.killed.append(name)
        self.procs.replenish(self.n_workers)

    def on_result(self, result) -> None:
        pass

    def close(self) -> None:
        pass


class KillAll:
    """Progress sink: SIGKILL every worker at once at the first `stage` event (as when a node pool
    is preempted), then start as many new ones (unless not `replace`)."""

    def __init__(self, procs: DaskProcesses, stage: str, replace: bool = True):
        self.procs, self.stage, self.replace = procs, stage, replace
        self.killed: list[str] = []

    def on_progress(self, snap: ProgressSnapshot, event: str) -> None:
        if self.killed or event != "stage" or snap.stage != self.stage:
            return
        n_workers = len(self.procs.workers)
        for name, proc in list(self.procs.workers.items()):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            self.killed.append(name)
        if self.replace:
            self.procs.replenish(n_workers)

    def on_result(self, result) -> None:
        pass

    def close(self) -> None:
        pass
