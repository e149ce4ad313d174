"""Reductions on the workers in a fixed binary tree by partition index.

Pairs (0, 1), (2, 3), ... are combined first, then the pairs' results, and so on (an odd last
one moves up unchanged): the float additions happen in the same order whatever the number of
workers or the task timing, and only the root comes to the client.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from distributed import Client, Future

from .lloyd import LloydPartial


def tree_reduce(client: Client, leaves: list[Future], combine, priority: int = 0, **kwargs) -> Future:
    """The root future of ``combine(left, right, **kwargs)`` over `leaves` in a fixed binary tree;
    ``priority``: Dask's, of the combine tasks (above the leaves' tasks: a pair combines, and frees
    its halves, as soon as both exist, before the worker computes further leaves)."""
    if not leaves:
        raise ValueError("nothing to reduce")
    level = list(leaves)
    while len(level) > 1:
        up = [client.submit(combine, level[i], level[i + 1], pure=False, priority=priority, **kwargs)
              for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            up.append(level[-1])
        level = up
    return level[0]


def add_arrays(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return left + right


def combine_partials(left: LloydPartial, right: LloydPartial, keep: int) -> LloydPartial:
    """Two adjacent partials (left holds the lower partitions) as one.

    The farthest rows (re-seeding candidates) are merged stably by distance, ties to the left, and
    cut to `keep` (= k): the top-k of a merge of top-k lists is the top-k of the whole, in the
    order `LloydReduction.finish` would pick them.
    """
    far_dist = np.concatenate([left.far_dist, right.far_dist])
    order = np.argsort(-far_dist, kind="stable")[:keep]
    unknown = left.n_changed < 0 or right.n_changed < 0
    return replace(
        left,
        sums=left.sums + right.sums,
        counts=left.counts + right.counts,
        inertia=left.inertia + right.inertia,
        n_changed=-1 if unknown else left.n_changed + right.n_changed,
        far_dist=far_dist[order],
        far_rows=np.concatenate([left.far_rows, right.far_rows])[order],
        n_recomputed=left.n_recomputed + right.n_recomputed,
    )
