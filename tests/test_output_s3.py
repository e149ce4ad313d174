"""`overwrite` on S3 (moto server on 127.0.0.1) deletes exact names only, never a pattern:
the cases issue 10 found deleting other data now refuse or leave it alone."""

from __future__ import annotations

import uuid

import boto3
import pytest

from kmeans_partition.runner.output import OutputError, check_writable, clear_previous, open_output
from kmeans_partition.runner.stage import KMeansStage
from kmeans_partition.spec import SpecError
import s3_support

OURS = ["_manifest.json", "kmeans_centroids.npy", "centroid=0/part-00000.parquet", "centroid=1/part-00000.parquet"]


@pytest.fixture
def bucket(s3_server):
    endpoint, options = s3_server
    name = f"bkt-{uuid.uuid4().hex[:12]}"  # (hash(object()) repeated: a freed object's address comes back)
    s3_support.create_bucket(endpoint, name)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

    def put(*keys: str) -> None:
        for key in keys:
            client.put_object(Bucket=name, Key=key, Body=b"x")

    def keys() -> list[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=name)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    return name, options, put, keys


def _stage(output: str, options: dict) -> KMeansStage:
    return KMeansStage(n_clusters=2, id_field="id", embedding_field="e", input_path="s3://elsewhere/in",
                       output_path=output, storage_options=options, overwrite=True)


@pytest.mark.parametrize("pattern", ["out*", "run[1]"])
def test_glob_outputs_are_refused_and_nothing_is_deleted(bucket, pattern):
    name, options, put, keys = bucket
    put(*(f"out/{k}" for k in OURS), *(f"out-prod/{k}" for k in OURS), *(f"run1/{k}" for k in OURS))
    before = keys()
    with pytest.raises(SpecError, match="output_path: .*glob characters"):
        _stage(f"s3://{name}/{pattern}", options).run()
    with pytest.raises(OutputError, match="glob characters"):  # the runner's own check, below the model
        open_output(f"s3://{name}/{pattern}", options)
    assert keys() == before


def test_a_foreign_file_inside_a_centroid_folder_makes_overwrite_refuse(bucket):
    name, options, put, keys = bucket
    put(*(f"out/{k}" for k in OURS), "out/centroid=1/notes.txt")
    before = keys()
    with pytest.raises(OutputError, match=r"did not write \(centroid=1/notes.txt\)"):
        _stage(f"s3://{name}/out", options).run()  # refused before any work
    assert keys() == before


def test_overwrite_deletes_exactly_the_listing_and_spares_a_sibling_prefix(bucket, monkeypatch):
    name, options, put, keys = bucket
    put(*(f"out/{k}" for k in OURS), *(f"out2/{k}" for k in OURS), "out/centroid=0/")  # + a folder marker
    location = open_output(f"s3://{name}/out", options)
    listed = check_writable(location, overwrite=True)
    assert listed == sorted(OURS)
    calls = []
    real_rm = location.fs.rm
    monkeypatch.setattr(location.fs, "rm", lambda paths, **kw: (calls.append((list(paths), kw)), real_rm(paths, **kw)))
    put("out/centroid=1/part-00001.parquet")  # written after the listing: not ours to delete
    clear_previous(location, listed)
    assert calls[0] == ([f"{name}/out/_manifest.json"], {})  # the manifest first
    assert all(kw == {} for _, kw in calls)  # never recursive
    assert sorted(p for paths, _ in calls for p in paths) == sorted(f"{name}/out/{k}" for k in OURS)
    assert keys() == sorted(["out/centroid=0/", "out/centroid=1/part-00001.parquet", *(f"out2/{k}" for k in OURS)])
