"""Parse JSON Lines bytes into an Arrow table of the needed fields.

Fast path: ``pyarrow.json`` with the embedding typed ``list<float64>``. If it refuses the
file, a line-by-line parse either builds the same table (e.g. ids of mixed types in an
unneeded column) or finds the exact row and field that is wrong. Blank lines are skipped
and do not count as rows.
"""

from __future__ import annotations

import io
import json
from typing import Any, Optional

import pyarrow as pa
import pyarrow.json as pa_json

from .errors import InputError

EMBEDDING_TYPE = pa.list_(pa.float64())
BLOCK_SIZE = 16 << 20  # one JSON object must fit in a block
FLOAT64_MAX = 1.7976931348623157e308


def parse_jsonl(data: bytes, source: str, embedding_field: str, fields: list[str]) -> Optional[pa.Table]:
    """The needed ``fields`` (embedding included) as a table; None for an empty file.

    A field absent from every row is not a column of the result; absent from some
    rows, it is null there.
    """
    if not data.strip():
        return None
    try:
        table = _parse_fast(data, embedding_field)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return _parse_slow(data, source, embedding_field, fields)
    if embedding_field not in _keys_seen_fast(table, embedding_field):
        table = table.drop_columns([embedding_field])
    return table.select([name for name in fields if name in table.column_names])


def _parse_fast(data: bytes, embedding_field: str) -> pa.Table:
    parse = pa_json.ParseOptions(explicit_schema=pa.schema([(embedding_field, EMBEDDING_TYPE)]))
    read = pa_json.ReadOptions(block_size=BLOCK_SIZE)
    return pa_json.read_json(io.BytesIO(data), read_options=read, parse_options=parse)


def _keys_seen_fast(table: pa.Table, embedding_field: str) -> set[str]:
    """With an explicit schema the embedding column always exists; keep it only if some row has it."""
    column = table.column(embedding_field)
    return {embedding_field} if column.null_count < len(column) else set()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_embedding(value: Any, source: str, row: int, line: int, field: str) -> None:
    if value is None:
        return  # reported as "missing or null" with the other column checks
    if not isinstance(value, list):
        raise InputError(
            f"embedding must be a JSON array of numbers, got {type(value).__name__} (line {line})",
            source, row=row, field=field,
        )
    for position, item in enumerate(value):
        if not _is_number(item):
            raise InputError(
                f"embedding value {position} is non-numeric: {json.dumps(item)[:40]} (line {line})",
                source, row=row, field=field,
            )
        if isinstance(item, int) and abs(item) > FLOAT64_MAX:
            raise InputError(f"embedding value {position} is too large (line {line})", source, row=row, field=field)


def _parse_slow(data: bytes, source: str, embedding_field: str, fields: list[str]) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in fields}
    seen: set[str] = set()
    row = 0
    for line_number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError) as err:
            raise InputError(f"not valid JSON (line {line_number}): {err}", source, row=row) from None
        if not isinstance(record, dict):
            raise InputError(
                f"not a JSON object but {type(record).__name__} (line {line_number})", source, row=row
            )
        _check_embedding(record.get(embedding_field), source, row, line_number, embedding_field)
        for name in fields:
            if name in record:
                seen.add(name)
            columns[name].append(record.get(name))
        row += 1
    arrays, names = [], []
    for name in fields:
        if name not in seen:
            continue
        kind = EMBEDDING_TYPE if name == embedding_field else None
        arrays.append(_to_arrow(columns[name], kind, source, name))
        names.append(name)
    return pa.table(arrays, names=names)


def _to_arrow(values: list[Any], kind: Optional[pa.DataType], source: str, field: str) -> pa.Array:
    try:
        return pa.array(values, type=kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as err:
        row = _first_type_change(values)
        raise InputError(f"values of incompatible types: {err}", source, row=row, field=field) from None


def _first_type_change(values: list[Any]) -> Optional[int]:
    first: Optional[type] = None
    for row, value in enumerate(values):
        if value is None:
            continue
        if first is None:
            first = type(value)
        elif type(value) is not first:
            return row
    return None
