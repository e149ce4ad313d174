"""Lost workers: SIGKILL one of 3 real `dask worker` processes during read, init, Lloyd, assign and
write; the run completes and its output equals an undisturbed run's (files, centroids, manifest
except timings and the work counters that depend on which rows the bounds skipped).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import fsspec
import pyarrow as pa
import pytest

from distributed import Client, LocalCluster
from distributed.scheduler import KilledWorker

from kmeans_partition.runner import stage as stage_module
from kmeans_partition.runner import write, write_tasks
from kmeans_partition.runner.partition import Partition, partition_stats
from kmeans_partition.runner.progress import Progress
from kmeans_partition.runner.sample import write_sample
from kmeans_partition.runner.stage import KMeansStage
from kmeans_partition.runner.write import OutputColumns, assign_partition, plan_writes, split_partition
from dask_support import blobs, write_input
from fault_support import PHASES, VARYING_KEYS, KillAll, KillInTurn, KillWorker, connect, dask_processes
from io_support import tree_hash


def job(input_dir: Path, output: Path, memory_mode: str = "auto") -> KMeansStage:
    return KMeansStage(
        n_clusters=30, id_field="id", embedding_field="embedding", input_path=str(input_dir),
        output_path=str(output), metadata_fields=["text"], max_samples_per_batch=512, max_iter=10,
        tol=0.0, report=False, memory_mode=memory_mode,
    )


def comparable(out: Path) -> dict:
    manifest = json.loads((out / "_manifest.json").read_text())
    manifest["spec"].pop("output_path")
    for step in manifest.get("iterations", []):
        step.pop("seconds")
        step.pop("rows_computed")  # work done: a redone step computes every row of a re-read partition
    return {key: value for key, value in manifest.items() if key not in VARYING_KEYS}


def outputs(out: Path) -> dict:
    files = {k: v for k, v in tree_hash(out).items() if k != "_manifest.json"}
    return {"files": files, "manifest": comparable(out)}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    write_sample(str(folder / "in"), rows=24000, dim=24, clusters=12, files=6, seed=3)
    return folder


@pytest.fixture(scope="module")
def cluster(sample):
    """One scheduler for the module; each test replaces the worker the previous one killed."""
    with dask_processes(3, sample) as procs:
        yield procs


@pytest.fixture(scope="module")
def reference(sample, cluster):
    with connect(cluster.address, 3) as client:
        job(sample / "in", sample / "ref").run(client=client)
    return outputs(sample / "ref")


@pytest.mark.parametrize("phase", list(PHASES))
def test_run_survives_a_killed_worker(phase, sample, cluster, reference, tmp_path):
    cluster.replenish(3)
    with connect(cluster.address, 3) as client:
        killer = KillWorker(client, cluster.workers, *PHASES[phase])
        job(sample / "in", tmp_path / "out").run(client=client, progress=Progress([killer]))
        killer.watcher.join()
    assert killer.killed is not None, f"no worker was killed during {phase}"
    got = outputs(tmp_path / "out")
    assert got["manifest"] == reference["manifest"]
    assert got["files"] == reference["files"]
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(("_tmp", "."))]


def without_memory_mode(found: dict) -> dict:
    manifest = dict(found["manifest"], spec=dict(found["manifest"]["spec"]))
    manifest.pop("memory_mode")
    manifest["spec"].pop("memory_mode")
    return {"files": found["files"], "manifest": manifest}


def test_out_of_core_write_survives_losing_every_worker_that_got_the_centroids(sample, reference, tmp_path):
    """Out of core, both of 2 workers die in turn (one during the assign, replaced; the other during
    the write), as when the nanny restarts each for memory: the centroids the assign and the write's
    recomputations read must survive (scattered data would be lost for good, and every rebuild
    of the lost pieces cancelled: "results lost 8 times"). The same code runs in memory."""
    memory_mode = "out_of_core"
    with dask_processes(2, tmp_path) as procs, connect(procs.address, 2) as client:
        killer = KillInTurn(procs, "w0", "w1")
        job(sample / "in", tmp_path / "out", memory_mode).run(client=client, progress=Progress([killer]))
    assert killer.killed == ["w0", "w1"]
    got = outputs(tmp_path / "out")
    assert got["manifest"]["memory_mode"]["mode"] == memory_mode
    assert without_memory_mode(got) == without_memory_mode(reference)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(("_tmp", "."))]


@pytest.mark.parametrize("stage", ["initialising"])
def test_run_survives_losing_every_worker_at_once(stage, sample, reference, tmp_path):
    """Every worker SIGKILLed together (a preempted node pool), new ones start: tasks placed on
    the dead workers must run on the new ones (`runner/restrictions.py`), never wait forever.
    (In the write, the out-of-core test below loses every worker too, in turn.)"""
    with dask_processes(2, tmp_path) as procs, connect(procs.address, 2) as client:
        killer = KillAll(procs, stage)
        job(sample / "in", tmp_path / "out").run(client=client, progress=Progress([killer]))
    assert killer.killed == ["w0", "w1"]
    assert without_memory_mode(outputs(tmp_path / "out")) == without_memory_mode(reference)


def test_a_run_whose_workers_never_come_back_fails_instead_of_waiting_forever(sample, tmp_path):
    """With the scheduler's no-workers timeout (the operator sets it: `builders.NO_WORKERS_TIMEOUT`),
    tasks left without any worker fail after it, and so does the run, with the scheduler's reason."""
    from distributed.scheduler import NoValidWorkerError, NoWorkerError

    timeout = {"DASK_DISTRIBUTED__SCHEDULER__NO_WORKERS_TIMEOUT": "2s"}
    with dask_processes(2, tmp_path, timeout) as procs, connect(procs.address, 2) as client:
        killer = KillAll(procs, "initialising", replace=False)
        with pytest.raises((NoWorkerError, NoValidWorkerError), match="timed out after 2.00 s waiting"):
            job(sample / "in", tmp_path / "out").run(client=client, progress=Progress([killer]))
    assert killer.killed == ["w0", "w1"] and not (tmp_path / "out" / "_manifest.json").exists()


