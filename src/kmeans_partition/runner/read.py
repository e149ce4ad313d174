"""READ stage: find input files, plan partitions, read one partition (on a Dask worker).

Every function here is a pure function of its arguments; `read_partition` returns a
picklable `RawChunk`. Inputs are only ever opened for reading.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional, Union

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from .block import BATCH_ROWS, BlockSink, Filled, fill, parquet_batches, prepare_worker
from .columns import check_columns_present
from .errors import InputError
from .jsonl import parse_jsonl

__all__ = [
    "InputError",
    "PartitionRef",
    "RawChunk",
    "discover_files",
    "plan_partitions",
    "read_partition",
    "EXTENSIONS",
]

EXTENSIONS = {"parquet": (".parquet",), "jsonl": (".jsonl",)}
_GLOB_MAGIC = re.compile(r"[*?\[]")


@dataclass
class PartitionRef:
    """One unit of reading: a file, and for parquet a range of its row groups."""

    path: str
    row_groups: Optional[list[int]]
    row_offset: int
    num_rows: Optional[int]
    #: Estimated bytes once loaded (`plan_partitions`); None when not estimated.
    nbytes: Optional[int] = field(default=None, compare=False)
    #: (index, rows, estimated bytes) of the file's largest row group (parquet).
    largest_group: Optional[tuple] = field(default=None, compare=False)


@dataclass
class RawChunk:
    """Rows read from one partition; `row_offset` is the first row's index within `source`."""

    source: str
    row_offset: int
    ids: pa.Array
    embeddings: np.ndarray
    metadata: pa.Table

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict:
        # A zero-column Arrow table forgets its row count when pickled; keep it here.
        return {**self.__dict__, "_metadata_rows": self.metadata.num_rows}

    def __setstate__(self, state: dict) -> None:
        rows = state.pop("_metadata_rows")
        if state["metadata"].num_columns == 0:
            state["metadata"] = _empty_columns(rows)
        self.__dict__.update(state)


def _empty_columns(rows: int) -> pa.Table:
    return pa.table({"_": pa.nulls(rows)}).select([])


def _check_filetype(filetype: str) -> tuple[str, ...]:
    if filetype not in EXTENSIONS:
        raise InputError(
            f"unsupported input file type '{filetype}' (supported: {', '.join(EXTENSIONS)})",
            field="input_filetype",
        )
    return EXTENSIONS[filetype]


def _has_extension(path: str, extensions: tuple[str, ...]) -> bool:
    return path.lower().endswith(extensions)


def _hidden_below(path: str, root: str) -> bool:
    """Is any part of `path` under `root` hidden ('.x') or private ('_x', e.g. _temporary)?"""
    relative = path[len(root.rstrip("/")) :].strip("/")
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def _static_prefix(pattern: str) -> str:
    """The directory part of a glob pattern before its first wildcard."""
    parts = pattern.split("/")
    first_magic = next(index for index, part in enumerate(parts) if _GLOB_MAGIC.search(part))
    return "/".join(parts[:first_magic])


def _files_below(fs: fsspec.AbstractFileSystem, directory: str, extensions: tuple[str, ...]) -> list[str]:
    return [
        path
        for path in fs.find(directory)
        if _has_extension(path, extensions) and not _hidden_below(path, directory)
    ]


def _expand_one(path: str, extensions: tuple[str, ...], storage_options: dict) -> list[str]:
    try:
        fs, fs_path = url_to_fs(path, **storage_options)
        path = fs.unstrip_protocol(fs_path)  # errors name the full URI
        if _GLOB_MAGIC.search(fs_path) and not fs.exists(fs_path):
            found = []
            prefix = _static_prefix(fs_path)
            for match in sorted(fs.glob(fs_path)):
                if _hidden_below(match, prefix):
                    continue
                if fs.isdir(match):
                    found += _files_below(fs, match, extensions)
                elif _has_extension(match, extensions):
                    found.append(match)
            if not found:
                raise InputError(f"glob matched no {'/'.join(extensions)} files", source=path)
        elif fs.isdir(fs_path):
            found = _files_below(fs, fs_path, extensions)
            if not found:
                raise InputError(f"directory holds no {'/'.join(extensions)} files", source=path)
        elif fs.exists(fs_path):
            if not _has_extension(fs_path, extensions):
                raise InputError(
                    f"unsupported file type: expected a {'/'.join(extensions)} file", source=path
                )
            found = [fs_path]
        else:
            raise InputError("path does not exist", source=path)
    except InputError:
        raise
    except (OSError, ValueError, ImportError) as err:
        raise InputError(f"cannot be read: {type(err).__name__}: {err}", source=path) from None
    return [fs.unstrip_protocol(found_path) for found_path in found]


