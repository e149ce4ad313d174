"""Engine choice (auto | dask | raft); the cuML/RAFT fit itself runs only where cuML and GPUs exist."""

import numpy as np
import pytest

from distributed.protocol.pickle import dumps, loads

from kmeans_partition.runner import engine
from kmeans_partition.spec import SpecError, parse_job_spec
from kmeans_partition.runner.stage import KMeansStage
from dask_support import blobs, dask_client, scatter_partitions, write_input  # noqa: F401


def test_worker_checks_run_on_the_workers(dask_client):
    # LocalCluster workers share this machine: they see what this process sees.
    identities = dask_client.run(engine._gpu_identity)
    assert set(identities.values()) == {engine._gpu_identity()}  # one machine: the same first device
    assert engine.workers_have_gpus(dask_client) is (engine._gpu_count() > 0 and len(identities) == 1)
    assert engine.workers_have_cuml(dask_client) is engine._cuml_importable()


@pytest.mark.parametrize(
    "requested, cuml, gpus, expected",
    [("dask", True, True, "dask"), ("auto", False, False, "dask"), ("auto", True, False, "dask"),
     ("auto", True, True, "raft"), ("raft", True, True, "raft")],
)
def test_choose_engine(monkeypatch, requested, cuml, gpus, expected):
    monkeypatch.setattr(engine, "workers_have_cuml", lambda client: cuml)
    monkeypatch.setattr(engine, "workers_have_gpus", lambda client: gpus)
    assert engine.choose_engine(requested, client=None) == expected


@pytest.mark.parametrize("requested", ["raft", "cuda"])
def test_unusable_engine_is_a_spec_error(monkeypatch, requested):
    monkeypatch.setattr(engine, "workers_have_cuml", lambda client: False)
    with pytest.raises(SpecError) as err:
        engine.choose_engine(requested, client=None)
    assert err.value.field == "engine"


def test_raft_requested_on_cpu_workers_fails_before_writing(tmp_path, dask_client):
    write_input(tmp_path / "in", blobs(100, 4, 2, seed=1), files=1)
    stage = KMeansStage(n_clusters=2, id_field="id", embedding_field="embedding",
                        input_path=str(tmp_path / "in"), output_path=str(tmp_path / "out"))
    with pytest.raises(SpecError, match="engine: raft needs cuML"):
        stage.run(client=dask_client, engine="raft")
    assert not (tmp_path / "out").exists()


def test_raft_params_from_the_spec_in_cuml_terms_and_picklable():
    spec = parse_job_spec(dict(
        n_clusters=7, id_field="id", embedding_field="e", input_path="in", output_path="out",
        init="random", max_iter=12, tol=1e-3, random_state=5, oversampling_factor=3.0, max_samples_per_batch=99,
    ))
    params = engine.RaftParams.from_spec(spec)
    assert loads(dumps(params)) == params
    assert params.cuml_kwargs() == dict(
        n_clusters=7, init="random", max_iter=12, tol=1e-3, random_state=5,
        oversampling_factor=3.0, max_samples_per_batch=99,
    )
    parallel = engine.RaftParams(7, "k-means||", 12, 1e-3, 5, 3.0, 99)
    assert parallel.cuml_kwargs()["init"] == "scalable-k-means++"
    assert parallel.init == "k-means||"  # the object itself keeps our name


def test_raft_fit_matches_sklearn_inertia():
    pytest.importorskip("cuml", reason="cuML (RAFT) is only in the GPU image")
    from distributed import Client, LocalCluster
    from sklearn.cluster import KMeans

    x = blobs(4000, 16, 10, seed=2)
    # One worker: cuML's multi-GPU fit needs a GPU per worker, and local workers share device 0.
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster, Client(cluster) as client:
        assert engine.workers_have_gpus(client), "cuML imports but the Dask worker sees no GPU"
        parts, rows = scatter_partitions(client, x, 4)
        params = engine.RaftParams(10, "k-means||", 300, 1e-4, 0, 2.0, 32768)
        fitted = engine.fit_raft(client, parts, rows, 16, params)
    ref = KMeans(10, n_init=1, random_state=0).fit(x.astype(np.float64))
    ours = ((x[:, None, :] - fitted.centroids[None]) ** 2).sum(-1).min(1).sum()
    assert ours <= 1.01 * ref.inertia_
