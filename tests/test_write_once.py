"""The assign+write stage through `KMeansStage`: each row written once, to its final file only.

Same output whatever the worker count, equal to a NumPy reference; a failure during the write
leaves no file of the run behind; storage sees only the final files' writes and no read-back.
"""

import json
import re
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster
from fsspec.implementations.memory import MemoryFileSystem

from kmeans_partition.runner import stage as stage_module
from kmeans_partition.runner import write
from kmeans_partition.runner.stage import KMeansStage
from dask_support import blobs, dask_client, write_input  # noqa: F401

# Differ between two identical runs: when, how long, where, and which workers (engine.devices and reason;
# memory_mode: the workers' memory limits).
VARYING_KEYS = ("created", "timings", "manifest_path", "centroids_path", "report_path", "engine", "memory_mode")


@pytest.fixture
def in_process_client():
    """Two in-process workers: monkeypatches reach the tasks."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


def run_job(input_path, output_path, client, **changes):
    fields = dict(
        n_clusters=7, id_field="id", embedding_field="embedding", input_path=str(input_path),
        output_path=str(output_path), metadata_fields=["text"], max_samples_per_batch=300, max_iter=20,
    )
    return KMeansStage(**{**fields, **changes}).run(client=client)


def comparable_manifest(out: Path) -> dict:
    manifest = json.loads((out / "_manifest.json").read_text())
    manifest["spec"].pop("output_path")
    for step in manifest.get("iterations", []):
        step.pop("seconds")  # wall time of each iteration
    return {key: value for key, value in manifest.items() if key not in VARYING_KEYS}


def float_bits(table, column):
    values = table.column(column).combine_chunks()
    flat = values.values if hasattr(values, "values") else values
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32).view(np.uint32)


def test_same_output_with_one_and_two_workers_equal_to_numpy(tmp_path, dask_client):
    x = blobs(2400, 12, 7, seed=21, spread=0.5)
    write_input(tmp_path / "in", x, files=4)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as one_worker:
        run_job(tmp_path / "in", tmp_path / "one", one_worker)
    run_job(tmp_path / "in", tmp_path / "two", dask_client)

    one, two = tmp_path / "one", tmp_path / "two"
    files = sorted(str(p.relative_to(one)) for p in one.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(two)) for p in two.rglob("*") if p.is_file())
    assert (one / "kmeans_centroids.npy").read_bytes() == (two / "kmeans_centroids.npy").read_bytes()
    assert comparable_manifest(one) == comparable_manifest(two)
    for name in files:
        if name.endswith(".parquet"):
            a, b = pq.read_table(one / name), pq.read_table(two / name)
            assert a.equals(b), name
            for column in ("embedding", "l2_dist_to_cent", "cosine_dist_to_cent"):
                assert np.array_equal(float_bits(a, column), float_bits(b, column)), (name, column)

    # NumPy reference from the written centroids: float64 nearest (except near-ties), input order kept
    centroids = np.load(two / "kmeans_centroids.npy").astype(np.float64)
    d2 = ((x[:, None, :].astype(np.float64) - centroids[None]) ** 2).sum(-1)
    ordered = np.sort(d2, axis=1)
    tie = ordered[:, 1] - ordered[:, 0] < 1e-5
    assert tie.mean() < 0.01
    labels = d2.argmin(1)
    manifest = json.loads((two / "_manifest.json").read_text())
    counts = manifest["rows_per_centroid"]
    assert [f["path"] for f in manifest["files"]] == [f"centroid={c}/part-00000.parquet" for c in range(7) if counts[c]]
    assert np.abs(np.array(counts) - np.bincount(labels, minlength=7)).sum() <= tie.sum()
    for entry in manifest["files"]:
        table = pq.read_table(two / entry["path"])
        rows = np.array([int(i.split("-")[1]) for i in table.column("id").to_pylist()])
        assert list(rows) == sorted(rows), entry["path"]  # input order inside the file
        expected = np.flatnonzero((labels == entry["centroid"]) & ~tie)
        assert list(rows[~tie[rows]]) == list(expected)
        emb = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
        np.testing.assert_allclose(emb, x[rows], atol=1e-6)
        np.testing.assert_allclose(
            table.column("l2_dist_to_cent").to_numpy(), np.sqrt(d2[rows, entry["centroid"]]), atol=1e-6
        )
    assert manifest["inertia"] == pytest.approx(ordered[:, 0].sum(), rel=1e-5)


def test_failure_during_write_leaves_no_file_of_the_run(tmp_path, in_process_client, monkeypatch):
    x = blobs(3000, 8, 6, seed=22)
    write_input(tmp_path / "in", x, files=3)
    monkeypatch.setattr(stage_module, "rows_per_write_task", lambda *args: 150)  # many small write tasks
    real, written = write.write_file, []

    def fail_on_the_last_centroid(fs, path, table):
        if "centroid=5/" in path:
            with fs.open_output_stream(path) as handle:  # a partial object, as a dropped upload leaves
                handle.write(b"PAR1")
            raise OSError("injected: storage refused the upload")
        real(fs, path, table)
        written.append(path)

    monkeypatch.setattr(write, "write_file", fail_on_the_last_centroid)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="injected"):
        run_job(tmp_path / "in", out, in_process_client, n_clusters=6)
    assert len(written) >= 3  # other groups had written their files before the cleanup
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []
    # Only the fit's checkpoint stays (a retry skips the fit: runner/checkpoint.py).
    assert all(re.fullmatch(r"_checkpoint(/state\.json|/centroids-\d{6}-final\.npy)?", name) for name in left), left


def test_failure_during_an_s3_write_leaves_no_object_of_the_run(tmp_path, s3_server, in_process_client, monkeypatch):
    import s3fs

    import s3_support

    endpoint, options = s3_server
    bucket = s3_support.create_bucket(endpoint, "kmp-write-failure")
    x = blobs(1500, 8, 4, seed=25)
    write_input(tmp_path / "in", x, files=2)
    monkeypatch.setattr(stage_module, "rows_per_write_task", lambda *args: 200)
    real = write.write_file

    def fail_on_centroid_3(fs, path, table):
        if "centroid=3/" in path:
            raise OSError("injected: upload refused")
        real(fs, path, table)

    monkeypatch.setattr(write, "write_file", fail_on_centroid_3)
    fs = s3fs.S3FileSystem(**options)
    fs.pipe(f"{bucket}/neighbour/keep.txt", b"not ours")
    with pytest.raises(OSError, match="injected"):
        run_job(tmp_path / "in", f"{bucket}/out", in_process_client, n_clusters=4, storage_options=options)
    fs.invalidate_cache()
    assert [p for p in fs.find(f"{bucket}/out") if "/_checkpoint/" not in p] == []  # the fit's checkpoint stays
    assert fs.cat(f"{bucket}/neighbour/keep.txt") == b"not ours"


def _run_state(path: str) -> bool:
    """The run's lease and checkpoint (runner/guard.py): written, read and deleted by the client."""
    return "/_lease.json" in path or "/_checkpoint/" in path