def discover_files(paths: Union[str, list[str]], filetype: str, storage_options: dict) -> list[str]:
    """Every input file named by `paths` (files, directories, globs; any fsspec URI).

    Directories are searched recursively for files with the file type's extension,
    skipping hidden ('.x') and private ('_x') entries. Returns sorted, de-duplicated,
    protocol-qualified URIs (``file:///abs/x.parquet``, ``s3://bucket/key.parquet``).
    """
    extensions = _check_filetype(filetype)
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise InputError("no input paths given", field="input_path")
    found: set[str] = set()
    for path in paths:
        found.update(_expand_one(path, extensions, storage_options or {}))
    if not found:
        raise InputError("no input files found", field="input_path")
    return sorted(found)


def _open(path: str, storage_options: dict):
    """A file opened for reading: Arrow's own reader for local files (reads land in Arrow's
    memory pool, none through Python objects), else fsspec's."""
    fs, fs_path = url_to_fs(path, **(storage_options or {}))
    if fs.protocol in ("file", "local") or (isinstance(fs.protocol, (tuple, list)) and "file" in fs.protocol):
        return pa.OSFile(fs_path, "rb")
    return fs.open(fs_path, "rb")


#: Bytes per row beside the embedding values in a loaded partition: squared norm + the ones column.
ROW_EXTRA_BYTES = 8
#: JSONL: a loaded partition's bytes estimated as this fraction of the file's (JSON text of floats).
JSONL_BYTES_FRACTION = 0.5


