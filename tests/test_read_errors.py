"""One test per bad-input case: the error names file, row and field; inputs stay byte-identical."""

import numpy as np
import pyarrow as pa
import pytest

from io_support import read_all, tree_hash, write_jsonl, write_parquet
from kmeans_partition.runner.read import InputError, discover_files

GOOD = [[1.0, 2.0, 3.0], [0.5, 0.0, 1.0], [3.0, 1.0, 2.0]]


def expect_error(root, path, match, row=None, field=None, filetype=None, **read_kw):
    """Read `path` through READ + NORMALISE; check the InputError and that `root` is unchanged."""
    filetype = filetype or ("jsonl" if str(path).endswith(".jsonl") else "parquet")
    before = tree_hash(root)
    with pytest.raises(InputError, match=match) as caught:
        read_all(str(path), filetype, **read_kw)
    error, message = caught.value, str(caught.value)
    assert tree_hash(root) == before, "input files were modified"
    uri = str(path) if "://" in str(path) else f"file://{path}"
    assert error.source == uri and message.startswith(uri)
    assert error.row == row
    assert error.field == field
    if row is not None:
        assert f"row {row}" in message
    if field is not None:
        assert f"field '{field}'" in message
    return error


@pytest.mark.parametrize("filetype", ["parquet", "jsonl"])
@pytest.mark.parametrize("missing", ["id", "embedding", "title"])
def test_missing_column(tmp_path, filetype, missing):
    records = [{"id": f"d{i}", "embedding": vector, "title": "t"} for i, vector in enumerate(GOOD)]
    records = [{key: value for key, value in record.items() if key != missing} for record in records]
    if filetype == "jsonl":
        path = write_jsonl(tmp_path / "x.jsonl", records)
    else:
        path = tmp_path / "x.parquet"
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    expect_error(tmp_path, path, "column not found", field=missing, metadata_fields=["title"])


def test_null_id(tmp_path):
    path = write_parquet(tmp_path / "x.parquet", GOOD, ids=["a", None, "c"])
    expect_error(tmp_path, path, "id is missing or null", row=1, field="id")


@pytest.mark.parametrize("filetype", ["parquet", "jsonl"])
def test_null_embedding(tmp_path, filetype):
    rows = [GOOD[0], GOOD[1], None]
    if filetype == "parquet":
        path = write_parquet(tmp_path / "x.parquet", rows)
    else:
        path = write_jsonl(tmp_path / "x.jsonl", [{"id": str(i), "embedding": v} for i, v in enumerate(rows)])
    expect_error(tmp_path, path, "missing or null", row=2, field="embedding")


@pytest.mark.parametrize("filetype", ["parquet", "jsonl"])
def test_ragged_embeddings(tmp_path, filetype):
    rows = [GOOD[0], GOOD[1], [1.0, 2.0], GOOD[2]]
    if filetype == "parquet":
        path = write_parquet(tmp_path / "x.parquet", rows, row_group_size=2)
    else:
        path = write_jsonl(tmp_path / "x.jsonl", [{"id": str(i), "embedding": v} for i, v in enumerate(rows)])
    expect_error(tmp_path, path, "length 2, expected 3 like row 0", row=2, field="embedding")


@pytest.mark.parametrize("list_kind", ["list", "fixed"])
def test_wrong_length_for_embedding_dim(tmp_path, list_kind):
    path = write_parquet(tmp_path / "x.parquet", GOOD, list_kind=list_kind)
    expect_error(tmp_path, path, "length 3, expected embedding_dim=4", row=0, field="embedding", embedding_dim=4)


def test_empty_embedding(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"id": "a", "embedding": []}])
    expect_error(tmp_path, path, "empty", row=0, field="embedding")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("value_type", [pa.float16(), pa.float64()], ids=str)
def test_nan_or_inf_parquet(tmp_path, bad, value_type):
    rows = [GOOD[0], GOOD[1], [1.0, bad, 2.0]]
    path = write_parquet(tmp_path / "x.parquet", rows * 2, value_type=value_type, row_group_size=3)
    expect_error(tmp_path, path, "NaN or Inf", row=2)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_nan_or_inf_jsonl(tmp_path, literal):
    lines = ['{"id": "a", "embedding": [1, 2, 3]}', '{"id": "b", "embedding": [1, %s, 3]}' % literal]
    path = write_jsonl(tmp_path / "x.jsonl", lines)
    expect_error(tmp_path, path, "NaN or Inf", row=1)


def test_value_beyond_float32_range_is_inf(tmp_path):
    path = write_parquet(tmp_path / "x.parquet", [GOOD[0], [1e39, 0.0, 1.0]], value_type=pa.float64())
    expect_error(tmp_path, path, "NaN or Inf", row=1)


