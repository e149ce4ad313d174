"""Tasks that run once per worker group: a group is the partitions placed on one worker.

One task per worker and pass (a Lloyd step, a k-means|| pass) instead of one per partition: at
thousands of partitions the scheduler's per-task cost would dominate a step, and a partition's
result would wait in Dask's memory until reduced. Reductions keep the fixed tree by partition index
(`tree_reduce.LocalTree`), so results do not depend on how partitions are grouped.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import numpy as np

from . import backend as be
from .lloyd import lloyd_partial
from .partition import Partition
from .tree_reduce import LocalTree, combine_partials
from .worker_memory import relax_malloc_trim, release_freed


def _lloyd_step(part: Partition, previous, centroids: np.ndarray, drift, batch: int) -> tuple:
    relax_malloc_trim()
    if previous is None and be.shrink_scratch(be.block_rows(be.namespace(part.xa), batch, len(centroids))
                                              * len(centroids)):
        release_freed()  # the k-means|| passes' larger score block (16 MB), before the fit's (8 at k=1000)
    return lloyd_partial(part.xa, part.x_sq, centroids, batch, previous, drift)


def _lloyd_steps(parts: list[Partition], previous: Optional[list], centroids: np.ndarray, drift, batch: int,
                 indices: list[int], n_parts: int, keep: int) -> tuple[dict, list]:
    """One worker's Lloyd step: each of its partitions (``indices``, increasing; ``previous``: their
    last bounds or None), reduced as far as its share of the fixed tree goes (`LocalTree`).

    Returns ({tree node: partial}, [bounds per partition]). One task per worker and iteration:
    partitions' partials are combined (and freed) as they are made, none waits in Dask's memory.
    """
    tree = LocalTree(n_parts, partial(combine_partials, keep=keep))
    bounds = []
    for index, part, last in zip(indices, parts, previous or [None] * len(parts)):
        step, state = _lloyd_step(part, None if last is None else (None, last), centroids, drift, batch)
        if last is not None:
            last.drop_bounds()  # the group's last bounds are freed only with the task: two sets at its end
        tree.add(index, step)
        bounds.append(state)
    return tree.nodes, bounds


def _each(func, *columns, **common) -> list:
    """One worker group's task: ``func`` over its partitions (``columns``: an argument list each,
    an entry per partition), the results in the group's order."""
    return [func(*args, **common) for args in zip(*columns)]


def _each_reduced(func, add, indices: list[int], n_parts: int, *columns, **common) -> tuple[dict, None]:
    """`_each`, its results summed with ``add`` as far as the group's share of the fixed tree goes
    (`LocalTree`; finished by `finish_tree`)."""
    tree = LocalTree(n_parts, add)
    for index, args in zip(indices, zip(*columns)):
        tree.add(index, func(*args, **common))  # added as made: a few values held at a time
    return tree.nodes, None


class PerGroup(list):
    """Futures of `_each` results, one per worker group (a column of the next `_by_group`)."""


def worker_groups(placement: list[dict]) -> list[tuple[list[int], dict]]:
    """Partitions grouped by the worker their placement names, in index order, with its submit
    options; a partition placed nowhere is a group of its own."""
    groups: dict = {}
    for i, where in enumerate(placement):
        key = tuple(where.get("workers") or ()) or ("", i)
        groups.setdefault(key, ([], where))[0].append(i)
    return list(groups.values())
