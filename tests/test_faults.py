"""Lost workers: SIGKILL one of 3 real `dask worker` processes during read, init, Lloyd, assign and
write; the run completes and its output equals an undisturbed run's (files, centroids, manifest
except timings and the work counters that depend on which rows the bounds skipped).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kmeans_partition.runner.progress import Progress
from kmeans_partition.runner.sample import write_sample
from kmeans_partition.runner.stage import KMeansStage
from fault_support import KillWorker, connect, dask_processes
from io_support import tree_hash

# Differ between two identical runs: when, how long, where, and which workers.
VARYING_KEYS = ("created", "timings", "manifest_path", "centroids_path", "report_path", "engine")

#: (event that triggers the kill, its count): the kill lands inside the phase.
PHASES = {
    "read": ("reading", 1, "load_partition"),
    "init": ("initialising", 1, "nearest_candidate"),
    "lloyd": ("iteration", 2, "lloyd_step"),
    "assign": ("assigning", 1, "assign_partition"),
    "write": ("writing", 1, "write_group"),
}


def job(input_dir: Path, output: Path) -> KMeansStage:
    return KMeansStage(
        n_clusters=30, id_field="id", embedding_field="embedding", input_path=str(input_dir),
        output_path=str(output), metadata_fields=["text"], max_samples_per_batch=512, max_iter=10,
        tol=0.0, report=False,
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
def reference(sample):
    with dask_processes(3, sample) as (address, _), connect(address, 3) as client:
        job(sample / "in", sample / "ref").run(client=client)
    return outputs(sample / "ref")


@pytest.mark.parametrize("phase", list(PHASES))
def test_run_survives_a_killed_worker(phase, sample, reference, tmp_path):
    with dask_processes(3, tmp_path) as (address, workers), connect(address, 3) as client:
        killer = KillWorker(client, workers, *PHASES[phase])
        job(sample / "in", tmp_path / "out").run(client=client, progress=Progress([killer]))
        killer.watcher.join()
    assert killer.killed is not None, f"no worker was killed during {phase}"
    got = outputs(tmp_path / "out")
    assert got["manifest"] == reference["manifest"]
    assert got["files"] == reference["files"]
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(("_attempt", "."))]