def _value_width(schema: pa.Schema, field: Optional[str]) -> int:
    """Bytes per embedding value in the file (4 when unknown)."""
    if field is None or field not in schema.names:
        return 4
    kind = schema.field(field).type
    value = getattr(kind, "value_type", None)
    if value is None or not (pa.types.is_floating(value) or pa.types.is_integer(value)):
        return 4
    return max(1, value.bit_width // 8)


def _parquet_footer(path: str, storage_options: dict, embedding_field: Optional[str], columns: tuple) -> list:
    """(rows, estimated bytes in a worker's memory) of each row group: the embedding as float32
    rows (+ `ROW_EXTRA_BYTES`) and the uncompressed bytes of the other needed `columns`."""
    try:
        with _open(path, storage_options) as handle:
            parquet = pq.ParquetFile(handle)
            metadata, width = parquet.metadata, _value_width(parquet.schema_arrow, embedding_field)
            groups = []
            for i in range(metadata.num_row_groups):
                group = metadata.row_group(i)
                nbytes = group.num_rows * ROW_EXTRA_BYTES
                for j in range(group.num_columns):
                    chunk = group.column(j)
                    top = chunk.path_in_schema.split(".")[0]
                    if top == embedding_field:
                        nbytes += chunk.total_uncompressed_size * 4 // width
                    elif top in columns:
                        nbytes += chunk.total_uncompressed_size
                groups.append((group.num_rows, nbytes))
            return groups
    except (OSError, pa.ArrowException, ValueError) as err:
        raise InputError(f"not a readable parquet file: {err}", source=path) from None


def _group_row_groups(path: str, groups: list, target_rows: int, target_bytes: Optional[int]) -> list[PartitionRef]:
    """Consecutive row groups until `target_rows` rows, or before `target_bytes` would be passed."""
    refs: list[PartitionRef] = []
    current: list[int] = []
    current_rows = current_bytes = offset = 0
    largest = None  # (index, rows, bytes) of the file's largest row group

    def close() -> None:
        nonlocal current, current_rows, current_bytes, offset
        refs.append(PartitionRef(path, current, offset, current_rows, current_bytes, largest))
        offset += current_rows
        current, current_rows, current_bytes = [], 0, 0

    for index, (rows, nbytes) in enumerate(groups):
        if largest is None or nbytes > largest[2]:
            largest = (index, rows, nbytes)
        if current and target_bytes is not None and current_bytes + nbytes > target_bytes:
            close()
        current.append(index)
        current_rows += rows
        current_bytes += nbytes
        if current_rows >= target_rows:
            close()
    if current or not refs:  # the tail, or one empty partition for a file with no rows
        close()
    for ref in refs:
        ref.largest_group = largest
    return refs


def plan_partitions(
    files: list[str],
    filetype: str,
    storage_options: dict,
    target_rows: int = 1_000_000,
    target_bytes: Optional[int] = None,
    embedding_field: Optional[str] = None,
    columns: tuple = (),
) -> list[PartitionRef]:
    """Partitions in file order: parquet split into consecutive row-group ranges of about
    `target_rows` rows and at most `target_bytes` estimated bytes unless one row group is larger
    (footers only are read); each JSONL file is one partition. ``embedding_field`` and the other
    needed ``columns`` size each partition (`PartitionRef.nbytes`)."""
    _check_filetype(filetype)
    if target_rows < 1:
        raise ValueError("target_rows must be >= 1")
    if filetype == "jsonl":
        refs = [PartitionRef(path, None, 0, None) for path in files]
        if embedding_field is not None:
            for ref in refs:
                fs, fs_path = url_to_fs(ref.path, **(storage_options or {}))
                ref.nbytes = int(fs.size(fs_path) * JSONL_BYTES_FRACTION)
        return refs
    workers = max(1, min(16, len(files)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        footers = list(pool.map(lambda path: _parquet_footer(path, storage_options, embedding_field, columns), files))
    refs: list[PartitionRef] = []
    for path, groups in zip(files, footers):
        refs += _group_row_groups(path, groups, target_rows, target_bytes)
    return refs


def _needed_fields(
    id_field: str, embedding_field: str, metadata_fields: Optional[list[str]]
) -> list[tuple[str, str]]:
    fields = [(id_field, "id"), (embedding_field, "embedding")]
    fields += [(name, "metadata") for name in metadata_fields or []]
    unique: dict[str, str] = {}
    for name, role in fields:
        unique.setdefault(name, role)
    return list(unique.items())


def _read_jsonl_table(ref: PartitionRef, fields: list[tuple[str, str]], embedding_field: str, storage_options: dict):
    try:
        with _open(ref.path, storage_options) as handle:
            data = handle.read()
    except OSError as err:
        raise InputError(f"cannot be read: {err}", source=ref.path) from None
    table = parse_jsonl(data, ref.path, embedding_field, [name for name, _ in fields])
    if table is not None:
        check_columns_present(table.column_names, fields, ref.path, where="any row")
    return table


def read_into(
    ref: PartitionRef,
    sink,
    id_field: str,
    embedding_field: str,
    metadata_fields: Optional[list[str]],
    filetype: str,
    storage_options: dict,
    embedding_dim: Optional[int] = None,
    normalise: bool = False,
) -> Optional[Filled]:
    """Read one partition's embeddings into `sink` (`block.BlockSink`, `memory_mode.FileSink`)
    batch by batch; ids and metadata come back as Arrow. None for an empty JSONL file."""
    _check_filetype(filetype)
    prepare_worker()
    fields = _needed_fields(id_field, embedding_field, metadata_fields)
    names = [name for name, _ in fields]
    common = (ref.path, ref.row_offset, id_field, embedding_field, metadata_fields, embedding_dim, normalise)
    if filetype == "jsonl":
        table = _read_jsonl_table(ref, fields, embedding_field, storage_options)
        if table is None:
            return None
        return fill(table.to_batches(max_chunksize=BATCH_ROWS), table.num_rows, sink, *common)
    try:
        with _open(ref.path, storage_options) as handle:
            rows, batches = parquet_batches(handle, ref, names, fields, embedding_field)
            return fill(batches, rows, sink, *common)
    except InputError:
        raise
    except (OSError, pa.ArrowException, ValueError) as err:
        raise InputError(f"not a readable parquet file: {err}", source=ref.path) from None


def read_partition(
    ref: PartitionRef,
    id_field: str,
    embedding_field: str,
    metadata_fields: Optional[list[str]],
    filetype: str,
    storage_options: dict,
    embedding_dim: Optional[int] = None,
) -> RawChunk:
    """Read one partition's ids, float32 embeddings (as in the file, not normalised) and metadata.

    An empty file gives a chunk of 0 rows (embeddings shaped ``(0, embedding_dim or 0)``).
    Raises `InputError` naming the file, row and field of the first problem found.
    """
    sink = BlockSink()
    filled = read_into(ref, sink, id_field, embedding_field, metadata_fields, filetype, storage_options, embedding_dim)
    if filled is None:
        return RawChunk(
            source=ref.path,
            row_offset=ref.row_offset,
            ids=pa.nulls(0),
            embeddings=np.empty((0, embedding_dim or 0), dtype=np.float32),
            metadata=pa.table({name: pa.nulls(0) for name in metadata_fields or []}),
        )
    return RawChunk(ref.path, ref.row_offset, filled.ids, sink.block, filled.metadata)


def plan_record(refs: list[PartitionRef]) -> list[list]:
    """A plan as JSON-able ``[path, row_groups]`` pairs (the checkpoint keeps it: `replan`)."""
    return [[ref.path, None if ref.row_groups is None else list(ref.row_groups)] for ref in refs]


def replan(files: list[str], filetype: str, storage_options: dict, record: list[list], **plan_args
           ) -> Optional[list[PartitionRef]]:
    """The partitions of a `plan_record` again (sizes from the footers, as `plan_partitions` makes
    them), so a resumed run reduces over the same partitions as the run it resumes, whatever the
    number of workers now. None when the record does not fit the files' row groups."""
    singles = plan_partitions(files, filetype, storage_options, target_rows=1, **plan_args)
    by_group = {}
    for ref in singles:
        for group in ref.row_groups if ref.row_groups is not None else [None]:
            by_group[(ref.path, group)] = ref
    refs = []
    for path, groups in record:
        parts = [by_group.get((path, g)) for g in (groups if groups is not None else [None])]
        if any(p is None for p in parts) or not parts:
            return None
        unique = list({id(p): p for p in parts}.values())
        covered = [g for p in unique for g in (p.row_groups or [])]
        if groups is not None and covered != list(groups):
            return None
        rows, sizes = [p.num_rows for p in unique], [p.nbytes for p in unique]
        refs.append(PartitionRef(path, None if groups is None else list(groups), unique[0].row_offset,
                                 None if None in rows else sum(rows), None if None in sizes else sum(sizes),
                                 unique[0].largest_group))
    return refs
