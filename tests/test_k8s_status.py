"""The runner's status sink: throttled merge patches of status.progress/result only."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading

import pytest
import yaml
from aiohttp import web

from kmeans_partition.runner.k8s_status import KubernetesStatusSink, result_status, status_sink_from_env
from kmeans_partition.runner.progress import Progress, ProgressSnapshot

SUMMARY = {
    "n_rows": 1000, "n_clusters": 4, "n_iter": 12, "inertia": 3.5, "converged": True,
    "manifest_path": "s3://b/out/_manifest.json", "centroids_path": "s3://b/out/_centroids.parquet",
    "rows_per_centroid": [100, 400, 250, 250], "output_path": "s3://b/out/",
}


class FakeApiServer:
    """Records PATCH requests on a 127.0.0.1 port; answers `status_code`."""

    def __init__(self, status_code: int = 200):
        self.requests: list[dict] = []
        self.status_code = status_code
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        self.requests.append({"method": request.method, "path": request.path,
                              "content_type": request.headers.get("Content-Type"), "body": json.loads(body or "{}")})
        return web.json_response({"kind": "KMeansPartition"}, status=self.status_code)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self):
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _kubeconfig(tmp_path, port: int) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "test", "user": {"token": "t"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }))
    return str(path)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_result_status_maps_the_summary():
    assert result_status(SUMMARY) == {
        "nRows": 1000, "nIter": 12, "inertia": 3.5, "converged": True,
        "manifest": "s3://b/out/_manifest.json", "centroids": "s3://b/out/_centroids.parquet",
        "clusterSizes": {"min": 100, "median": 250.0, "max": 400},
        "imbalance": 4 * (100**2 + 400**2 + 2 * 250**2) / 1000**2, "largestShare": 0.4,
    }


def test_result_status_carries_the_boundary_share():
    summary = {"rows": 1000, "thresholds": [0.005, 0.01, 0.02], "boundary_rows": [3, 17, 40]}
    status = result_status({**SUMMARY, "summary": summary})
    assert status["boundaryShare"] == 17 / 1000 and status["boundaryMargin"] == 0.01


def test_no_env_means_no_sink():
    assert status_sink_from_env({}) is None
    assert status_sink_from_env({"KMP_NAME": "x"}) is None


def test_throttles_iterations_but_not_stages_or_result():
    sent, clock = [], Clock()
    sink = KubernetesStatusSink(sent.append, min_interval=2.0, clock=clock)
    progress = Progress(sinks=[sink], snapshot=ProgressSnapshot(max_iter=10))
    progress.stage("fitting")
    for i in range(1, 6):
        clock.now += 0.5
        progress.iteration(i, inertia=10.0 / i, shift=0.1)
    clock.now += 0.5  # 3.0s after the stage patch
    progress.iteration(6, inertia=1.0, shift=0.01)
    progress.stage("writing")
    progress.result(SUMMARY)
    stages = [p["progress"]["stage"] for p in sent if "progress" in p]
    assert stages[0] == "fitting" and "writing" in stages and stages[-1] == "done"
    iterations = [p["progress"]["iteration"] for p in sent if p.get("progress", {}).get("stage") == "fitting"]
    assert iterations == [0, 4], iterations  # first stage patch, then one per 2 s
    assert sent[-1]["result"]["nIter"] == 12
    assert all(set(p) <= {"progress", "result"} for p in sent)


def test_close_flushes_a_pending_update():
    sent, clock = [], Clock()
    sink = KubernetesStatusSink(sent.append, min_interval=2.0, clock=clock)
    progress = Progress(sinks=[sink])
    progress.stage("reading", files_total=3)
    progress.file_read(rows=10)
    progress.close()
    assert sent[-1]["progress"]["rowsRead"] == 10


def test_patches_status_subresource_over_http(tmp_path, monkeypatch):
    with FakeApiServer() as server:
        monkeypatch.setenv("KUBECONFIG", _kubeconfig(tmp_path, server.port))
        sink = status_sink_from_env({"KMP_NAME": "docs", "KMP_NAMESPACE": "team-a"})
        assert sink is not None
        progress = Progress(sinks=[sink])
        progress.stage("fitting")
        progress.result(SUMMARY)
        progress.close()
    paths = {r["path"] for r in server.requests}
    assert paths == {"/apis/kmeanspartition.dev/v1alpha1/namespaces/team-a/kmeanspartitions/docs/status"}
    assert all(r["method"] == "PATCH" and r["content_type"] == "application/merge-patch+json" for r in server.requests)
    bodies = [r["body"] for r in server.requests]
    assert all(set(b) == {"status"} and set(b["status"]) <= {"progress", "result"} for b in bodies)
    assert bodies[0]["status"]["progress"]["stage"] == "fitting"
    assert bodies[-1]["status"]["result"]["clusterSizes"] == {"min": 100, "median": 250.0, "max": 400}


def test_api_failures_are_logged_not_raised(tmp_path, monkeypatch, caplog):
    with FakeApiServer(status_code=500) as server:
        monkeypatch.setenv("KUBECONFIG", _kubeconfig(tmp_path, server.port))
        sink = status_sink_from_env({"KMP_NAME": "docs", "KMP_NAMESPACE": "team-a"})
        with caplog.at_level(logging.WARNING, logger="kmeans_partition"):
            sink.on_progress(ProgressSnapshot(stage="fitting"), "stage")
            sink.on_result(SUMMARY)
    assert len(server.requests) == 2
    assert "could not patch" in caplog.text


def test_unreachable_config_gives_no_sink(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert status_sink_from_env({"KMP_NAME": "docs", "KMP_NAMESPACE": "ns"}) is None


@pytest.mark.parametrize("sizes,median", [([5], 5.0), ([1, 2], 1.5)])
def test_cluster_sizes_median(sizes, median):
    assert result_status({**SUMMARY, "rows_per_centroid": sizes})["clusterSizes"]["median"] == median
