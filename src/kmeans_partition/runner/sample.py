"""Synthetic sample data: a Gaussian mixture on the unit sphere, written as parquet or JSONL.

Clusters have uneven (Zipf-like) sizes and spreads; a chosen fraction of rows are planted
near-duplicates (tiny noise) of other rows in the same file. Columns: ``id`` (unique,
"doc-000123"), ``text`` (short synthetic text) and ``embedding`` (list<float32>, unit norm).
Deterministic for a seed; written file by file and batch by batch to keep memory flat.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

BATCH_ROWS = 32768  # rows generated at once; also the parquet row-group size
DUPLICATE_NOISE = 1e-3  # L2 size of the noise added to a planted near-duplicate
FORMATS = ("parquet", "jsonl")  # also the file extension
WORDS = (
    "data model river quiet signal market garden energy story method light voice "
    "system ocean paper robot music winter city theory field engine forest report "
    "island pattern memory orbit recipe planet canvas thread harbor circuit valley"
).split()
SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("embedding", pa.list_(pa.float32()))])


@dataclass
class Mixture:
    centres: np.ndarray  # (k, d) unit rows
    weights: np.ndarray  # (k,) sums to 1, uneven
    spreads: np.ndarray  # (k,) L2 size of a row's noise around its centre


def _check_args(rows: int, dim: int, clusters: int, fmt: str, duplicates: float, files: int) -> None:
    if rows < 1:
        raise ValueError("rows must be >= 1")
    if dim < 1:
        raise ValueError("dim must be >= 1")
    if not 1 <= clusters <= rows:
        raise ValueError("clusters must be between 1 and rows")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    if not 0.0 <= duplicates < 1.0:
        raise ValueError("duplicates must be a fraction in [0, 1)")
    if not 1 <= files <= rows:
        raise ValueError("files must be between 1 and rows")


def make_mixture(rng: np.random.Generator, dim: int, clusters: int) -> Mixture:
    """Random unit centres, Zipf-like weights in random order, spreads in [0.3, 0.6]."""
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.permutation((1.0 + np.arange(clusters)) ** -1.0)
    spreads = rng.uniform(0.3, 0.6, clusters)
    return Mixture(centres, weights / weights.sum(), spreads)


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _texts(rng: np.random.Generator, labels: np.ndarray) -> list[str]:
    words = np.asarray(WORDS)[rng.integers(0, len(WORDS), size=(len(labels), 6))]
    return [f"topic {label}: {' '.join(row)}" for label, row in zip(labels.tolist(), words.tolist())]


def make_batch(
    rng: np.random.Generator, mixture: Mixture, rows: int, first_id: int, id_width: int, duplicates: float
) -> pa.Table:
    """`rows` rows; ``round(duplicates * rows)`` of them near-duplicates of others in the batch."""
    dim = mixture.centres.shape[1]
    labels = rng.choice(len(mixture.weights), size=rows, p=mixture.weights)
    noise = rng.standard_normal((rows, dim)) * (mixture.spreads[labels] / np.sqrt(dim))[:, None]
    vectors = _unit(mixture.centres[labels] + noise)
    texts = _texts(rng, labels)
    planted = min(int(round(duplicates * rows)), rows - 1)
    if planted:
        copies = rng.choice(rows, size=planted, replace=False)
        originals = rng.choice(np.setdiff1d(np.arange(rows), copies), size=planted)
        jitter = rng.standard_normal((planted, dim)) * (DUPLICATE_NOISE / np.sqrt(dim))
        vectors[copies] = _unit(vectors[originals].astype(np.float64) + jitter)
        for copy, original in zip(copies.tolist(), originals.tolist()):
            texts[copy] = texts[original] + " (repost)"
    ids = [f"doc-{index:0{id_width}d}" for index in range(first_id, first_id + rows)]
    offsets = np.arange(0, rows * dim + 1, dim, dtype=np.int64)
    embedding = pa.LargeListArray.from_arrays(offsets, vectors.ravel()).cast(pa.list_(pa.float32()))
    return pa.Table.from_arrays([pa.array(ids), pa.array(texts), embedding], schema=SCHEMA)


def _write_jsonl_batch(handle, batch: pa.Table) -> None:
    ids = batch.column("id").to_pylist()
    texts = batch.column("text").to_pylist()
    vectors = batch.column("embedding").combine_chunks().flatten().to_numpy()
    vectors = vectors.reshape(len(ids), -1).tolist()
    lines = (
        json.dumps({"id": doc_id, "text": text, "embedding": vector})
        for doc_id, text, vector in zip(ids, texts, vectors)
    )
    handle.write(("\n".join(lines) + "\n").encode())


def _refuse_non_empty(fs, root: str, output: str) -> None:
    if not fs.exists(root):
        return
    if not fs.isdir(root):
        raise FileExistsError(f"{output}: exists and is not a directory")
    if fs.ls(root, detail=False):
        raise FileExistsError(f"{output}: directory is not empty; refusing to write a sample into it")


def write_sample(
    output: str,
    rows: int,
    dim: int,
    clusters: int,
    fmt: str = "parquet",
    duplicates: float = 0.0,
    files: int = 1,
    seed: int = 0,
    storage_options: Optional[dict] = None,
) -> list[str]:
    """Write a synthetic sample into the directory `output` (any fsspec URI); return the file URIs.

    Raises ValueError for bad arguments and FileExistsError if `output` is not empty.
    """
    _check_args(rows, dim, clusters, fmt, duplicates, files)
    fs, root = url_to_fs(output, **(storage_options or {}))
    root = root.rstrip("/")
    _refuse_non_empty(fs, root, output)
    fs.makedirs(root, exist_ok=True)
    seeds = np.random.SeedSequence(seed).spawn(files + 1)
    mixture = make_mixture(np.random.default_rng(seeds[0]), dim, clusters)
    id_width = max(6, len(str(rows - 1)))
    written, first_id = [], 0
    for file_index, file_rows in enumerate(np.array_split(np.arange(rows), files)):
        rng = np.random.default_rng(seeds[file_index + 1])
        path = f"{root}/part-{file_index:05d}.{fmt}"
        with fs.open(path, "wb") as handle:
            writer = pq.ParquetWriter(handle, SCHEMA) if fmt == "parquet" else None
            for start in range(0, len(file_rows), BATCH_ROWS):
                count = min(BATCH_ROWS, len(file_rows) - start)
                batch = make_batch(rng, mixture, count, first_id + start, id_width, duplicates)
                if writer is not None:
                    writer.write_table(batch, row_group_size=BATCH_ROWS)
                else:
                    _write_jsonl_batch(handle, batch)
            if writer is not None:
                writer.close()
        first_id += len(file_rows)
        written.append(fs.unstrip_protocol(path))
    return written
