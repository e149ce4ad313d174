"""Test support: an emulated Kubernetes API on 127.0.0.1 and kopf running against it.

- fixture `kube` (function-scoped) -> `KubeHandle`: `.url`, `.kubeconfig`, `.env`,
  `.emulator` (the `RealisticKubernetesEmulator`, for kmock reactions/assertions) and
  sync helpers `create/get/list/patch/delete/install_crd` (plain HTTP, like any client).
  Pre-installed: namespace `default`, built-in kinds (`semantics.BUILTIN_RESOURCES`)
  and a minimal DaskCluster CRD (kubernetes.dask.org/v1, status subresource).
- `run_kopf(kube, module, namespace, extra_env)`: kopf for real, in a thread.
- `wait_for(predicate, timeout)`: poll until truthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import aiohttp.test_utils
import pytest
import yaml

from .emulator import RealisticKubernetesEmulator

DASKCLUSTER_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "daskclusters.kubernetes.dask.org"},
    "spec": {
        "group": "kubernetes.dask.org",
        "scope": "Namespaced",
        "names": {"kind": "DaskCluster", "plural": "daskclusters", "singular": "daskcluster",
                  "shortNames": ["daskcluster"]},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            "subresources": {"status": {}},
        }],
    },
}


class KubeAPIError(Exception):
    """A non-2xx answer from the emulated API; `.status` is the HTTP code, `.body` the Status."""

    def __init__(self, status: int, body: Any):
        super().__init__(f"HTTP {status}: {body.get('message') if isinstance(body, dict) else body}")
        self.status, self.body = status, body


def resource_path(api_version: str, plural: str, namespace: Optional[str] = None,
                  name: Optional[str] = None, subresource: Optional[str] = None) -> str:
    parts = ["api", "v1"] if api_version == "v1" else ["apis", *api_version.split("/")]
    if namespace:
        parts += ["namespaces", namespace]
    parts += [plural] + [p for p in (name, subresource) if p]
    return "/" + "/".join(parts)


class EmulatorServer:
    """Runs the emulator behind an aiohttp server in its own thread and event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kube-emulator", daemon=True)
        self.emulator: Optional[RealisticKubernetesEmulator] = None
        self._server: Optional[aiohttp.test_utils.RawTestServer] = None

    def start(self) -> str:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)

    async def _start(self) -> str:
        self.emulator = RealisticKubernetesEmulator()
        self.emulator.register_builtin_resources()
        await self.emulator.__aenter__()
        self._server = aiohttp.test_utils.RawTestServer(self.emulator, host="127.0.0.1", port=0)
        await self._server.start_server()
        return f"http://127.0.0.1:{self._server.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    async def _stop(self) -> None:
        await self.emulator.close_watches()
        await self._server.close()
        await self.emulator.__aexit__(None, None, None)


