"""The runner waits for the requested workers (KMP_EXPECTED_WORKERS), then goes on with those present.

Real `dask scheduler` and `dask worker` processes on 127.0.0.1 (started and stopped here by PID)."""

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from kmeans_partition.runner.cluster import dask_client

DASK = str(Path(sys.executable).with_name("dask"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _processes():
    started = []

    def start(*argv):
        started.append(subprocess.Popen([DASK, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True))

    try:
        yield start
    finally:
        for process in reversed(started):
            os.killpg(process.pid, signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _worker(start, address):
    start("worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1", "--no-nanny")


def test_fewer_workers_than_requested_go_on_after_the_timeout_with_a_warning(monkeypatch, caplog):
    address = f"tcp://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("KMP_EXPECTED_WORKERS", "3")
    monkeypatch.setenv("KMP_WORKERS_TIMEOUT", "3")
    with _processes() as start:
        start("scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard")
        _worker(start, address)
        began = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="kmeans_partition"), dask_client(address) as client:
            waited = time.monotonic() - began
            assert len(client.scheduler_info(n_workers=-1)["workers"]) == 1
    assert waited >= 3
    assert "1 of the 3 requested Dask workers arrived within 3s; going on with 1" in caplog.text


def test_workers_arriving_late_are_waited_for(monkeypatch, caplog):
    address = f"tcp://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("KMP_EXPECTED_WORKERS", "2")
    monkeypatch.setenv("KMP_WORKERS_TIMEOUT", "120")
    with _processes() as start:
        start("scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard")
        _worker(start, address)
        late = threading.Timer(3.0, _worker, args=(start, address))
        late.start()
        try:
            began = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="kmeans_partition"), dask_client(address) as client:
                waited = time.monotonic() - began
                assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2
        finally:
            late.join()
    assert 3 <= waited < 120
    assert "requested Dask workers" not in caplog.text


@pytest.mark.parametrize("value", ["-1", "two"])
def test_bad_expected_workers_is_named(monkeypatch, value):
    from kmeans_partition import settings

    monkeypatch.setenv("KMP_EXPECTED_WORKERS", value)
    with pytest.raises(ValueError, match="KMP_EXPECTED_WORKERS must be a whole number"):
        settings.expected_workers()


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_lease_seconds_must_be_positive(monkeypatch, value):
    from kmeans_partition import settings

    monkeypatch.setenv("KMP_LEASE_SECONDS", value)
    with pytest.raises(ValueError, match="KMP_LEASE_SECONDS must be a positive number of seconds"):
        settings.lease_seconds()
