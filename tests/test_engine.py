"""Engine choice (auto | dask | raft) and the RAFT engine's plumbing.

The RAFT fit's parameter mapping and control flow run against FAKE cuML / raft-dask / CuPy modules
(`fake_cuml`, in-process Dask workers); the real cuML fit is tested only where cuML and a GPU exist
(`test_raft_fit_matches_sklearn_inertia`, skipped here).
"""

import importlib
import json
import sys

import dask.array  # noqa: F401  (imported before any fake cupy exists: it registers cupy.ndarray on import)
import numpy as np
import pytest
from distributed import Client, LocalCluster
from distributed.protocol.pickle import dumps, loads

import fake_cuml
from dask_support import blobs, dask_client, scatter_partitions, write_input  # noqa: F401
from kmeans_partition.runner import engine, worker_probe
from kmeans_partition.runner.engine import EngineUnavailable, WorkerProbe, decide
from kmeans_partition.runner.k8s_status import result_status
from kmeans_partition.runner.stage import KMeansStage
from kmeans_partition.spec import Engine, SpecError, parse_job_spec

CUML_MISSING = worker_probe.cuml_import_error() is not None


@pytest.fixture
def local_client():
    """In-process workers (threads): they see this process's sys.modules, fakes included."""
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


@pytest.fixture
def no_new_cuml_modules():
    """Forget cuml / raft_dask modules imported during the test (from a fake package on disk)."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("cuml", "raft_dask"):
            del sys.modules[name]


def _probe(gpu=None, cuml_error=None, tf32=False, host="node-a"):
    return WorkerProbe(host=host, gpu=gpu, cuml_error=cuml_error, tf32=tf32)


GPU_A, GPU_B = "node-a/0000:01:00.0", "node-b/0000:01:00.0"


@pytest.mark.parametrize(
    "requested, probes, chosen, reason",
    [
        ("dask", {"w1": _probe(GPU_A)}, "dask", "requested"),
        ("auto", {"w1": _probe(GPU_A), "w2": _probe(GPU_B)}, "raft",
         "auto: all 2 workers import cuML and have a GPU of their own"),
        ("raft", {"w1": _probe(GPU_A)}, "raft", "raft: all 1 workers import cuML"),
        ("auto", {"w1": _probe(GPU_A), "w2": _probe(GPU_B, cuml_error="ModuleNotFoundError: No module named 'x'")},
         "dask", "auto: cuML's multi-GPU KMeans does not import on worker w2: ModuleNotFoundError: No module named 'x'"),
        ("auto", {"w1": _probe(GPU_A), "w2": _probe(None)}, "dask", "auto: worker w2 has no GPU"),
        ("auto", {"w1": _probe(GPU_A), "w2": _probe(GPU_A)}, "dask", f"auto: workers w1 and w2 share GPU {GPU_A}"),
        ("auto", {}, "dask", "auto: no workers"),
    ],
)
def test_decide_says_what_ran_and_why(requested, probes, chosen, reason):
    choice = decide(Engine(requested), probes)
    assert choice.chosen == Engine(chosen) and choice.requested == requested
    assert choice.reason.startswith(reason), choice.reason
    if chosen == "dask" and requested == "auto":
        assert choice.reason.endswith("; ran dask")
    assert choice.devices == [p.device for _, p in sorted(probes.items())]
    assert json.loads(json.dumps(choice.to_dict()))["chosen"] == chosen


def test_devices_name_the_gpu_or_the_cpu_host():
    choice = decide(Engine.auto, {"w2": _probe(None, host="cpu-node"), "w1": _probe(GPU_A)})
    assert choice.devices == [f"gpu {GPU_A}", "cpu cpu-node"]


@pytest.mark.parametrize("probes, problem", [
    ({"w1": _probe(None)}, "raft: worker w1 has no GPU"),
    ({"w1": _probe(GPU_A), "w2": _probe(GPU_A)}, "share GPU"),
    ({"w1": _probe(GPU_A, cuml_error="ImportError: libcuml.so")}, "does not import on worker w1: ImportError"),
])
def test_raft_that_cannot_run_is_an_error_naming_the_worker(probes, problem):
    with pytest.raises(EngineUnavailable, match=problem) as err:
        decide(Engine.raft, probes)
    assert err.value.field == "engine" and isinstance(err.value, SpecError)


def test_precision_tf32_only_when_every_gpu_worker_has_it(caplog):
    tf32 = {"w1": _probe(GPU_A, tf32=True), "w2": _probe(GPU_B, tf32=True)}
    assert decide(Engine.dask, tf32, "tf32").distance_precision == "tf32"
    mixed = {"w1": _probe(GPU_A, tf32=True), "w2": _probe(GPU_B)}
    assert decide(Engine.dask, mixed, "tf32").distance_precision == "float32"
    assert decide(Engine.dask, {"w1": _probe(None)}, "tf32").distance_precision == "float32"  # CPU: no TF32
    assert "not every GPU worker" in caplog.text
    with pytest.raises(SpecError, match="worker w1 has CUPY_TF32=1") as err:
        decide(Engine.dask, mixed, "float32")  # float32 asked: a TF32 worker would change labels
    assert err.value.field == "distance_precision"


def test_probes_run_on_the_workers(dask_client):
    probes = dask_client.run(engine.probe_worker)
    assert len(probes) == 2 and all(isinstance(p, WorkerProbe) for p in probes.values())
    assert {p.gpu for p in probes.values()} == {worker_probe.gpu_identity()}  # one machine: the same first device
    assert {p.cuml_error for p in probes.values()} == {worker_probe.cuml_import_error()}
    assert engine.workers_have_cuml(dask_client) is (not CUML_MISSING)


@pytest.mark.skipif(not CUML_MISSING, reason="cuML imports here")
def test_auto_on_workers_without_cuml_runs_dask_and_says_why(dask_client, caplog):
    choice = engine.choose_engine("auto", dask_client)
    assert choice.chosen == Engine.dask
    assert "does not import on worker tcp://" in choice.reason and "No module named 'cuml'" in choice.reason
    assert "ran dask" in caplog.text  # not silent


@pytest.mark.skipif(not CUML_MISSING, reason="cuML imports here")
def test_raft_without_cuml_raises_from_the_workers_import_error(dask_client):
    with pytest.raises(EngineUnavailable, match="No module named 'cuml'") as err:
        engine.choose_engine("raft", dask_client)
    assert isinstance(err.value.__cause__, ModuleNotFoundError)


def test_cuml_without_raft_dask_is_reported_with_the_real_error(tmp_path, monkeypatch, local_client,
                                                                no_new_cuml_modules):
    """The GPU image without `cuml[dask]`: cuml imports, cuml.dask.cluster does not (no raft_dask)."""
    monkeypatch.syspath_prepend(str(fake_cuml.write_broken_cuml(tmp_path)))
    importlib.invalidate_caches()
    with pytest.raises(EngineUnavailable, match="No module named 'raft_dask'") as err:
        engine.choose_engine("raft", local_client)
    assert isinstance(err.value.__cause__, ModuleNotFoundError) and err.value.__cause__.name == "raft_dask"
    choice = engine.choose_engine("auto", local_client)
    assert choice.chosen == Engine.dask and "No module named 'raft_dask'" in choice.reason


def test_raft_requested_on_cpu_workers_fails_before_writing(tmp_path, dask_client):
    write_input(tmp_path / "in", blobs(100, 4, 2, seed=1), files=1)
    stage = KMeansStage(n_clusters=2, id_field="id", embedding_field="embedding",
                        input_path=str(tmp_path / "in"), output_path=str(tmp_path / "out"))
    with pytest.raises(SpecError, match="engine: raft: ") as err:
        stage.run(client=dask_client, engine="raft")
    assert err.value.field == "engine"
    assert not (tmp_path / "out").exists()


def test_manifest_and_status_say_which_engine_ran(tmp_path, dask_client):
    write_input(tmp_path / "in", blobs(300, 8, 3, seed=4), files=2)
    stage = KMeansStage(n_clusters=3, id_field="id", embedding_field="embedding", report=False,
                        input_path=str(tmp_path / "in"), output_path=str(tmp_path / "out"))
    result = stage.run(client=dask_client, engine="auto")
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    expected = engine.choose_engine("auto", dask_client).to_dict()
    assert manifest["engine"] == result["engine"] == expected
    assert manifest["engine"]["requested"] == "auto" and len(manifest["engine"]["devices"]) == 2
    assert manifest["spec"]["distance_precision"] == "float32" and manifest["tol_abs"] > 0
    status = result_status(result)["engine"]
    assert status == {"requested": "auto", "chosen": expected["chosen"], "reason": expected["reason"],
                      "devices": expected["devices"], "distancePrecision": "float32"}


SPEC = dict(n_clusters=7, id_field="id", embedding_field="e", input_path="in", output_path="out", init="random",
            max_iter=12, tol=1e-3, random_state=5, oversampling_factor=3.0, max_samples_per_batch=99)


def test_raft_params_in_cuml_terms_and_picklable():
    params = engine.RaftParams.from_spec(parse_job_spec(SPEC), tol_abs=2.5e-7)
    assert loads(dumps(params)) == params
    assert params.cuml_kwargs() == dict(
        n_clusters=7, init="random", n_init=1, max_iter=12, tol=2.5e-7, random_state=5,
        oversampling_factor=3.0, max_samples_per_batch=99,
    )
    parallel = engine.RaftParams.from_spec(parse_job_spec({**SPEC, "init": "k-means||"}), tol_abs=1.0)
    assert parallel.cuml_kwargs()["init"] == "scalable-k-means++"
    assert parallel.init == "k-means||"  # the object itself keeps our name
    given = np.arange(14, dtype=np.float64).reshape(7, 2)
    init = parallel.cuml_kwargs(given)["init"]
    assert init.dtype == np.float32 and np.array_equal(init, given)
    with pytest.raises(ValueError, match=r"initial centroids: shape \(3, 2\), expected \(7, dim\)"):
        parallel.cuml_kwargs(given[:3])


@pytest.mark.parametrize("init, initial, expected", [
    ("k-means||", None, "scalable-k-means++"), ("random", None, "random"), ("random", "given", "array")])
def test_fake_raft_fit_maps_params_roots_nccl_on_a_worker_and_returns_numpy(
        monkeypatch, local_client, init, initial, expected):
    record = fake_cuml.install(monkeypatch)
    original_comms = sys.modules["cuml.dask.cluster.kmeans"].Comms
    x = blobs(600, 8, 5, seed=3)
    parts, rows = scatter_partitions(local_client, x, 4)
    given = x[[0, 100, 200, 300, 400]] if initial == "given" else None
    params = engine.RaftParams.from_spec(parse_job_spec({**SPEC, "n_clusters": 5, "init": init}), tol_abs=1e-7)

    fitted = engine.fit_raft(local_client, parts, rows, 8, params, initial_centroids=given)

    (kwargs,) = record.kmeans_kwargs
    mapped = kwargs.pop("init")
    assert kwargs == dict(n_clusters=5, n_init=1, max_iter=12, tol=1e-7, random_state=5,
                          oversampling_factor=3.0, max_samples_per_batch=99)
    if expected == "array":
        assert np.array_equal(mapped, given) and (5, 8) in record.to_device_shapes  # sent to the device
    else:
        assert mapped == expected
    assert record.nccl_roots == ["worker"]  # never the scheduler (raft-dask's default)
    assert sys.modules["cuml.dask.cluster.kmeans"].Comms is original_comms  # patched only during the fit
    (data,) = record.fit_data
    assert np.array_equal(data, x)  # every partition, in partition order
    start = given if given is not None else x[:5]
    assert isinstance(fitted.centroids, np.ndarray) and fitted.centroids.dtype == np.float32
    assert np.allclose(fitted.centroids, start + 0.5)  # the fake's device array, brought to NumPy
    assert fitted.n_iter == fake_cuml.FAKE_N_ITER and fitted.converged


def test_a_cuml_without_comms_is_refused_rather_than_rooted_on_the_scheduler(monkeypatch, local_client):
    fake_cuml.install(monkeypatch, with_comms=False)
    parts, rows = scatter_partitions(local_client, blobs(100, 4, 2, seed=1), 2)
    params = engine.RaftParams.from_spec(parse_job_spec({**SPEC, "n_clusters": 2}), tol_abs=1e-7)
    with pytest.raises(RuntimeError, match="cannot put the NCCL root on a worker"):
        engine.fit_raft(local_client, parts, rows, 4, params)


def test_raft_fit_matches_sklearn_inertia():
    pytest.importorskip("cuml", reason="cuML (RAFT) is only in the GPU image")
    from sklearn.cluster import KMeans

    x = blobs(4000, 16, 10, seed=2)
    # One worker: cuML's multi-GPU fit needs a GPU per worker, and local workers share device 0.
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster, Client(cluster) as client:
        assert engine.workers_have_gpus(client), "cuML imports but the Dask worker sees no GPU"
        parts, rows = scatter_partitions(client, x, 4)
        params = engine.RaftParams(10, "k-means||", 300, 1e-7, 0, 2.0, 32768)
        fitted = engine.fit_raft(client, parts, rows, 16, params)
    ref = KMeans(10, n_init=1, random_state=0).fit(x.astype(np.float64))
    ours = ((x[:, None, :] - fitted.centroids[None]) ** 2).sum(-1).min(1).sum()
    assert ours <= 1.01 * ref.inertia_
