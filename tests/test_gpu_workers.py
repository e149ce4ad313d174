"""Worker processes the operator starts: dask-cuda flags, thread and TF32 env, /dev/shm (pure builders),
and a real Nanny keeping the BLAS thread count the operator sets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kmeans_partition.operator import builders as B
from kmeans_partition.operator import workers as W
from kmeans_partition.operator import security as SEC
from kmeans_partition.spec import SpecError, parse_resource_spec

BASE = {
    "nClusters": 8, "idField": "id", "embeddingField": "embedding",
    "inputPath": ["s3://bucket/in/"], "outputPath": "s3://bucket/out/",
}


def _spec(cluster: dict, **top):
    return parse_resource_spec({**BASE, **top, "cluster": cluster})


def _worker_pod(spec):
    return B.build_dask_cluster("docs", "ns", "uid", spec)["spec"]["worker"]["spec"]


def _worker(spec):
    (container,) = _worker_pod(spec)["containers"]
    return container


def _env(container) -> dict:
    """The worker's env less Dask's own (TLS files, scheduler address: tests/test_tls.py)."""
    return {item["name"]: item["value"] for item in container.get("env", []) if not item["name"].startswith("DASK_")}


def _names(items) -> set:
    return {item["name"] for item in items}


def _flag(command: list[str], name: str):
    return command[command.index(name) + 1] if name in command else None


def test_one_gpu_per_worker():
    spec = _spec({"gpusPerWorker": 1, "resources": {"worker": {"requests": {"cpu": "8", "memory": "64Gi"}}}})
    worker = _worker(spec)
    assert worker["command"] == [
        "dask-cuda-worker", "--name", "$(DASK_WORKER_NAME)", "--nthreads", "8", "--dashboard-address", "8788",
        "--rmm-async", "--set-rmm-allocator-for-libs", "cupy", "--device-memory-limit", "0.8",
        "--local-directory", SEC.DASK_LOCAL_DIR,
    ]
    assert _env(worker) == {"OMP_NUM_THREADS": "8", "OPENBLAS_NUM_THREADS": "8", "MKL_NUM_THREADS": "8",
                            "CUPY_TF32": "0", "ARROW_DEFAULT_MEMORY_POOL": "system"}
    # one GPU: no NCCL peers in the pod, so no /dev/shm (only the scratch emptyDirs of pod security)
    assert W.SHM_VOLUME not in _names(worker["volumeMounts"]) | _names(_worker_pod(spec)["volumes"])


def test_four_gpus_per_worker_share_the_cpus_and_get_a_memory_shm():
    spec = _spec({"gpusPerWorker": 4, "resources": {"worker": {"requests": {"cpu": "18"}}},
                  "gpu": {"rmmPoolSize": "40Gi", "deviceMemoryLimit": "70Gi", "shmSize": "2Gi"}})
    worker = _worker(spec)
    command = worker["command"]
    assert _flag(command, "--nthreads") == "4"  # 18 CPUs / 4 GPU processes, rounded down
    assert "--rmm-async" in command and _flag(command, "--rmm-pool-size") == "40GiB"
    assert _flag(command, "--device-memory-limit") == "70GiB"
    assert _flag(command, "--set-rmm-allocator-for-libs") == "cupy"
    assert {k: v for k, v in _env(worker).items() if k.endswith("_NUM_THREADS")} == dict.fromkeys(W.BLAS_THREAD_VARS, "4")
    assert worker["resources"]["limits"][B.GPU_RESOURCE] == "4"
    assert {"name": W.SHM_VOLUME, "mountPath": "/dev/shm"} in worker["volumeMounts"]
    assert {"name": W.SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} in _worker_pod(spec)["volumes"]


def test_rmm_pool_instead_of_the_async_allocator():
    spec = _spec({"gpusPerWorker": 2, "gpu": {"rmmAsync": False, "rmmPoolSize": "0.9", "deviceMemoryLimit": "0"}})
    command = _worker(spec)["command"]
    assert "--rmm-async" not in command
    assert _flag(command, "--rmm-pool-size") == "0.9" and _flag(command, "--device-memory-limit") == "0"
    assert _flag(command, "--nthreads") == "1"  # no CPU request: dask-cuda's own default


def test_without_a_cpu_request_no_blas_threads_are_derived():
    env = _env(_worker(_spec({"gpusPerWorker": 1})))
    assert not set(W.BLAS_THREAD_VARS) & set(env) and env["CUPY_TF32"] == "0"


@pytest.mark.parametrize("threads, resources, blas", [
    (1, {"requests": {"cpu": "6"}}, "6"),  # the default: one Dask thread with every CPU for BLAS
    (4, {"requests": {"cpu": "8"}}, "2"),  # Dask threads x BLAS threads = the CPU request
    (3, {"requests": {"cpu": "8"}}, "2"),
    (1, {"requests": {"cpu": "500m"}}, "1"),
    (2, {"limits": {"cpu": 4}}, "2"),  # a limit alone is also the request
    (2, {"requests": {"cpu": "2"}, "limits": {"cpu": "8"}}, "1"),  # the request wins
])
def test_cpu_workers_threads(threads, resources, blas):
    worker = _worker(_spec({"threadsPerWorker": threads, "resources": {"worker": resources}}))
    assert worker["command"][:2] == ["dask", "worker"] and _flag(worker["command"], "--nthreads") == str(threads)
    assert _env(worker) == {**dict.fromkeys(W.BLAS_THREAD_VARS, blas), "ARROW_DEFAULT_MEMORY_POOL": "system"}  # no CUPY_TF32
    assert W.SHM_VOLUME not in _names(worker["volumeMounts"])


def test_cpu_worker_command_parses_as_dask_worker():
    from distributed.cli.dask_worker import main

    command = _worker(_spec({"threadsPerWorker": 3}))["command"]
    params = main.make_context("dask worker", command[2:]).params
    assert params["nthreads"] == 3 and params["name"] == "$(DASK_WORKER_NAME)"


def test_gpu_worker_command_parses_as_dask_cuda_worker():
    cli = pytest.importorskip("dask_cuda.cli", reason="dask-cuda is only in the GPU image")
    command = _worker(_spec({"gpusPerWorker": 4, "resources": {"worker": {"requests": {"cpu": "16"}}},
                             "gpu": {"rmmPoolSize": "40Gi"}}))["command"]
    params = cli.worker.make_context("dask-cuda-worker", command[1:]).params
    assert params["nthreads"] == 4 and params["rmm_async"] is True and params["rmm_pool_size"] == "40GiB"
    assert params["rmm_allocator_external_lib_list"] == ["cupy"] and params["device_memory_limit"] == "0.8"


@pytest.mark.parametrize("precision, flag", [("float32", "0"), ("tf32", "1")])
def test_tf32_only_on_gpu_workers_and_only_when_asked(precision, flag):
    spec = _spec({"gpusPerWorker": 1}, distancePrecision=precision)
    cluster = B.build_dask_cluster("docs", "ns", "uid", spec)
    assert _env(_worker(spec))["CUPY_TF32"] == flag
    (scheduler,) = cluster["spec"]["scheduler"]["spec"]["containers"]
    (runner,) = B.build_job("docs", "ns", "uid", spec)["spec"]["template"]["spec"]["containers"]
    assert "CUPY_TF32" not in _env(scheduler) and "CUPY_TF32" not in _env(runner)


def test_user_env_comes_after_the_operators_so_it_wins():
    spec = _spec({"gpusPerWorker": 1, "resources": {"worker": {"requests": {"cpu": "8"}}},
                  "env": [{"name": "OMP_NUM_THREADS", "value": "2"}]})
    names = [item["name"] for item in _worker(spec)["env"]]
    assert names.index("OMP_NUM_THREADS") < len(names) - 1 and names[-1] == "OMP_NUM_THREADS"


def test_cupy_tf32_in_cluster_env_is_refused():
    with pytest.raises(SpecError, match="CUPY_TF32 is set by the operator from distancePrecision"):
        _spec({"gpusPerWorker": 1, "env": [{"name": "CUPY_TF32", "value": "1"}]})


@pytest.mark.parametrize("quantity, cores", [("4", 4.0), (4, 4.0), ("500m", 0.5), ("1.5", 1.5), ("2k", 2000.0)])
def test_cpu_quantities(quantity, cores):
    assert W.cpu_cores(quantity) == cores


NANNY_CHECK = """
import json, os
from distributed import Client, LocalCluster
with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \\
        Client(cluster) as client:
    seen = client.run(lambda: {k: os.environ.get(k) for k in %r})
print(json.dumps(list(seen.values())[0]))
"""


def _worker_process_env(env: dict) -> dict:
    """The BLAS env a real Nanny-started worker process ends up with, given the container env."""
    code = NANNY_CHECK % (list(W.BLAS_THREAD_VARS),)
    clean = {k: v for k, v in os.environ.items()
             if k not in W.BLAS_THREAD_VARS and not k.startswith("DASK_")}
    done = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_real_nanny_keeps_the_blas_threads_the_operator_sets():
    spec = _spec({"threadsPerWorker": 1, "resources": {"worker": {"requests": {"cpu": "6"}}}})
    env = _env(_worker(spec))
    assert _worker_process_env(env) == dict.fromkeys(W.BLAS_THREAD_VARS, "6")
    # Without it the Nanny's pre-spawn-environ default applies; the per-key Dask config form does not help.
    assert _worker_process_env({}) == dict.fromkeys(W.BLAS_THREAD_VARS, "1")
    per_key = {f"DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__{name}": "6" for name in W.BLAS_THREAD_VARS}
    assert _worker_process_env(per_key) == dict.fromkeys(W.BLAS_THREAD_VARS, "1")
