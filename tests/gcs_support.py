"""A real GCS protocol server for tests: gcp-storage-emulator (pure Python) on 127.0.0.1.

`gcs_server(bucket)` is a context manager yielding ``(endpoint_url, storage_options)``; the
options work for gcsfs (and so for any fsspec ``gs://`` URI): the emulator's endpoint and
anonymous access, both on the `credentials` allowlist. The server runs as a subprocess of
this process, in memory, on a free port, and is stopped by its own process id on exit.
"""

from __future__ import annotations

import contextlib
import json
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


class _PreconditionProxy:
    """Forwards every request to the emulator; requests carrying ``ifGenerationMatch`` (uploads and
    deletes of an object) are checked first against the object's current generation and answered
    412 when it differs (0: the object must not exist), one at a time.

    gcp-storage-emulator ignores GCS preconditions (a second ``ifGenerationMatch=0`` upload
    replaces the object); this stands in for the server side of them, per the JSON API's rules.
    """

    def __init__(self, upstream: str):
        import http.server
        import threading

        self.upstream = upstream
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, data = proxy.forward(self.command, self.path, dict(self.headers), body)
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _send(self, method: str, path: str, headers: dict, body: bytes):
        import urllib.error

        headers = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")}
        request = urllib.request.Request(self.upstream + path, data=body or None, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, reply.getheaders(), reply.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers.items(), err.read()

    def _generation(self, bucket: str, name: str) -> str:
        from urllib.parse import quote

        status, _, data = self._send("GET", f"/storage/v1/b/{quote(bucket)}/o/{quote(name, safe='')}", {}, b"")
        return json.loads(data)["generation"] if status == 200 else "0"

    def forward(self, method: str, path: str, headers: dict, body: bytes):
        from urllib.parse import parse_qs, unquote, urlsplit

        parts = urlsplit(path)
        wanted = parse_qs(parts.query).get("ifGenerationMatch")
        if not wanted:
            return self._send(method, path, headers, body)
        segments = parts.path.split("/")  # .../b/<bucket>/o[/<object>]
        bucket = unquote(segments[segments.index("b") + 1])
        name = parse_qs(parts.query).get("name", [None])[0]
        if name is None:
            tail = parts.path.split("/o/", 1)
            if len(tail) == 2:
                name = unquote(tail[1])
            else:  # a multipart upload: the name is in the JSON part of the body
                start = body.index(b"{")
                name = json.JSONDecoder().raw_decode(body[start:].decode())[0]["name"]
        with self.lock:  # check and write as one step, like the real service
            if self._generation(bucket, name) != wanted[0]:
                error = {"error": {"code": 412, "message": "Precondition Failed"}}
                return 412, [("Content-Type", "application/json")], json.dumps(error).encode()
            return self._send(method, path, headers, body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def gcs_server_with_preconditions(bucket: str = "bucket") -> Iterator[tuple[str, dict]]:
    """`gcs_server` behind `_PreconditionProxy`: the options point gcsfs at the proxy."""
    with gcs_server(bucket) as (url, _):
        proxy = _PreconditionProxy(url)
        try:
            yield proxy.url, {"endpoint_url": proxy.url, "token": "anon"}
        finally:
            proxy.close()
