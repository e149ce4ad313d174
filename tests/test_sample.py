"""Synthetic sample: deterministic, uneven clusters, unit norms, planted duplicates."""

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from io_support import read_all
from kmeans_partition.runner.sample import write_sample


def load(directory, fmt="parquet"):
    (chunks, _) = read_all(str(directory), fmt, metadata_fields=["text"], normalise=False)
    ids = [i for chunk in chunks for i in chunk.ids.to_pylist()]
    texts = [t for chunk in chunks for t in chunk.metadata.column("text").to_pylist()]
    return ids, texts, np.concatenate([chunk.embeddings for chunk in chunks])


def near_duplicate_rows(vectors, threshold=0.9999):
    """Rows whose nearest other row has cosine similarity above `threshold`."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -1)
    return int((sims.max(axis=1) > threshold).sum())


def test_files_columns_ids_and_unit_norms(tmp_path):
    files = write_sample(str(tmp_path / "s"), rows=1001, dim=16, clusters=5, files=3, seed=3)
    assert files == [f"file://{tmp_path}/s/part-{i:05d}.parquet" for i in range(3)]
    schema = pq.read_schema(tmp_path / "s" / "part-00000.parquet")
    embedding_type = schema.field("embedding").type
    assert schema.names == ["id", "text", "embedding"]
    assert pa.types.is_list(embedding_type) and embedding_type.value_type == pa.float32()
    ids, texts, vectors = load(tmp_path / "s")
    assert ids == [f"doc-{i:06d}" for i in range(1001)]
    assert vectors.shape == (1001, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors.astype(np.float64), axis=1), 1.0, atol=1e-6)
    assert all(re.fullmatch(r"topic \d+: [a-z ()]+", text) for text in texts)


def test_deterministic_per_seed(tmp_path):
    write_sample(str(tmp_path / "a"), rows=300, dim=8, clusters=4, duplicates=0.1, files=2, seed=7)
    write_sample(str(tmp_path / "b"), rows=300, dim=8, clusters=4, duplicates=0.1, files=2, seed=7)
    write_sample(str(tmp_path / "c"), rows=300, dim=8, clusters=4, duplicates=0.1, files=2, seed=8)
    a, b, c = (load(tmp_path / name) for name in "abc")
    assert a[:2] == b[:2] and np.array_equal(a[2], b[2])
    assert not np.array_equal(a[2], c[2])


def test_cluster_sizes_are_uneven(tmp_path):
    write_sample(str(tmp_path / "s"), rows=4000, dim=8, clusters=8, seed=1)
    _, texts, vectors = load(tmp_path / "s")
    labels = np.array([int(text.split(":")[0].split()[1]) for text in texts])
    sizes = np.bincount(labels, minlength=8)
    assert sizes.min() > 0 and sizes.max() >= 4 * sizes.min()
    # rows sit near their own cluster's centre: their label's mean is the closest mean
    means = np.stack([vectors[labels == k].mean(axis=0) for k in range(8)])
    assert (np.argmax(vectors @ means.T, axis=1) == labels).mean() > 0.95


def test_planted_near_duplicates(tmp_path):
    write_sample(str(tmp_path / "dup"), rows=1000, dim=32, clusters=5, duplicates=0.1, seed=2)
    write_sample(str(tmp_path / "none"), rows=1000, dim=32, clusters=5, duplicates=0.0, seed=2)
    _, texts, vectors = load(tmp_path / "dup")
    planted = sum(text.endswith("(repost)") for text in texts)
    assert planted == 100
    # each copy and (at least one) original are near-duplicates of each other
    assert 100 < near_duplicate_rows(vectors) <= 200
    assert near_duplicate_rows(load(tmp_path / "none")[2]) == 0


def test_jsonl_format_reads_back(tmp_path):
    files = write_sample(str(tmp_path / "s"), rows=50, dim=4, clusters=3, fmt="jsonl", files=2, seed=5)
    assert [f.rsplit("/", 1)[1] for f in files] == ["part-00000.jsonl", "part-00001.jsonl"]
    write_sample(str(tmp_path / "p"), rows=50, dim=4, clusters=3, fmt="parquet", files=2, seed=5)
    ids, texts, vectors = load(tmp_path / "s", "jsonl")
    assert (ids, texts) == load(tmp_path / "p")[:2]
    np.testing.assert_array_equal(vectors, load(tmp_path / "p")[2])


def test_refuses_non_empty_directory_and_bad_arguments(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        write_sample(str(tmp_path / "full"), rows=10, dim=4, clusters=2)
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    assert len(write_sample(str(tmp_path / "empty"), rows=10, dim=4, clusters=2)) == 1
    for bad in [dict(rows=0), dict(clusters=11), dict(duplicates=1.0), dict(files=11), dict(fmt="csv")]:
        args = dict(rows=10, dim=4, clusters=2) | bad
        with pytest.raises(ValueError):
            write_sample(str(tmp_path / "new"), **args)


def test_writes_to_s3(s3_server):
    import s3_support

    endpoint, options = s3_server
    bucket = s3_support.create_bucket(endpoint, "sample-test")
    files = write_sample(f"{bucket}/s", rows=40, dim=4, clusters=2, files=2, storage_options=options)
    assert files == [f"{bucket}/s/part-00000.parquet", f"{bucket}/s/part-00001.parquet"]
    chunks, _ = read_all(f"{bucket}/s", storage_options=options)
    assert sum(len(chunk) for chunk in chunks) == 40
    with pytest.raises(FileExistsError):
        write_sample(f"{bucket}/s", rows=40, dim=4, clusters=2, storage_options=options)
