"""How an output file is encoded (runs on the workers): row groups of about `ROW_GROUP_BYTES`,
dictionaries only for columns that are not floating point. The layout depends only on the rows'
content, so a file written from other pieces of the same rows (after a lost worker) is the same
bit for bit.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

#: Parquet row groups of about this many bytes of rows (at least `MIN_ROW_GROUP_ROWS`): the writer holds
#: about 2x a row group while it encodes it (measured 19 MiB for a 10 MiB file written as one group,
#: 151 MiB for 101 MiB of Arrow memory), so a large centroid's file no longer costs its writer twice its size.
ROW_GROUP_BYTES = 4 << 20
MIN_ROW_GROUP_ROWS = 1024


def write_file(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    """One parquet file: snappy, row groups of about `ROW_GROUP_BYTES`, no dictionary for float columns."""
    with pq.ParquetWriter(path, table.schema, filesystem=fs, use_dictionary=dictionary_columns(table.schema)) as w:
        w.write_table(table, row_group_size=row_group_rows(table))


def row_group_rows(table: pa.Table) -> int:
    """Rows per row group: about `ROW_GROUP_BYTES` of `table`'s rows, at least `MIN_ROW_GROUP_ROWS`."""
    row_bytes = content_bytes(table) / max(1, table.num_rows)
    return max(MIN_ROW_GROUP_ROWS, int(ROW_GROUP_BYTES // max(1.0, row_bytes)))


def content_bytes(table: pa.Table) -> int:
    """Bytes of `table`'s values (plus 4 a row for each variable-length column's offsets), from the
    content alone. `Table.nbytes` also counts each chunk's validity bitmap, so the same rows in other
    pieces were a byte apart and a row group could move by one row (files written again after a lost
    worker differed bit for bit from an undisturbed run's)."""
    total = 0
    for column in table.columns:
        kind, n = column.type, len(column)
        if pa.types.is_fixed_size_list(kind):
            total += n * kind.list_size * _value_width(kind.value_type)
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
            total += _summed(pc.list_value_length(column)) * _value_width(kind.value_type) + 4 * n
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) \
                or pa.types.is_large_binary(kind):
            total += _summed(pc.binary_length(column)) + 4 * n
        else:
            total += n * _value_width(kind)
    return total


def _summed(lengths) -> int:
    return int(pc.sum(lengths).as_py() or 0)


def _value_width(kind: pa.DataType) -> int:
    """Bytes of one value of a fixed-width type (a bit counts as a byte); 8 for any other type."""
    try:
        return max(1, kind.bit_width // 8)
    except ValueError:
        return 8


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth pyarrow's dictionary attempt: all but floating-point (and list of float) ones.

    Embeddings and distances are ~all distinct: the attempt saves nothing and costs ~10x a plain
    write for files of a few thousand rows (it runs until the dictionary reaches 1 MB).
    """
    def is_float(t: pa.DataType) -> bool:
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            return is_float(t.value_type)
        return pa.types.is_floating(t)

    return [field.name for field in schema if not is_float(field.type)]
