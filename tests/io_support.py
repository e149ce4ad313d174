"""Helpers for the READ / NORMALISE tests: write small inputs, hash trees, read everything."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kmeans_partition.runner.normalise import normalise_rows
from kmeans_partition.runner.read import discover_files, plan_partitions, read_partition


def embedding_array(vectors: Any, list_kind: str = "list", value_type: pa.DataType = pa.float32()) -> pa.Array:
    """Vectors as an Arrow list / large_list / fixed_size_list array of `value_type`."""
    rows = vectors.tolist() if isinstance(vectors, np.ndarray) else vectors
    if list_kind == "fixed":
        kind = pa.list_(value_type, len(rows[0]))
    elif list_kind == "large":
        kind = pa.large_list(value_type)
    else:
        kind = pa.list_(value_type)
    return pa.array(rows, type=kind)


def write_parquet(
    path: Path,
    vectors: Any,
    ids: Optional[list] = None,
    list_kind: str = "list",
    value_type: pa.DataType = pa.float32(),
    extra: Optional[dict[str, list]] = None,
    row_group_size: Optional[int] = None,
    embedding_field: str = "embedding",
) -> Path:
    rows = len(vectors)
    columns = {"id": ids if ids is not None else [f"doc-{i}" for i in range(rows)]}
    columns[embedding_field] = embedding_array(vectors, list_kind, value_type)
    columns.update(extra or {})
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def write_jsonl(path: Path, records: list[Any]) -> Path:
    """One line per record: dicts are JSON-encoded, strings written verbatim."""
    lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def tree_hash(root: Path) -> dict[str, str]:
    """sha256 of every file below `root`, by relative path."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def read_all(
    paths: Any,
    filetype: str = "parquet",
    storage_options: Optional[dict] = None,
    metadata_fields: Optional[list[str]] = None,
    embedding_dim: Optional[int] = None,
    target_rows: int = 1_000_000,
    normalise: bool = True,
):
    """Discover, plan, read (and normalise) every partition; return the chunks and vectors."""
    options = storage_options or {}
    files = discover_files(paths if isinstance(paths, list) else [paths], filetype, options)
    refs = plan_partitions(files, filetype, options, target_rows=target_rows)
    chunks = [
        read_partition(ref, "id", "embedding", metadata_fields, filetype, options, embedding_dim)
        for ref in refs
    ]
    vectors = [
        normalise_rows(chunk.embeddings, chunk.source, chunk.row_offset) if normalise else chunk.embeddings
        for chunk in chunks
    ]
    return chunks, vectors