class StorageRecorder:
    """Every open of the in-memory filesystem (path, mode) and every move, copy or delete."""

    def __init__(self, monkeypatch):
        self.opens, self.other = [], []
        real_open = MemoryFileSystem._open

        def recording_open(fs, path, mode="rb", *args, **kwargs):
            if not _run_state(path):
                self.opens.append((fs._strip_protocol(path), mode))
            return real_open(fs, path, mode, *args, **kwargs)

        monkeypatch.setattr(MemoryFileSystem, "_open", recording_open)
        for name in ("mv", "cp_file", "rm_file", "rm"):
            real = getattr(MemoryFileSystem, name)
            monkeypatch.setattr(MemoryFileSystem, name, self._recording(name, real))

    def _recording(self, name, real):
        def method(fs, *args, **kwargs):
            if not _run_state(str(args[0]) if args else ""):
                self.other.append((name, args))
            return real(fs, *args, **kwargs)
        return method


def test_storage_sees_only_the_final_files_each_written_once(tmp_path, in_process_client, monkeypatch):
    x = blobs(2000, 8, 5, seed=23)
    write_input(tmp_path / "in", x, files=3)
    monkeypatch.setattr(stage_module, "rows_per_write_task", lambda *args: 300)
    recorder = StorageRecorder(monkeypatch)
    root = "/write-once-test/out"
    try:
        result = run_job(tmp_path / "in", f"memory://{root}", in_process_client, n_clusters=5)
        fs = fsspec.filesystem("memory")
        final = sorted(p[len(root) + 1:] for p in fs.find(root))
    finally:
        MemoryFileSystem.store.clear()
        MemoryFileSystem.pseudo_dirs[:] = [""]
    expected = sorted([f["path"] for f in result["files"]] + ["kmeans_centroids.npy", "_manifest.json", "report.html"])
    assert final == expected
    assert all(f["path"] == f"centroid={f['centroid']}/part-00000.parquet" for f in result["files"])
    writes = [path[len(root) + 1:] for path, mode in recorder.opens if "w" in mode or "a" in mode]
    assert sorted(writes) == expected  # each file written once, nothing else
    assert writes[-1] == "_manifest.json"  # last: the output is complete only once it exists
    assert [path for path, mode in recorder.opens if "r" in mode] == []  # nothing read back
    assert recorder.other == []  # no moves, copies or deletes


HELD_DURING_WRITES = []  # what the workers hold as each write task starts (in-process workers)


def noting_what_workers_hold(*args):
    from distributed import get_worker

    HELD_DURING_WRITES.append({key.split("-")[0] for key in map(str, get_worker().data.keys())})
    return write.write_group(*args)


def test_partitions_are_released_before_the_files_are_written(tmp_path, in_process_client, monkeypatch):
    monkeypatch.setattr(stage_module, "write_group", noting_what_workers_hold)
    HELD_DURING_WRITES.clear()
    write_input(tmp_path / "in", blobs(2000, 8, 5, seed=24), files=4)
    run_job(tmp_path / "in", tmp_path / "out", in_process_client, n_clusters=5)
    assert len(HELD_DURING_WRITES) >= 2 and "getitem" in HELD_DURING_WRITES[0]  # the pieces are there
    for held in HELD_DURING_WRITES:  # (a split's list may linger: it holds the pieces' tables, no more)
        assert not held & {"load_partition", "assign_partition"}, held
