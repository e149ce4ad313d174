"""Assign-and-write phases on local files, checked against NumPy recomputation."""

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kmeans_partition.runner.partition import Partition, partition_stats
from kmeans_partition.runner.write import (
    FragmentParams,
    distances_to_assigned,
    embedding_array,
    merge_centroids,
    plan_merge_groups,
    write_fragment,
)
from distributed.protocol.pickle import dumps, loads

from dask_support import blobs


def make_partition(index, x, first_id):
    ids = pa.array([f"doc-{first_id + i}" for i in range(len(x))])
    meta = pa.table({"text": [f"text {first_id + i}" for i in range(len(x))]})
    return Partition.from_normalised(index, f"mem://{index}", first_id, ids, x, meta)


def write_all(tmp_path, parts, centroids, rows_per_file=1_000_000, max_rows=2_000_000):
    tmp_url = str(tmp_path / "out" / "_tmp-test")
    (tmp_path / "out" / "_tmp-test").mkdir(parents=True)
    schema = partition_stats(parts[0]).column_schema
    params = FragmentParams(50, tmp_url, {}, "id", "embedding", schema)
    frags = [write_fragment(p, centroids, params) for p in parts]
    counts = np.sum([f.counts for f in frags], axis=0)
    listing = [(f.path, f.present) for f in frags]
    written = []
    for group in plan_merge_groups(counts, max_rows):
        written += merge_centroids(group, listing, tmp_url, str(tmp_path / "out"), {}, rows_per_file)
    return frags, counts, written


def test_one_file_per_centroid_with_every_row_once(tmp_path):
    x = blobs(900, 8, 5, seed=1)
    parts = [make_partition(i, x[i * 300:(i + 1) * 300], i * 300) for i in range(3)]
    centroids = x[[0, 100, 200, 300, 400, 500]]
    frags, counts, written = write_all(tmp_path, parts, centroids, max_rows=250)
    assert sorted(c for c, _, _ in written) == list(np.flatnonzero(counts))
    seen = []
    for centroid, relative, rows in written:
        assert relative == f"centroid={centroid}/part-00000.parquet"
        table = pq.read_table(tmp_path / "out" / relative)
        assert table.num_rows == rows == counts[centroid]
        assert table.schema.field("embedding").type == pa.list_(pa.float32())
        ids = table.column("id").to_pylist()
        rows_idx = np.array([int(i.split("-")[1]) for i in ids])
        assert list(rows_idx) == sorted(rows_idx)  # input order kept inside a centroid
        emb = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
        np.testing.assert_array_equal(emb, x[rows_idx])
        d2 = ((x[rows_idx, None, :].astype(np.float64) - centroids[None].astype(np.float64)) ** 2).sum(-1)
        assert (d2.argmin(1) == centroid).all()
        c = centroids[centroid].astype(np.float64)
        np.testing.assert_allclose(table.column("l2_dist_to_cent").to_numpy(), np.sqrt(d2[:, centroid]), atol=1e-6)
        cos = 1 - x[rows_idx].astype(np.float64) @ c / np.linalg.norm(c)
        np.testing.assert_allclose(table.column("cosine_dist_to_cent").to_numpy(), cos, atol=1e-6)
        assert table.column("text").to_pylist() == [f"text {i}" for i in rows_idx]
        seen += ids
    assert sorted(seen) == sorted(f"doc-{i}" for i in range(900))


def test_large_centroid_split_past_rows_per_file(tmp_path):
    x = blobs(120, 4, 1, seed=2)
    parts = [make_partition(0, x, 0)]
    _, _, written = write_all(tmp_path, parts, x[:1], rows_per_file=50)
    assert [(c, p, r) for c, p, r in written] == [
        (0, "centroid=0/part-00000.parquet", 50),
        (0, "centroid=0/part-00001.parquet", 50),
        (0, "centroid=0/part-00002.parquet", 20),
    ]


def test_plan_merge_groups_bounds_rows_and_skips_empty():
    counts = np.array([5, 0, 5, 20, 1, 0, 1])
    assert plan_merge_groups(counts, 10) == [[0, 2], [3], [4, 6]]


def test_distances_are_float32_and_match_float64():
    x = blobs(50, 6, 2, seed=3)
    c = x[:3] * 0.5
    labels = np.arange(50) % 3
    l2, cos = distances_to_assigned(x, c, labels, 7)
    assert l2.dtype == np.float32 and cos.dtype == np.float32
    ref = np.linalg.norm(x.astype(np.float64) - c[labels].astype(np.float64), axis=1)
    np.testing.assert_allclose(l2, ref, rtol=1e-6)


@pytest.mark.parametrize("n,d", [(0, 3), (4, 3)])
def test_embedding_array_round_trip(n, d):
    x = np.arange(n * d, dtype=np.float32).reshape(n, d)
    arr = embedding_array(x)
    assert arr.type == pa.list_(pa.float32())
    assert np.array(arr.to_pylist(), dtype=np.float32).reshape(n, d).tolist() == x.tolist()


def test_embedding_array_splits_before_int32_offsets_overflow():
    x = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    arr = embedding_array(x, max_values=7)  # 2 rows (6 values) per chunk
    assert [len(chunk) for chunk in arr.chunks] == [2, 2, 1]
    assert arr.type == pa.list_(pa.float32())
    assert np.array(arr.to_pylist(), dtype=np.float32).tolist() == x.tolist()


def test_fragment_params_survive_dask_pickling_and_are_frozen():
    schema = pa.schema([("id", pa.large_string()), ("text", pa.string())])
    params = FragmentParams(64, "memory://out/_tmp-1", {"anon": True}, "doc_id", "vec", schema)
    restored = loads(dumps(params))
    assert restored == params and restored is not params
    assert restored.column_schema.equals(schema)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.batch = 1
