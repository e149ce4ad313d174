"""READ stage: discovery, partition planning, dtypes, JSONL, metadata, S3 (moto)."""

import pickle

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from io_support import embedding_array, read_all, write_jsonl, write_parquet
from kmeans_partition.runner.read import (
    InputError,
    PartitionRef,
    RawChunk,
    discover_files,
    plan_partitions,
    read_partition,
)


def vectors(rows: int, dim: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)


@pytest.fixture
def tree(tmp_path):
    """data/a.parquet, data/sub/b.parquet plus entries discovery must skip."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "_temporary").mkdir()
    write_parquet(data / "a.parquet", vectors(3))
    write_parquet(data / "sub" / "b.parquet", vectors(2, seed=1))
    write_parquet(data / "_temporary" / "c.parquet", vectors(2))
    write_parquet(data / ".hidden.parquet", vectors(2))
    (data / "notes.txt").write_text("not data")
    return data


def test_directory_is_searched_recursively_sorted_and_skips_hidden(tree):
    files = discover_files([str(tree)], "parquet", {})
    assert files == [f"file://{tree}/a.parquet", f"file://{tree}/sub/b.parquet"]
    for uri in files:
        with fsspec.open(uri, "rb") as handle:
            assert handle.read(4) == b"PAR1"


def test_glob_file_uri_list_and_relative_paths(tree, monkeypatch):
    a, b = f"file://{tree}/a.parquet", f"file://{tree}/sub/b.parquet"
    assert discover_files([f"{tree}/*.parquet"], "parquet", {}) == [a]
    assert discover_files([f"{tree}/**/*.parquet"], "parquet", {}) == [a, b]
    assert discover_files([f"file://{tree}/sub"], "parquet", {}) == [b]
    assert discover_files([f"{tree}/*"], "parquet", {}) == [a, b]  # a matched directory is searched
    assert discover_files([b, str(tree / "a.parquet"), a], "parquet", {}) == [a, b]
    assert discover_files(f"{tree}/a.parquet", "parquet", {}) == [a]
    monkeypatch.chdir(tree)
    assert discover_files(["sub/b.parquet"], "parquet", {}) == [b]


def test_jsonl_discovery_only_takes_jsonl(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"id": "a", "embedding": [1, 2]}])
    write_parquet(tmp_path / "y.parquet", vectors(1))
    assert discover_files([str(tmp_path)], "jsonl", {}) == [f"file://{tmp_path}/x.jsonl"]


@pytest.mark.parametrize("list_kind", ["list", "large", "fixed"])
@pytest.mark.parametrize("value_type", [pa.float16(), pa.float32(), pa.float64(), pa.int32()], ids=str)
def test_every_embedding_dtype_becomes_float32(tmp_path, list_kind, value_type):
    raw = vectors(7, dim=5) * 10
    expected = raw.astype(value_type.to_pandas_dtype()).astype(np.float32)
    write_parquet(tmp_path / "x.parquet", expected, list_kind=list_kind, value_type=value_type, row_group_size=3)
    (chunk,), _ = read_all(str(tmp_path), normalise=False)
    assert chunk.embeddings.dtype == np.float32 and chunk.embeddings.flags.c_contiguous
    np.testing.assert_array_equal(chunk.embeddings, expected)
    assert chunk.ids.to_pylist() == [f"doc-{i}" for i in range(7)]


def test_plan_partitions_groups_consecutive_row_groups(tmp_path):
    data = vectors(1000, dim=3)
    path = write_parquet(tmp_path / "x.parquet", data, row_group_size=100)
    refs = plan_partitions([f"file://{path}"], "parquet", {}, target_rows=250)
    assert [ref.row_groups for ref in refs] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert [ref.row_offset for ref in refs] == [0, 300, 600, 900]
    assert [ref.num_rows for ref in refs] == [300, 300, 300, 100]
    chunks = [read_partition(ref, "id", "embedding", None, "parquet", {}) for ref in refs]
    assert [chunk.row_offset for chunk in chunks] == [0, 300, 600, 900]
    np.testing.assert_array_equal(np.concatenate([chunk.embeddings for chunk in chunks]), data)
    ids = [i for chunk in chunks for i in chunk.ids.to_pylist()]
    assert ids == [f"doc-{i}" for i in range(1000)]


def test_plan_partitions_file_order_jsonl_and_empty_parquet(tmp_path):
    empty = tmp_path / "a.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "embedding": embedding_array([[1.0]])[:0]}), empty)
    full = write_parquet(tmp_path / "b.parquet", vectors(5))
    files = discover_files([str(tmp_path)], "parquet", {})
    refs = plan_partitions(files, "parquet", {}, target_rows=2)
    assert [ref.path for ref in refs] == [f"file://{empty}"] + [f"file://{full}"]
    assert refs[0].num_rows == 0 and refs[1].num_rows == 5
    chunk = read_partition(refs[0], "id", "embedding", None, "parquet", {})
    assert len(chunk) == 0 and chunk.embeddings.shape[0] == 0
    no_row_groups = tmp_path / "c.parquet"
    schema = pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float32(), 3))])
    pq.ParquetWriter(no_row_groups, schema).close()
    (ref,) = plan_partitions([f"file://{no_row_groups}"], "parquet", {})
    assert ref.row_groups == [] and ref.num_rows == 0
    chunk = read_partition(ref, "id", "embedding", None, "parquet", {})
    assert chunk.embeddings.shape == (0, 3)
    jsonl = [f"file://{tmp_path}/{n}.jsonl" for n in ("p", "q")]
    assert plan_partitions(jsonl, "jsonl", {}) == [PartitionRef(path, None, 0, None) for path in jsonl]


def test_metadata_columns_are_carried_in_order(tmp_path):
    extra = {"text": ["x", "y", None], "score": [1.5, 2.5, 3.5], "lang": ["en", "fr", "de"]}
    write_parquet(tmp_path / "x.parquet", vectors(3), extra=extra)
    (chunk,), _ = read_all(str(tmp_path), metadata_fields=["lang", "text"])
    assert chunk.metadata.column_names == ["lang", "text"]
    assert chunk.metadata.to_pydict() == {"lang": ["en", "fr", "de"], "text": ["x", "y", None]}


def test_chunk_without_metadata_keeps_row_count_through_pickle(tmp_path):
    write_parquet(tmp_path / "x.parquet", vectors(4))
    (chunk,), _ = read_all(str(tmp_path))
    assert chunk.metadata.num_columns == 0 and chunk.metadata.num_rows == 4
    copy = pickle.loads(pickle.dumps(chunk))
    assert isinstance(copy, RawChunk) and copy.metadata.num_rows == 4
    np.testing.assert_array_equal(copy.embeddings, chunk.embeddings)
    assert copy.ids.equals(chunk.ids) and copy.source == chunk.source


def test_input_error_pickles_with_its_fields():
    error = pickle.loads(pickle.dumps(InputError("bad value", "s3://b/k.parquet", row=7, field="embedding")))
    assert (error.source, error.row, error.field) == ("s3://b/k.parquet", 7, "embedding")
    assert str(error) == "s3://b/k.parquet: row 7, field 'embedding': bad value"


def test_jsonl_fast_path_blank_lines_ints_and_metadata(tmp_path, monkeypatch):
    from kmeans_partition.runner import jsonl

    monkeypatch.setattr(jsonl, "_parse_slow", None)  # must not be needed for well-formed files
    records = [
        {"id": "a", "embedding": [1, 2, 3], "text": "one"},
        "",
        {"id": "b", "embedding": [0.5, -2.0, 3.25]},
    ]
    write_jsonl(tmp_path / "x.jsonl", records)
    (chunk,), _ = read_all(str(tmp_path), "jsonl", metadata_fields=["text"], normalise=False)
    np.testing.assert_array_equal(chunk.embeddings, np.array([[1, 2, 3], [0.5, -2, 3.25]], np.float32))
    assert chunk.ids.to_pylist() == ["a", "b"]
    assert chunk.metadata.to_pydict() == {"text": ["one", None]}


def test_jsonl_slow_path_reads_file_pyarrow_refuses(tmp_path):
    # An unneeded column that changes type makes pyarrow.json refuse the file.
    records = [{"id": i, "embedding": [i, 1.0], "other": "x" if i % 2 else 5} for i in range(1, 5)]
    write_jsonl(tmp_path / "x.jsonl", records)
    (chunk,), (unit,) = read_all(str(tmp_path), "jsonl")
    assert chunk.ids.to_pylist() == [1, 2, 3, 4]
    np.testing.assert_array_equal(chunk.embeddings[:, 0], [1, 2, 3, 4])
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1, rtol=1e-6)


def test_empty_files_give_zero_rows(tmp_path):
    (tmp_path / "x.jsonl").write_text("\n \n")
    (chunk,), _ = read_all(str(tmp_path), "jsonl", metadata_fields=["text"], embedding_dim=8)
    assert len(chunk) == 0 and chunk.embeddings.shape == (0, 8)
    assert chunk.metadata.column_names == ["text"]


def test_s3_file_directory_and_glob(s3_server, tmp_path):
    import s3_support

    endpoint, options = s3_server
    bucket = s3_support.create_bucket(endpoint, "read-test")
    fs = fsspec.filesystem("s3", **options)
    data = vectors(6, dim=3)
    write_parquet(tmp_path / "a.parquet", data[:4], ids=[f"a{i}" for i in range(4)], row_group_size=2)
    write_jsonl(tmp_path / "b.jsonl", [{"id": "b0", "embedding": data[4].tolist()}])
    fs.put(str(tmp_path / "a.parquet"), f"{bucket}/in/a.parquet")
    fs.put(str(tmp_path / "a.parquet"), f"{bucket}/in/deep/c.parquet")
    fs.put(str(tmp_path / "b.jsonl"), f"{bucket}/in/b.jsonl")
    expected = [f"{bucket}/in/a.parquet", f"{bucket}/in/deep/c.parquet"]
    assert discover_files([f"{bucket}/in"], "parquet", options) == expected
    assert discover_files([f"{bucket}/in/*.parquet"], "parquet", options) == expected[:1]
    chunks, unit = read_all(expected[0], storage_options=options, target_rows=2)
    assert [chunk.row_offset for chunk in chunks] == [0, 2]
    np.testing.assert_array_equal(np.concatenate([c.embeddings for c in chunks]), data[:4])
    (chunk,), _ = read_all(f"{bucket}/in", "jsonl", storage_options=options)
    assert chunk.source == f"{bucket}/in/b.jsonl" and chunk.ids.to_pylist() == ["b0"]
    with pytest.raises(InputError, match="does not exist") as caught:
        discover_files([f"{bucket}/nothing.parquet"], "parquet", options)
    assert caught.value.source == f"{bucket}/nothing.parquet"