# ---------------------------------------------------------------- write attempts (no Dask)


def one_group(x):
    part = Partition.from_normalised(0, "mem://0", 0, pa.array([f"doc-{i}" for i in range(len(x))]), x,
                                     pa.table({"text": [f"t{i}" for i in range(len(x))]}))
    columns = OutputColumns("id", "embedding", partition_stats(part).column_schema)
    assignment = assign_partition(part, x[[0, 100, 200]], 64)
    plan = plan_writes(assignment.summary.counts[None], max_rows=10_000)
    (piece,) = split_partition(part, assignment, plan.partition_bounds(0), columns)
    _, rows = plan.group_pieces(0)
    return plan.group_files(0), rows, piece


def test_a_write_attempt_never_leaves_a_partial_final_file(tmp_path, monkeypatch):
    files, rows, piece = one_group(blobs(300, 4, 3, seed=6))
    out = tmp_path / "out"
    real, targets = write.write_file, []

    def dies_midway(fs, path, table):  # a worker killed while writing: partial bytes, no cleanup
        targets.append(path)
        if len(targets) == 2:
            with fs.open_output_stream(path) as handle:
                handle.write(b"PAR1")
            raise KeyboardInterrupt("killed")
        real(fs, path, table)

    monkeypatch.setattr(write, "write_file", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        write.write_group(files, rows, str(out), {}, piece)
    assert all(f"/{write.ATTEMPTS_DIR}/" in t for t in targets)  # never the final name
    monkeypatch.setattr(write, "write_file", real)
    first = write.write_group(files, rows, str(out), {}, piece)  # Dask's re-run
    again = tree_hash(out)
    second = write.write_group(files, rows, str(out), {}, piece)  # a late duplicate attempt
    assert first == second and tree_hash(out) == again
    assert sorted(again) == sorted(f.path for f in files)  # the attempts' folders are gone
    (out / write.ATTEMPTS_DIR / "dead" / "centroid=0").mkdir(parents=True)  # one killed before its finally
    (out / write.ATTEMPTS_DIR / "dead" / "centroid=0" / "part-00000.parquet").write_bytes(b"PAR1")
    write_tasks.remove_attempts(fsspec.filesystem("file"), str(out))
    assert sorted(tree_hash(out)) == sorted(f.path for f in files)


LOST_ONCE = []


def write_group_lost_once(files, *args):
    """The first attempt of the group holding centroid 0 comes back as if its worker died."""
    if files[0].centroid == 0 and not LOST_ONCE:
        LOST_ONCE.append(files[0].path)
        raise KilledWorker("write_group-x", SimpleNamespace(address="tcp://127.0.0.1:1"), 3)
    return write.write_group(files, *args)


def test_a_write_group_lost_with_its_pieces_is_rebuilt_from_the_sources(tmp_path, monkeypatch):
    """Pieces Dask cannot recompute (partitions released): the group is written from a re-read."""
    x = blobs(2000, 8, 5, seed=23)
    write_input(tmp_path / "in", x, files=3)
    monkeypatch.setattr(stage_module, "rows_per_write_task", lambda *args: 300)

    def run(out, client):
        return KMeansStage(n_clusters=5, id_field="id", embedding_field="embedding", input_path=str(tmp_path / "in"),
                           output_path=str(out), metadata_fields=["text"], max_iter=5, report=False).run(client=client)

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        run(tmp_path / "ref", client)
        monkeypatch.setattr(stage_module, "write_group", write_group_lost_once)
        LOST_ONCE.clear()
        run(tmp_path / "out", client)
    assert LOST_ONCE
    assert outputs(tmp_path / "out") == outputs(tmp_path / "ref")


# ---------------------------------------------------------------- the fit's own recovery (in-process workers)

def lost_once(real, when, flag: Path):
    """`real`, except that its first call where `when(args, kwargs)` holds comes back as a lost
    worker. State in files: tasks may be pickled by value (the test module is not importable)."""
    def task(*args, **kwargs):
        if not flag.exists() and when(args, kwargs):
            flag.write_text(real.__name__)
            raise KilledWorker(real.__name__, SimpleNamespace(address="tcp://127.0.0.1:1"), 3)
        return real(*args, **kwargs)
    task.__name__ = real.__name__
    return task


@pytest.mark.parametrize("where", ["lloyd", "init"])
def test_fit_rebuilds_a_lost_step_or_init_round_with_identical_result(where, monkeypatch, tmp_path):
    from kmeans_partition.runner import fit as fit_module, group_tasks
    from dask_support import scatter_partitions

    x = blobs(3000, 8, 6, seed=41)

    def run():
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            parts, rows = scatter_partitions(client, x, 5)
            model = fit_module.DaskKMeans(client, parts, rows, 6, batch=256, random_state=3)
            return fit_module.fit(model, "k-means||", 2.0, max_iter=6, tol_abs=0.0), model.recoveries

    reference, none = run()
    flag, calls = tmp_path / "failed", tmp_path / "calls"
    if where == "lloyd":  # partition 2's step of the third iteration (it has a previous step with bounds)
        def when(args, kwargs):
            with calls.open("a") as handle:
                handle.write(".")
            return args[0].index == 2 and args[1] is not None and calls.stat().st_size > 10
        monkeypatch.setattr(group_tasks, "_lloyd_step", lost_once(group_tasks._lloyd_step, when, flag))
    else:  # a pass of the k-means|| sampling after the first candidates
        monkeypatch.setattr(fit_module.seeding, "nearest_candidate", lost_once(
            fit_module.seeding.nearest_candidate, lambda a, kw: kw.get("offset", 0) > 0, flag))
    got, recoveries = run()
    assert flag.exists() and none == [] and recoveries == [{"lloyd": "lloyd", "init": "k-means|| init"}[where]]
    assert got.centroids.tobytes() == reference.centroids.tobytes()
    assert got.inertia_history == reference.inertia_history and got.n_iter == reference.n_iter
