"""s3:// input -> s3:// output against a real S3 protocol server, with the embedded defaults
(the job starts its own LocalCluster), and the `sample` command the quickstart uses."""

import json

import numpy as np
import pyarrow.parquet as pq
import s3fs

from kmeans_partition.cli import main
from kmeans_partition.runner.sample import write_sample
from kmeans_partition.runner.stage import KMeansStage
import s3_support


def test_s3_in_s3_out_with_embedded_local_cluster(s3_server):
    endpoint, options = s3_server
    bucket = s3_support.create_bucket(endpoint, "kmp-roundtrip")
    inputs = write_sample(f"{bucket}/in", rows=3000, dim=16, clusters=5, duplicates=0.1, files=3,
                          seed=4, storage_options=options)
    fs = s3fs.S3FileSystem(**options)
    before = {path: fs.info(path)["ETag"] for path in fs.find(f"{bucket}/in")}
    result = KMeansStage(
        n_clusters=5, id_field="id", embedding_field="embedding", input_path=f"{bucket}/in",
        output_path=f"{bucket}/out", metadata_fields=["text"], storage_options=options,
    ).run()
    assert len(inputs) == 3 and result["n_rows"] == 3000
    assert {path: fs.info(path)["ETag"] for path in fs.find(f"{bucket}/in")} == before
    fs.invalidate_cache()
    manifest = json.loads(fs.cat(f"{bucket}/out/_manifest.json"))
    assert manifest["spec"]["storage_options"]["secret"] == "***"
    ids = []
    for entry in manifest["files"]:
        with fs.open(f"{bucket}/out/{entry['path']}", "rb") as handle:
            table = pq.read_table(handle)
        assert table.num_rows == entry["rows"]
        assert entry["path"].startswith(f"centroid={entry['centroid']}/")
        ids += table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 3000
    with fs.open(f"{bucket}/out/kmeans_centroids.npy", "rb") as handle:
        assert np.load(handle).shape == (5, 16)
    assert not fs.glob(f"{bucket}/out/_tmp-*")


def test_sample_command_then_run_command(tmp_path, capsys):
    assert main(["sample", "--output", str(tmp_path / "in"), "--rows", "800", "--dim", "8",
                 "--clusters", "4", "--files", "2", "--format", "jsonl"]) == 0
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["part-00000.jsonl", "part-00001.jsonl"]
    assert main(["run", "--input", str(tmp_path / "in"), "--input-filetype", "jsonl",
                 "--output", str(tmp_path / "out"), "--n-clusters", "4", "--id-field", "id",
                 "--embedding-field", "embedding", "--quiet"]) == 0
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["n_rows"] == 800 and sum(manifest["rows_per_centroid"]) == 800
