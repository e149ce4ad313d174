"""A real GCS protocol server for tests: gcp-storage-emulator (pure Python) on 127.0.0.1.

`gcs_server(bucket)` is a context manager yielding ``(endpoint_url, storage_options)``; the
options work for gcsfs (and so for any fsspec ``gs://`` URI): the emulator's endpoint and
anonymous access, both on the `credentials` allowlist. The server runs as a subprocess of
this process, in memory, on a free port, and is stopped by its own process id on exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

# gcsfs >= 2025 probes each bucket's type over gRPC first (zonal / hierarchical namespace), which
# the emulator does not serve (a 60 s timeout per bucket): plain JSON API only. Set before gcsfs is
# imported, here and (inherited) in the worker processes a test starts afterwards.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gcp-storage-emulator exited with {process.returncode}")
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"gcp-storage-emulator did not answer on {url} within {timeout:.0f} s")


@contextlib.contextmanager
def gcs_server(bucket: str = "bucket") -> Iterator[tuple[str, dict]]:
    """Start the emulator with `bucket` created; yield (endpoint_url, storage_options)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).with_name("gcp-storage-emulator")), "start", "--host", "127.0.0.1",
               "--port", str(port), "--in-memory", "--default-bucket", bucket]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        _wait_ready(url, process)
        yield url, {"endpoint_url": url, "token": "anon"}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # its own group (start_new_session), nothing else
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
