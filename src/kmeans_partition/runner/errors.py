"""`InputError`: bad input data, with a message naming the file, row and field."""

from __future__ import annotations

from typing import Optional


class InputError(ValueError):
    """Bad input. The message names the file (full URI), and the row and field where known.

    ``row`` is 0-based within ``source``. Picklable, so it survives the trip from a
    Dask worker to the client unchanged.
    """

    def __init__(
        self,
        problem: str,
        source: Optional[str] = None,
        row: Optional[int] = None,
        field: Optional[str] = None,
    ):
        self.problem = problem
        self.source = source
        self.row = None if row is None else int(row)
        self.field = field
        super().__init__(_format(problem, source, self.row, field))

    def __reduce__(self):
        return (type(self), (self.problem, self.source, self.row, self.field))


def _format(problem: str, source: Optional[str], row: Optional[int], field: Optional[str]) -> str:
    where = []
    if row is not None:
        where.append(f"row {row}")
    if field is not None:
        where.append(f"field '{field}'")
    prefix = ", ".join(where)
    if source is not None:
        prefix = f"{source}: {prefix}" if prefix else source
    return f"{prefix}: {problem}" if prefix else problem
