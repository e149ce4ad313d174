"""Reductions on the workers in a fixed binary tree by partition index.

Pairs (0, 1), (2, 3), ... are combined first, then the pairs' results, and so on (an odd last
one moves up unchanged): the float additions happen in the same order whatever the number of
workers, how partitions are grouped on them or the task timing, and only the root comes to the
client. Each worker's task combines the pairs it holds both halves of (`LocalTree`); tasks finish
the rest (`finish_tree`).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np
from distributed import Client, Future

from .lloyd import LloydPartial


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


def level_sizes(n: int) -> list[int]:
    """Nodes per level of the tree over ``n`` leaves, leaves first (the root's level has 1)."""
    sizes = [n]
    while sizes[-1] > 1:
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


_MISSING = object()


class LocalTree:
    """The part of the tree one worker can combine from the leaves it holds, added in increasing
    index order: a pair combines when both halves are here, in the whole tree's order, so a
    reduction finished from the remaining `nodes` (`finish_tree`) equals the whole tree's bit for bit.

    ``nodes``: (level, index) -> value of the nodes whose neighbour is elsewhere (or the root).
    Without ``combine`` it only finds those nodes (the client's plan of the same tree).
    """

    def __init__(self, n: int, combine=None):
        self.sizes = level_sizes(n)
        self.combine = combine
        self.nodes: dict[tuple[int, int], object] = {}

    def add(self, index: int, value=None) -> None:
        level, j = 0, index
        while level < len(self.sizes) - 1:
            if j % 2 == 0:
                if j + 1 < self.sizes[level]:
                    break  # waits for its right neighbour
                level, j = level + 1, j // 2  # an odd last node moves up unchanged
                continue
            left = self.nodes.pop((level, j - 1), _MISSING)
            if left is _MISSING:
                break  # its left neighbour is on another worker
            value = self.combine(left, value) if self.combine else None
            level, j = level + 1, j // 2
        self.nodes[(level, j)] = value


def local_nodes(n: int, indices) -> list[tuple[int, int]]:
    """The nodes a worker holding leaves ``indices`` (increasing) leaves for `finish_tree`."""
    tree = LocalTree(n)
    for index in indices:
        tree.add(index)
    return list(tree.nodes)


def node_of(result: tuple, key: tuple[int, int]):
    """A node's value from a worker's ``(LocalTree.nodes, ...)`` result."""
    return result[0][key]


#: Up to this many bytes of nodes in all, `finish_tree` combines the nodes the workers left in one
#: task: one hop (the chain of a task per tree node took ~60 ms of a 0.7 s Lloyd step at k=100, 2
#: workers, 30 partitions). Larger nodes (large k) get a task per node, so no worker holds them all.
ONE_TASK_BYTES = 8 << 20


def finish_tree(client: Client, n: int, sources: dict, combine, priority: int = 0, node_bytes: int = -1,
                **kwargs) -> Future:
    """The root future of the tree over ``n`` leaves from ``sources``: (level, index) -> future of
    the nodes the workers left (`local_nodes`; or every leaf, (0, i)); the rest is combined by
    ``combine(left, right, **kwargs)`` in tasks of Dask priority ``priority``: in one task where the
    nodes are at most ``node_bytes`` each and `ONE_TASK_BYTES` together, else one task per node.
    Both combine in the same order."""
    sizes = level_sizes(n)
    options = dict(pure=False, priority=priority)
    if len(sources) > 1 and 0 <= node_bytes * len(sources) <= ONE_TASK_BYTES:
        keys = sorted(sources)
        return client.submit(_finish_here, sizes, keys, partial(combine, **kwargs), *[sources[key] for key in keys],
                             **options)
    return _node(sizes, sources, len(sizes) - 1, 0, partial(_submit_pair, client, combine, dict(options, **kwargs)))


def _finish_here(sizes: list[int], keys: list, pair, *values):
    """`finish_tree`'s one task: the root from the nodes ``keys`` (their ``values``)."""
    return _node(sizes, dict(zip(keys, values)), len(sizes) - 1, 0, pair)


def _submit_pair(client: Client, combine, options: dict, left, right) -> Future:
    return client.submit(combine, left, right, **options)


def _node(sizes: list[int], nodes: dict, level: int, j: int, pair):
    """Node (level, j) of the tree from the ``nodes`` held (values or futures), pairs joined by
    ``pair(left, right)``. A module function, not a closure calling itself (that cycle kept every
    iteration's futures, and so their results on the workers, until Python's next garbage
    collection; in the one task it would keep the nodes)."""
    if (level, j) in nodes:
        return nodes[(level, j)]
    if level == 0:
        raise KeyError(f"no worker holds leaf {j}")
    left = _node(sizes, nodes, level - 1, 2 * j, pair)
    if 2 * j + 1 >= sizes[level - 1]:
        return left
    return pair(left, _node(sizes, nodes, level - 1, 2 * j + 1, pair))
