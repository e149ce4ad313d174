"""What a worker process loads besides the data: no pandas from the job's tasks, no CLI from the
console script (measured in real worker processes of an embedded LocalCluster)."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from dask_support import blobs
from io_support import write_parquet

ROOT = Path(__file__).resolve().parents[1]


def loaded():
    return sorted(m for m in ("pandas", "pydantic", "scipy.sparse") if m in sys.modules)


def test_a_worker_running_the_job_never_loads_pandas_nor_the_spec_models(tmp_path, monkeypatch):
    """pyarrow loads pandas (~35 MiB a worker) on `pa.array` and `to_numpy`; the job's worker tasks
    (read, fit, assign, write, the duplicate count) go through buffers instead. The engine's probe
    runs from `worker_probe`, which does not import the spec (pydantic, ~9 MiB). The Lloyd sums use
    scipy's kernel without scipy.sparse (~13 MiB, `host_sums`)."""
    from kmeans_partition.runner.cluster import dask_client
    from kmeans_partition.runner.stage import KMeansStage

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    x = blobs(2000, 16, 4, seed=5)
    (tmp_path / "in").mkdir()
    for f in range(2):
        rows = slice(f * 1000, (f + 1) * 1000)
        write_parquet(tmp_path / "in" / f"part-{f}.parquet", x[rows], ids=[f"doc-{i}" for i in range(2000)][rows],
                      extra={"text": [f"t{i}" for i in range(1000)], "n": list(range(1000))}, row_group_size=300)
    stage = KMeansStage(n_clusters=4, id_field="id", embedding_field="embedding", input_path=str(tmp_path / "in"),
                        output_path=str(tmp_path / "out"), metadata_fields=["text", "n"], max_iter=3,
                        write_second_centroid=True)
    with dask_client(None, n_workers=1) as client:
        assert list(client.run(loaded).values()) == [[]]  # before the job: the control
        result = stage.run(client=client)
        assert list(client.run(loaded).values()) == [[]]
    assert result["n_rows"] == 2000 and os.path.exists(tmp_path / "out" / "_manifest.json")


def test_workers_started_under_the_console_script_do_not_load_the_cli(tmp_path):
    """Spawned workers re-run the parent's main script: a script like pip's for our entry point
    (its target read from pyproject.toml) must not pull pydantic into them (kmeans_partition.cli did)."""
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["kmeans-partition"]
    module, function = target.split(":")
    script = tmp_path / "kmeans-partition"
    script.write_text(
        f"import sys\nfrom {module} import {function}\n"
        "def loaded():\n    import sys\n    return sorted(m for m in ('pydantic', 'pandas') if m in sys.modules)\n"
        "if __name__ == '__main__':\n"
        "    from kmeans_partition.runner.cluster import dask_client\n"
        "    with dask_client(None, n_workers=1) as client:\n"
        "        print(list(client.run(loaded).values()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[[]]"
