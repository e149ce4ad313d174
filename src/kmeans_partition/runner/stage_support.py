"""Small helpers of `stage._Run`: where partition tasks run, waiting on futures, shape checks."""

from __future__ import annotations

from distributed import Client, as_completed

from .errors import InputError
from ..spec import JobSpec


def placement(client: Client, parts: list) -> list[dict]:
    """Submit options that keep each partition's tasks on the worker holding it.

    Tasks that also take broadcast data (centroids) could otherwise run on any worker and pull the
    partition over. Loose: if that worker is gone, the partition is recomputed and its tasks run
    anywhere.
    """
    holders = client.who_has(parts)
    out = []
    for part in parts:
        workers = list(holders.get(part.key, ()))
        out.append({"workers": workers[:1], "allow_other_workers": True} if workers else {})
    return out


def wait_or_raise(futures: list) -> None:
    """Wait for `futures` without fetching their results; raise the first task error."""
    for future in as_completed(futures):
        if future.status == "error":
            future.result()


def check_shapes(stats, spec: JobSpec) -> None:
    """Empty input, embedding lengths that differ between files, or differ from embedding_dim."""
    nonempty = [s for s in stats if s.n_rows > 0]
    if not nonempty:
        raise InputError(f"empty input: no rows in {len(stats)} partition(s) of {spec.input_paths}")
    first = nonempty[0]
    for s in nonempty:
        if spec.embedding_dim is not None and s.dim != spec.embedding_dim:
            raise InputError(
                f"{s.source}: field {spec.embedding_field!r} has length {s.dim}, "
                f"but embedding_dim is {spec.embedding_dim}"
            )
        if s.dim != first.dim:
            raise InputError(
                f"{s.source}: field {spec.embedding_field!r} has length {s.dim}, "
                f"but {first.source} has length {first.dim}"
            )
