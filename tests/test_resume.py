"""Checkpoint and resume: a killed runner (a real `kmeans-partition run` process, SIGKILL)
resumes from its checkpoint and writes the output an undisturbed run writes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from dask_support import blobs, dask_client, scatter_partitions  # noqa: F401
from io_support import tree_hash, write_parquet

from kmeans_partition.runner.checkpoint import FOLDER, Checkpoint, State, resume_fit
from kmeans_partition.runner.fit import DaskKMeans
from kmeans_partition.runner.output import OutputError, open_output
from kmeans_partition.runner.stage import KMeansStage

CLI = str(Path(sys.executable).with_name("kmeans-partition"))


def _noise_input(root: Path, rows: int = 40000, files: int = 4, d: int = 16) -> Path:
    """Gaussian noise: no cluster structure, so Lloyd keeps moving for many iterations."""
    x = np.random.default_rng(0).standard_normal((rows, d)).astype(np.float32)
    root.mkdir(parents=True)
    per = rows // files
    for i in range(files):
        write_parquet(root / f"p{i}.parquet", x[i * per:(i + 1) * per], ids=[f"d{j}" for j in range(i * per, (i + 1) * per)])
    return root


def _cmd(inp: Path, out: Path, *extra: str) -> list[str]:
    return [CLI, "run", "--input", str(inp), "--output", str(out), "--n-clusters", "64", "--id-field", "id",
            "--embedding-field", "embedding", "--tol", "0", "--max-iter", "120", "--no-report",
            "--checkpoint-iterations", "5", "--checkpoint-seconds", "0", *extra]


def _comparable_manifest(out: Path) -> dict:
    manifest = json.loads((out / "_manifest.json").read_text())
    for key in ("timings", "created", "manifest_path", "centroids_path", "report_path", "files"):
        manifest.pop(key, None)
    manifest["spec"].pop("output_path")
    manifest["engine"].pop("reason")  # names a worker's address
    for item in manifest["iterations"]:
        item.pop("seconds")
        item.pop("rows_computed")  # work done (bounds skip rows), not a result: a resumed step computes all rows
    return manifest


def _data_files(out: Path) -> dict:
    return {name: digest for name, digest in tree_hash(out).items() if name != "_manifest.json"}


def test_killed_runner_resumes_from_its_checkpoint_to_the_same_output(tmp_path):
    inp = _noise_input(tmp_path / "in")
    env = dict(os.environ, KMP_OWNER_UID="uid-1")
    plain = subprocess.run(_cmd(inp, tmp_path / "plain"), env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-2000:]
    n_iter = json.loads((tmp_path / "plain" / "_manifest.json").read_text())["n_iter"]
    assert n_iter > 20  # enough iterations to be killed in the middle

    out = tmp_path / "out"
    runner = subprocess.Popen(_cmd(inp, out, "--quiet"), env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = out / FOLDER / "state.json"
    saved, deadline = 0, time.time() + 240
    try:
        while saved < 10 and time.time() < deadline and runner.poll() is None:
            try:
                saved = json.loads(state_file.read_text())["iteration"]
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.02)
    finally:
        os.killpg(runner.pid, signal.SIGKILL)  # the runner and its LocalCluster: our own process group
        runner.wait()
    assert runner.returncode == -signal.SIGKILL and 10 <= saved < n_iter
    assert not (out / "_manifest.json").exists()

    resumed = subprocess.run(_cmd(inp, out), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    iteration = int(resumed.stderr.split("resuming from the checkpoint at iteration ")[1].split()[0].rstrip(",;"))
    assert f"redoing iteration {iteration} to rebuild the labels" in resumed.stderr
    assert saved <= iteration < n_iter
    assert "gave other centroids" not in resumed.stderr
    assert _data_files(out) == _data_files(tmp_path / "plain")  # parquet files and centroids, byte for byte
    assert _comparable_manifest(out) == _comparable_manifest(tmp_path / "plain")
    assert sorted(os.listdir(out))[:2] == ["_manifest.json", "centroid=0"]  # no checkpoint, no lease left
    assert not (out / FOLDER).exists() and not (out / "_lease.json").exists()


def test_lloyd_resumed_with_bounds_dropped_gives_bit_identical_centroids(tmp_path, dask_client):  # noqa: F811
    """The resumed run drops the bounds (`previous` step state): labels are exact either way."""
    x = blobs(6000, 8, 12, seed=3, spread=0.6)
    parts, rows = scatter_partitions(dask_client, x, 4)
    start = x[np.random.default_rng(1).choice(len(x), 20, replace=False)]
    whole = DaskKMeans(dask_client, parts, rows, 20, 512, 0).lloyd(start, 200, 0.0)
    assert whole.n_iter > 8

    out = open_output(str(tmp_path / "ckpt"), {})
    ckpt = Checkpoint(out, 0, 4, State(None, "r", "s", "i", 1))
    first = DaskKMeans(dask_client, parts, rows, 20, 512, 0).lloyd(start, 6, 0.0, on_iteration=ckpt)
    assert ckpt.state.iteration == 4 and first.n_iter == 6
    model = DaskKMeans(dask_client, parts, rows, 20, 512, 0)
    again = model.lloyd(start, 200, 0.0, resume=resume_fit(model, ckpt, Checkpoint.read_state(out)))
    assert again.n_iter == whole.n_iter and again.converged == whole.converged
    np.testing.assert_array_equal(again.centroids, whole.centroids)
    assert again.inertia_history == whole.inertia_history
    assert [h["centroid_shift"] for h in again.history] == [h["centroid_shift"] for h in whole.history]


def _stage(inp: Path, out: Path, **extra) -> KMeansStage:
    return KMeansStage(n_clusters=4, id_field="id", embedding_field="embedding", input_path=str(inp),
                       output_path=str(out), report=False, checkpoint_seconds=0, **extra)


def test_partial_output_of_another_resource_is_refused_and_our_own_is_resumed(tmp_path, dask_client, monkeypatch):  # noqa: F811
    inp = tmp_path / "in"
    inp.mkdir()
    write_parquet(inp / "a.parquet", blobs(400, 8, 4, seed=5))
    out = tmp_path / "out"
    monkeypatch.setenv("KMP_OWNER_UID", "uid-a")
    done = _stage(inp, out).run(client=dask_client)
    centroids = np.load(out / "kmeans_centroids.npy")
    # Make it a partial output of uid-a: the manifest gone, the fit's final checkpoint kept.
    state = State("uid-a", "old", "x", "y", 1, iteration=done["n_iter"], centroids_file="centroids-000001.npy")
    (out / "_manifest.json").unlink()
    (out / FOLDER).mkdir()
    np.save(out / FOLDER / "centroids-000001.npy", np.stack([centroids, centroids]))
    (out / FOLDER / "state.json").write_text(json.dumps(state.__dict__))

    monkeypatch.setenv("KMP_OWNER_UID", "uid-b")
    with pytest.raises(OutputError, match="partial output of resource uid uid-a"):
        _stage(inp, out).run(client=dask_client)
    monkeypatch.delenv("KMP_OWNER_UID")
    with pytest.raises(OutputError, match="partial output of resource uid uid-a"):
        _stage(inp, out).run(client=dask_client)
    assert (out / FOLDER / "state.json").exists() and not (out / "_lease.json").exists()

    monkeypatch.setenv("KMP_OWNER_UID", "uid-a")  # a retry of the same resource: replaces it
    again = _stage(inp, out).run(client=dask_client)
    assert again["rows_per_centroid"] == done["rows_per_centroid"]
    np.testing.assert_array_equal(np.load(out / "kmeans_centroids.npy"), centroids)
    assert not (out / FOLDER).exists()


def test_checkpoint_of_another_spec_is_not_resumed(tmp_path, dask_client, monkeypatch):  # noqa: F811
    inp = tmp_path / "in"
    inp.mkdir()
    write_parquet(inp / "a.parquet", blobs(400, 8, 4, seed=5))
    out = tmp_path / "out"
    (out / FOLDER).mkdir(parents=True)
    bogus = np.zeros((2, 4, 8), np.float32)
    np.save(out / FOLDER / "centroids-000003.npy", bogus)
    state = State(None, "old", "other-spec", "y", 1, iteration=3, centroids_file="centroids-000003.npy")
    (out / FOLDER / "state.json").write_text(json.dumps(state.__dict__))
    result = _stage(inp, out, overwrite=True).run(client=dask_client)
    assert result["n_iter"] >= 1 and min(result["rows_per_centroid"]) > 0  # fitted afresh, not from zeros
    assert not (out / FOLDER).exists()


def test_a_retry_after_the_fit_skips_the_fit(tmp_path, dask_client, monkeypatch, caplog):  # noqa: F811
    """The checkpoint saved after the fit lets a retry of a failed write go straight to writing."""
    inp = tmp_path / "in"
    inp.mkdir()
    write_parquet(inp / "a.parquet", blobs(600, 8, 4, seed=8))
    out = tmp_path / "out"
    monkeypatch.setenv("KMP_OWNER_UID", "uid-a")
    monkeypatch.setattr(Checkpoint, "delete", lambda self: None)  # as if the run died after the fit
    first = _stage(inp, out, max_iter=50).run(client=dask_client)
    (out / "_manifest.json").unlink()
    state = Checkpoint.read_state(open_output(str(out), {}))
    assert state.finished and state.iteration == first["n_iter"] and state.owner_uid == "uid-a"
    monkeypatch.undo()
    monkeypatch.setenv("KMP_OWNER_UID", "uid-a")
    with caplog.at_level("WARNING", logger="kmeans_partition"):
        again = _stage(inp, out, max_iter=50).run(client=dask_client)
    assert f"resuming from the checkpoint at iteration {first['n_iter']}, fit finished" in caplog.text
    assert again["n_iter"] == first["n_iter"] and again["iterations"] == first["iterations"]
    assert again["rows_per_centroid"] == first["rows_per_centroid"] and again["inertia"] == first["inertia"]
    assert again["timings"]["fit"] < first["timings"]["fit"] and not (out / FOLDER).exists()


class _Crash(RuntimeError):
    pass


def test_fit_interrupted_on_s3_resumes_to_the_same_output(s3_server, dask_client, monkeypatch):  # noqa: F811
    """Checkpoints on S3 (moto server): a run failing mid-fit leaves its checkpoint and releases its
    lease; the retry of the same resource resumes and writes what an undisturbed run writes."""
    import s3fs
    from s3_support import create_bucket

    from kmeans_partition.runner.sample import write_sample

    endpoint, options = s3_server
    bucket = create_bucket(endpoint, "kmp-resume")
    write_sample(f"{bucket}/in", rows=4000, dim=16, clusters=40, duplicates=0.0, files=2, seed=9,
                 storage_options=options)
    fs = s3fs.S3FileSystem(**options)

    def stage(out):
        return KMeansStage(n_clusters=24, id_field="id", embedding_field="embedding", input_path=f"{bucket}/in",
                           output_path=f"{bucket}/{out}", storage_options=options, tol=0, max_iter=30,
                           init="random", report=False, checkpoint_seconds=0, checkpoint_iterations=3)

    monkeypatch.setenv("KMP_OWNER_UID", "uid-s3")
    plain = stage("plain").run(client=dask_client)
    real_call = Checkpoint.__call__

    def crash_after_a_save(self, result, previous):
        real_call(self, result, previous)
        if result.n_iter == 7:
            raise _Crash("runner died")

    monkeypatch.setattr(Checkpoint, "__call__", crash_after_a_save)
    with pytest.raises(_Crash):
        stage("out").run(client=dask_client)
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[1] for p in fs.find(f"{bucket}/out")) == ["centroids-000006.npy", "state.json"]
    monkeypatch.setattr(Checkpoint, "__call__", real_call)
    resumed = stage("out").run(client=dask_client)
    fs.invalidate_cache()
    results = lambda run: [(h["iteration"], h["inertia"], h["centroid_shift"]) for h in run["iterations"]]  # noqa: E731
    assert results(resumed) == results(plain)
    for key in ("n_iter", "inertia", "rows_per_centroid", "n_reseeded"):
        assert resumed[key] == plain[key], key
    out_files = {p.split("/out/", 1)[1]: fs.info(p)["ETag"] for p in fs.find(f"{bucket}/out")}
    plain_files = {p.split("/plain/", 1)[1]: fs.info(p)["ETag"] for p in fs.find(f"{bucket}/plain")}
    out_files.pop("_manifest.json"), plain_files.pop("_manifest.json")
    assert out_files == plain_files  # parquet files and centroids: the same bytes (MD5 ETags)


def test_a_run_resumed_on_more_workers_reads_the_partitions_it_was_fitting(tmp_path, dask_client, monkeypatch):  # noqa: F811
    """Partitions are planned from the workers present (two per worker), and partial sums are added
    in partition order: the checkpoint keeps the plan, so a run started on 1 worker and resumed on 2
    writes what the undisturbed 1-worker run writes."""
    from distributed import Client, LocalCluster

    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(2):
        write_parquet(inp / f"{i}.parquet", blobs(3000, 16, 30, seed=20 + i), row_group_size=500)
    monkeypatch.setenv("KMP_OWNER_UID", "uid-more")
    stage = lambda out: KMeansStage(  # noqa: E731
        n_clusters=24, id_field="id", embedding_field="embedding", input_path=str(inp), output_path=str(out),
        report=False, checkpoint_seconds=0, checkpoint_iterations=3, tol=0, max_iter=25, init="random")
    real_call = Checkpoint.__call__

    def crash_after_a_save(self, result, previous):
        real_call(self, result, previous)
        if result.n_iter == 7:
            raise _Crash("runner died")

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as one, \
            Client(one) as client:
        plain = stage(tmp_path / "plain").run(client=client)
        monkeypatch.setattr(Checkpoint, "__call__", crash_after_a_save)
        with pytest.raises(_Crash):
            stage(tmp_path / "out").run(client=client)
    state = Checkpoint.read_state(open_output(str(tmp_path / "out"), {}))
    assert len(state.partitions) == 2 and state.iteration == 6  # one worker: two partitions
    monkeypatch.setattr(Checkpoint, "__call__", real_call)
    assert len(dask_client.scheduler_info()["workers"]) == 2  # afresh, this client would plan four
    resumed = stage(tmp_path / "out").run(client=dask_client)
    results = lambda run: [(h["iteration"], h["inertia"], h["centroid_shift"]) for h in run["iterations"]]  # noqa: E731
    assert results(resumed) == results(plain)
    assert _data_files(tmp_path / "out") == _data_files(tmp_path / "plain")
