"""Each bad-input case through the whole job on a real LocalCluster: a clear error naming the
file (and row), the input byte-identical afterwards, and nothing written (no manifest)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from io_support import tree_hash, write_jsonl, write_parquet
from kmeans_partition.runner.read import InputError
from kmeans_partition.runner.stage import KMeansStage
from dask_support import dask_client  # noqa: F401

GOOD = [[1.0, 2.0, 3.0], [0.5, 0.0, 1.0], [3.0, 1.0, 2.0], [1.0, 1.0, 1.0]]


def parquet(name, vectors=GOOD, **kw):
    return lambda root: write_parquet(root / name, vectors, **kw)


def jsonl(name, records):
    return lambda root: write_jsonl(root / name, records)


def two_files(root):
    write_parquet(root / "a.parquet", GOOD)
    return write_parquet(root / "b.parquet", [v + [1.0] for v in GOOD], ids=["w", "x", "y", "z"])


def corrupt(root):
    path = root / "x.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    return path


def no_id_column(root):
    path = root / "x.parquet"
    pq.write_table(pa.table({"embedding": pa.array(GOOD, pa.list_(pa.float32()))}), path)
    return path


CASES = {
    "missing id column": (no_id_column, "column not found", None, {}),
    "missing embedding column": (parquet("x.parquet", embedding_field="vec"), "column not found", None, {}),
    "missing metadata column": (parquet("x.parquet"), "column not found", None, {"metadata_fields": ["title"]}),
    "ragged embeddings": (parquet("x.parquet", vectors=[[1.0, 2.0, 3.0], [1.0, 2.0]] + GOOD[2:]), "length", 1, {}),
    "wrong embedding_dim": (parquet("x.parquet"), "embedding_dim=4", 0, {"embedding_dim": 4}),
    "NaN": (parquet("x.parquet", vectors=GOOD[:2] + [[1.0, float("nan"), 0.0]] + GOOD[3:]), "NaN", 2, {}),
    "Inf": (parquet("x.parquet", vectors=[[float("inf"), 0.0, 0.0]] + GOOD[1:]), "Inf", 0, {}),
    "non-numeric": (jsonl("x.jsonl", [{"id": "a", "embedding": [1, "two", 3]}]), "numeric", 0, {"input_filetype": "jsonl"}),
    "zero vector": (parquet("x.parquet", vectors=GOOD[:3] + [[0.0, 0.0, 0.0]]), "normalised", 3, {}),
    "empty input": (lambda root: write_parquet(root / "x.parquet", GOOD[:0] or [], ids=[]), "empty input", None, {}),
    "unreadable file": (corrupt, "not a readable parquet file", None, {}),
    "embedding lengths differ between files": (two_files, "length 4", None, {}),
    "unparsable JSON line": (jsonl("x.jsonl", ['{"id": "a", "embedding": [1, 2]}', "{not json"]), "JSON", 1, {"input_filetype": "jsonl"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_cleanly(tmp_path, dask_client, case):
    make, needle, row, extra = CASES[case]
    root = tmp_path / "in"
    root.mkdir()
    bad_file = make(root)
    before = tree_hash(root)
    stage = KMeansStage(n_clusters=1, id_field="id", embedding_field="embedding", input_path=str(root),
                        output_path=str(tmp_path / "out"), **extra)
    with pytest.raises(InputError) as caught:
        stage.run(client=dask_client)
    message = str(caught.value)
    assert needle in message
    if case != "empty input":
        assert bad_file.name in message
    if row is not None:
        assert f"row {row}" in message
    assert tree_hash(root) == before
    assert not (tmp_path / "out" / "_manifest.json").exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("path, needle", [("missing-dir", "does not exist"), ("data.csv", "unsupported")])
def test_missing_or_unsupported_paths(tmp_path, dask_client, path, needle):
    (tmp_path / "data.csv").write_text("id,embedding\n")
    before = tree_hash(tmp_path)
    stage = KMeansStage(n_clusters=1, id_field="id", embedding_field="embedding",
                        input_path=str(tmp_path / path), output_path=str(tmp_path / "out"))
    with pytest.raises(InputError, match=needle) as caught:
        stage.run(client=dask_client)
    assert path in str(caught.value)
    assert tree_hash(tmp_path) == before and not (tmp_path / "out").exists()