class KubeHandle:
    """What the `kube` fixture yields: where the API is and a few sync helpers."""

    def __init__(self, url: str, kubeconfig: Path, emulator: RealisticKubernetesEmulator):
        self.url, self.kubeconfig, self.emulator = url, str(kubeconfig), emulator
        self.env = {"KUBECONFIG": self.kubeconfig}

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json", params: Optional[dict] = None) -> Any:
        """One HTTP call; returns the decoded JSON, raises `KubeAPIError` on non-2xx."""
        query = "?" + urllib.parse.urlencode(params) if params else ""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path + query, data=data, method=method,
                                     headers={"Content-Type": content_type, "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                payload = response.read()
        except urllib.error.HTTPError as err:
            payload = err.read()
            try:
                decoded = json.loads(payload)
            except ValueError:
                decoded = payload.decode(errors="replace")
            raise KubeAPIError(err.code, decoded) from None
        return json.loads(payload) if payload else None

    def _discover(self, api_version: str, kind: str) -> dict:
        listing = self.request("GET", "/api/v1" if api_version == "v1" else f"/apis/{api_version}")
        for item in listing["resources"]:
            if item["kind"] == kind and "/" not in item["name"]:
                return item
        raise KubeAPIError(404, {"message": f"no resource for kind {kind} in {api_version}"})

    def create(self, obj: dict) -> dict:
        info = self._discover(obj["apiVersion"], obj["kind"])
        namespace = (obj.get("metadata", {}).get("namespace") or "default") if info["namespaced"] else None
        return self.request("POST", resource_path(obj["apiVersion"], info["name"], namespace), obj)

    def get(self, api_version: str, plural: str, namespace: Optional[str], name: str) -> Optional[dict]:
        return self._unless_missing("GET", resource_path(api_version, plural, namespace, name))

    def list(self, api_version: str, plural: str, namespace: Optional[str] = None,
             label_selector: Optional[str] = None) -> list[dict]:
        params = {"labelSelector": label_selector} if label_selector else None
        return self.request("GET", resource_path(api_version, plural, namespace), params=params)["items"]

    def patch(self, api_version: str, plural: str, namespace: Optional[str], name: str,
              merge_patch: dict, subresource: Optional[str] = None) -> dict:
        path = resource_path(api_version, plural, namespace, name, subresource)
        return self.request("PATCH", path, merge_patch, content_type="application/merge-patch+json")

    def delete(self, api_version: str, plural: str, namespace: Optional[str], name: str) -> Optional[dict]:
        """Delete (background propagation); None if it was already gone."""
        return self._unless_missing("DELETE", resource_path(api_version, plural, namespace, name))

    def _unless_missing(self, method: str, path: str) -> Optional[dict]:
        """The answer, or None when the object does not exist (404)."""
        try:
            return self.request(method, path)
        except KubeAPIError as err:
            if err.status == 404:
                return None
            raise

    def install_crd(self, crd: dict) -> dict:
        return self.request("POST", resource_path("apiextensions.k8s.io/v1", "customresourcedefinitions"), crd)


def write_kubeconfig(path: Path, url: str, namespace: str = "default") -> Path:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "emulator", "user": {}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator",
                                                      "namespace": namespace}}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def emulated_kube(directory: Path) -> Iterator[KubeHandle]:
    """Start an emulator with the standard pre-installed objects; stop it on exit."""
    server = EmulatorServer()
    url = server.start()
    try:
        handle = KubeHandle(url, write_kubeconfig(directory / "kubeconfig", url), server.emulator)
        handle.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
        handle.install_crd(DASKCLUSTER_CRD)
        yield handle
    finally:
        server.stop()


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeHandle]:
    with emulated_kube(tmp_path) as handle:
        yield handle


@contextlib.contextmanager
def run_kopf(kube: KubeHandle, module: str, namespace: str = "default",
             extra_env: Optional[dict] = None, timeout: float = 60, extra_args: tuple[str, ...] = ()) -> Iterator[Any]:
    """Run `kopf run --standalone -n NAMESPACE -m MODULE [EXTRA_ARGS]` in a thread against `kube`.

    Yields kopf's `KopfRunner`; after the block, `.output` holds kopf's log and any
    exception kopf raised is re-raised. The environment (KUBECONFIG plus `extra_env`)
    is process-wide while kopf runs (click's CliRunner isolation). The kubernetes
    client reads KUBECONFIG once at import, so its default kubeconfig path is pointed
    at the emulator too, for handlers that call `kubernetes.config.load_kube_config()`.
    """
    import kubernetes.config.kube_config as kube_config
    from kopf.testing import KopfRunner

    args = ["run", "--standalone", "--verbose", "--namespace", namespace, "-m", module, *extra_args]
    env = {**kube.env, **(extra_env or {})}
    saved_default = kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = kube.kubeconfig
    try:
        with KopfRunner(args, env=env, timeout=timeout) as runner:
            yield runner
    finally:
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = saved_default


def kopf_failures(output: str) -> list[str]:
    """kopf's ERROR/CRITICAL log lines (failed handlers, API errors) in `run_kopf`'s output.

    Tracebacks alone are not counted: other threads' noise can land in the captured stderr."""
    return [line for line in output.splitlines() if "[ERROR" in line or "[CRITICAL" in line]


def wait_for(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.1,
             message: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; return it, or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}; last value: {value!r}")
        time.sleep(interval)
