"""`gs://` end to end against a real GCS protocol server (gcp-storage-emulator on 127.0.0.1):
the job reads its input from and writes its output to the emulator, in memory and out of core,
with the same output in both modes and the same as a local run."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest

import gcs_support  # noqa: F401  (sets the gcsfs environment before gcsfs or the workers start)
from dask_support import blobs, dask_client, write_input  # noqa: F401
from kmeans_partition.credentials import option_problems
from kmeans_partition.runner.stage import KMeansStage

pytest.importorskip("gcsfs")
pytest.importorskip("gcp_storage_emulator")


@pytest.fixture(scope="module")
def gcs():
    with gcs_support.gcs_server("kmp-bucket") as server:
        yield server


def run(input_path, output_path, client, options, **changes):
    fields = dict(n_clusters=4, id_field="id", embedding_field="embedding", input_path=input_path,
                  output_path=output_path, metadata_fields=["text"], max_iter=10, storage_options=options)
    return KMeansStage(**{**fields, **changes}).run(client=client)


def outputs(fs, root: str) -> dict:
    """Every parquet file under `root` (relative name -> table) and the centroids' bytes."""
    files = sorted(p for p in fs.find(root) if p.endswith(".parquet"))
    tables = {p[len(root):]: pq.read_table(fs.open(p, "rb")) for p in files}
    return {"tables": tables, "centroids": fs.cat(f"{root}/kmeans_centroids.npy")}


def test_storage_options_are_on_the_credentials_allowlist(gcs):
    _, options = gcs
    assert option_problems(options, ["gs"]) == []


def test_round_trip_on_gcs_in_memory_and_out_of_core_give_identical_outputs(tmp_path, gcs, dask_client):
    _, options = gcs
    fs = fsspec.filesystem("gcs", **options)
    x = blobs(3000, 16, 4, seed=5, spread=0.4)
    for path in write_input(tmp_path / "in", x, files=3):
        fs.put(path, f"kmp-bucket/in/{path.rsplit('/', 1)[1]}")
    local = run(str(tmp_path / "in"), str(tmp_path / "local"), dask_client, {})
    results = {}
    for mode in ("in_memory", "out_of_core"):
        out = f"gs://kmp-bucket/out-{mode}"
        results[mode] = run("gs://kmp-bucket/in", out, dask_client, options, memory_mode=mode)
        assert results[mode]["memory_mode"]["mode"] == mode
        manifest = json.loads(fs.cat(f"kmp-bucket/out-{mode}/_manifest.json"))
        assert manifest["n_rows"] == 3000 and manifest["memory_mode"]["mode"] == mode
        assert manifest["input_files"] == [f"gs://kmp-bucket/in/part-{i:05d}.parquet" for i in range(3)]
    mem, ooc = outputs(fs, "kmp-bucket/out-in_memory"), outputs(fs, "kmp-bucket/out-out_of_core")
    assert mem["centroids"] == ooc["centroids"]
    assert list(mem["tables"]) == list(ooc["tables"]) and len(mem["tables"]) == 4
    for name, table in mem["tables"].items():
        assert table.equals(ooc["tables"][name]), name
    ids = [i for table in mem["tables"].values() for i in table.column("id").to_pylist()]
    assert sorted(ids) == sorted(f"doc-{j:06d}" for j in range(3000))  # every id once
    local_tables = {p.relative_to(tmp_path / "local").as_posix(): pq.read_table(p)
                    for p in sorted((tmp_path / "local").glob("centroid=*/*.parquet"))}
    assert {"/" + k: v for k, v in local_tables.items()}.keys() == mem["tables"].keys()
    for name, table in local_tables.items():
        assert table.equals(mem["tables"]["/" + name])
    assert results["in_memory"]["rows_per_centroid"] == local["rows_per_centroid"]
    assert np.array_equal(np.load(tmp_path / "local" / "kmeans_centroids.npy"),
                          np.load(__import__("io").BytesIO(mem["centroids"])))
