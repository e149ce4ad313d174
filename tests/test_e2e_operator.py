"""End to end without a cluster: kopf operator + emulated API + fake kubelet + moto S3.

The operator (kopf, for real) creates the DaskCluster and runner Job; `FakeKubelet`
runs them as real `dask scheduler`/`dask worker`/`kmeans-partition run` processes;
the runner reads and writes a moto S3 bucket and patches the resource's status.
"""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest
import yaml

from kmeans_partition.operator import handlers
from kmeans_partition.runner.sample import write_sample
from kmeans_partition.spec import API_GROUP, API_VERSION, KIND, PLURAL

from k8s.crd_validation import validate_resource
from k8s.harness import kopf_failures, kube, run_kopf, wait_for  # noqa: F401  (fixture)
from k8s.kubelet import DASK, FakeKubelet
from s3_support import DUMMY_ENV, create_bucket

pytestmark = pytest.mark.timeout(240)

CRD_FILE = Path(__file__).resolve().parent.parent / "crds" / f"{PLURAL}.{API_GROUP}.yaml"
RESOURCE = (f"{API_GROUP}/{API_VERSION}", PLURAL, "default")
N_ROWS, N_CLUSTERS = 400, 4


def install_operator_prerequisites(kube) -> None:
    kube.install_crd(yaml.safe_load(CRD_FILE.read_text()))
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-credentials"},
                 "stringData": {key: DUMMY_ENV[key] for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}})


def manifest(name: str, input_path: str, output_path: str, endpoint_url: str) -> dict:
    """A KMeansPartition valid against the CRD (checked in `run_to_the_end`)."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "metadata": {"name": name},
        "spec": {
            "nClusters": N_CLUSTERS, "idField": "id", "embeddingField": "embedding",
            "inputPath": [input_path], "outputPath": output_path, "maxIter": 20,
            "cluster": {"workers": 1},
            "storage": {"secretRef": {"name": "s3-credentials"},
                        "options": {"endpoint_url": endpoint_url, "client_kwargs": {"region_name": "us-east-1"}}},
        },
    }


def run_to_the_end(kube, tmp_path, resource: dict) -> tuple[dict, FakeKubelet]:
    """Apply `resource` with the operator and kubelet running; return its final state."""
    name = resource["metadata"]["name"]
    crd = yaml.safe_load(CRD_FILE.read_text())
    assert validate_resource(resource, crd) == []  # the emulator does no admission: check it here
    handlers.reset_api()  # the operator caches its client; this emulator is new
    with FakeKubelet(kube, "default", tmp_path / "kubelet") as kubelet, \
            run_kopf(kube, "kmeans_partition.operator.handlers") as operator:
        kube.create(resource)

        def finished():
            obj = kube.get(*RESOURCE, name) or {}
            return obj if obj.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

        try:
            final = wait_for(finished, timeout=150, interval=0.5, message=f"{name} to finish")
            wait_for(lambda: not kube.list(DASK, "daskclusters", "default"), timeout=30,
                     message="the DaskCluster to be deleted")
            wait_for(lambda: not kubelet.clusters, timeout=30, message="the Dask processes to stop")
        except AssertionError as err:
            logs = "\n".join(f"--- {pod}\n{kubelet.log(pod)[-2000:]}" for pod in _pod_names(kubelet))
            raise AssertionError(f"{err}\nkubelet errors: {kubelet.errors}\n{logs}") from None
    assert not kubelet.errors, kubelet.errors
    assert not kopf_failures(operator.output), operator.output[-4000:]
    return final, kubelet


def _pod_names(kubelet: FakeKubelet) -> list[str]:
    return sorted(path.stem for path in kubelet.workdir.glob("*.log"))


def test_resource_succeeds_with_partitions_in_the_bucket(kube, s3_server, tmp_path):
    endpoint_url, storage_options = s3_server
    bucket = create_bucket(endpoint_url, "e2e-success")
    write_sample(f"{bucket}/input", rows=N_ROWS, dim=8, clusters=N_CLUSTERS, files=2,
                 storage_options=storage_options)
    install_operator_prerequisites(kube)

    final, kubelet = run_to_the_end(
        kube, tmp_path, manifest("ok", f"{bucket}/input", f"{bucket}/output", endpoint_url))

    status = final["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    assert status["result"]["nRows"] == N_ROWS and status["result"]["nIter"] >= 1
    assert {c["type"]: c["status"] for c in status["conditions"]}["Succeeded"] == "True"
    assert kubelet.stopped_clusters == [status["daskCluster"]]
    scheduler = kubelet.pods[f"{status['daskCluster']}-scheduler"]
    runner = kubelet.pods[f"{status['job']}-0"]
    port = scheduler.argv[scheduler.argv.index('--port') + 1]
    # the whole job ran over mutual TLS: the runner and the workers reached the scheduler on tls://
    assert runner.env["DASK_SCHEDULER_ADDRESS"] == f"tls://127.0.0.1:{port}"
    assert scheduler.argv[scheduler.argv.index("--protocol") + 1] == "tls"
    assert f"Scheduler at:     tls://127.0.0.1:{port}" in kubelet.log(scheduler.name)
    assert "Receive client connection" in kubelet.log(scheduler.name)  # the runner used the cluster
    worker = kubelet.pods[f"{status['daskCluster']}-default-worker-0"]
    assert worker.env["DASK_SCHEDULER_ADDRESS"] == f"tls://127.0.0.1:{port}"  # not the dask operator's tcp://
    assert "Registered to:      tls://127.0.0.1" in kubelet.log(worker.name)
    assert Path(worker.env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"]).read_text().startswith("-----BEGIN CERTIFICATE")
    assert "PRIVATE KEY" in Path(runner.env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"]).read_text()
    local_directory = Path(worker.argv[worker.argv.index("--local-directory") + 1])
    assert local_directory == kubelet.workdir / worker.name / "dask-local"  # the pod's emptyDir
    assert [p.name for p in local_directory.iterdir()] == ["dask-scratch-space"]  # the worker wrote there
    job = kube.get("batch/v1", "jobs", "default", status["job"])
    assert job["status"]["succeeded"] == 1  # kept for its logs (TTL)

    fs = fsspec.filesystem("s3", **storage_options)
    names = {path.rsplit("/", 1)[-1] for path in fs.ls(f"{bucket}/output")}
    partitions = {n for n in names if n.startswith("centroid=")}
    assert "_manifest.json" in names and partitions and partitions <= {f"centroid={i}" for i in range(N_CLUSTERS)}
    manifest_doc = json.loads(fs.cat(f"{bucket}/output/_manifest.json"))
    assert manifest_doc  # written by the runner; its schema is tested with the writer


def test_failing_job_ends_failed_with_the_runner_message(kube, s3_server, tmp_path):
    endpoint_url, _ = s3_server
    bucket = create_bucket(endpoint_url, "e2e-failure")
    install_operator_prerequisites(kube)

    final, kubelet = run_to_the_end(
        kube, tmp_path, manifest("broken", f"{bucket}/does-not-exist", f"{bucket}/output", endpoint_url))

    status = final["status"]
    assert status["phase"] == "Failed", json.dumps(status, indent=1)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and "runner:" in failed["message"]
    assert "does-not-exist" in failed["message"]  # the runner's own words, via the termination message
    pods = kube.list("v1", "pods", "default", label_selector=f"job-name={status['job']}")
    terminated = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] != 0 and "does-not-exist" in terminated["message"]
    assert kubelet.stopped_clusters == [status["daskCluster"]]