@pytest.mark.parametrize(
    "value, match",
    [('"0.5"', "non-numeric"), ("[0.5]", "non-numeric"), ("true", "non-numeric"), ("null", "non-numeric")],
)
def test_non_numeric_values_jsonl(tmp_path, value, match):
    lines = ['{"id": "a", "embedding": [1, 2, 3]}'] * 3 + ['{"id": "b", "embedding": [1, %s, 3]}' % value]
    path = write_jsonl(tmp_path / "x.jsonl", lines)
    expect_error(tmp_path, path, match, row=3, field="embedding")


@pytest.mark.parametrize("value", ['"1,2,3"', '{"x": 1}', "7"])
def test_embedding_not_an_array_jsonl(tmp_path, value):
    lines = ['{"id": "a", "embedding": [1, 2, 3]}', '{"id": "b", "embedding": %s}' % value]
    path = write_jsonl(tmp_path / "x.jsonl", lines)
    expect_error(tmp_path, path, "must be a JSON array", row=1, field="embedding")


@pytest.mark.parametrize(
    "column",
    [pa.array([["1", "2"], ["3", "4"]], pa.list_(pa.string())), pa.array(["1,2", "3,4"]), pa.array([1.0, 2.0])],
    ids=["list-of-strings", "string", "scalar"],
)
def test_non_numeric_embedding_column_parquet(tmp_path, column):
    import pyarrow.parquet as pq

    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "embedding": column}), path)
    expect_error(tmp_path, path, "embedding", field="embedding")


def test_null_value_inside_embedding_parquet(tmp_path):
    path = write_parquet(tmp_path / "x.parquet", [GOOD[0], GOOD[1], [1.0, None, 2.0]])
    expect_error(tmp_path, path, "null", row=2, field="embedding")


def test_zero_vector(tmp_path):
    path = write_parquet(tmp_path / "x.parquet", [GOOD[0], GOOD[1], GOOD[2], [0.0, 0.0, 0.0]], row_group_size=2)
    expect_error(tmp_path, path, "zero vector and cannot be normalised", row=3, target_rows=1)


def test_float16_vector_too_small_to_survive_is_zero(tmp_path):
    path = write_parquet(tmp_path / "x.parquet", [GOOD[0], [1e-9, 0.0, 0.0]], value_type=pa.float16())
    expect_error(tmp_path, path, "zero vector", row=1)


@pytest.mark.parametrize("line", ['{"id": "b", "embedding": [1, 2', "[1, 2, 3]", "not json"])
def test_unparsable_jsonl_line(tmp_path, line):
    path = write_jsonl(tmp_path / "x.jsonl", ['{"id": "a", "embedding": [1, 2, 3]}', "", line])
    error = expect_error(tmp_path, path, "JSON", row=1)
    assert "line 3" in str(error)


def test_mixed_id_types_jsonl(tmp_path):
    lines = ['{"id": "a", "embedding": [1, 2]}', '{"id": 2, "embedding": [1, 2]}']
    path = write_jsonl(tmp_path / "x.jsonl", lines)
    expect_error(tmp_path, path, "incompatible types", row=1, field="id")


@pytest.mark.parametrize("content", [b"", b"PAR1 this is not parquet", b"PAR1" + bytes(100) + b"PAR1"])
def test_unreadable_parquet(tmp_path, content):
    path = tmp_path / "x.parquet"
    path.write_bytes(content)
    expect_error(tmp_path, path, "not a readable parquet file")


def test_missing_path(tmp_path):
    expect_error(tmp_path, tmp_path / "nope.parquet", "does not exist")


@pytest.mark.parametrize("pattern", ["*.parquet", "sub/"])
def test_glob_or_directory_without_files(tmp_path, pattern):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("x")
    target = tmp_path / pattern
    match = "glob matched no" if "*" in pattern else "directory holds no"
    with pytest.raises(InputError, match=match) as caught:
        discover_files([str(target)], "parquet", {})
    assert str(target) in str(caught.value)


def test_wrong_extension_given_explicitly(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("id,embedding\n")
    with pytest.raises(InputError, match="unsupported file type") as caught:
        discover_files([str(path)], "parquet", {})
    assert caught.value.source == f"file://{path}"


def test_unsupported_input_filetype(tmp_path):
    write_parquet(tmp_path / "x.parquet", GOOD)
    with pytest.raises(InputError, match="unsupported input file type 'csv'") as caught:
        discover_files([str(tmp_path)], "csv", {})
    assert caught.value.field == "input_filetype"


def test_error_row_counts_from_start_of_file_across_partitions(tmp_path):
    rows = np.ones((10, 3), np.float32)
    rows[7] = 0
    path = write_parquet(tmp_path / "x.parquet", rows, row_group_size=2)
    expect_error(tmp_path, path, "zero vector", row=7, target_rows=3)
