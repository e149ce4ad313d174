"""One Lloyd step on one partition, and the reduction of the partitions' partials.

(Hamerly-style bounds were tried and dropped: on high-dimensional embeddings with k ~ 1000
the single lower bound shrinks by the largest centroid move every step, so few rows were
skipped while the second-nearest bookkeeping cost 15-30% per step; see docs/benchmarks.md.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .kmeans import augment_centroids, cluster_sums, nearest

#: Farthest rows each partition offers per Lloyd step for re-seeding empty clusters.
RESEED_CANDIDATES = 32


@dataclass
class LloydPartial:
    """One partition's contribution to a Lloyd step; reduced in partition order."""

    sums: np.ndarray  # (k, d) float64
    counts: np.ndarray  # (k,) int64
    inertia: float
    n_changed: int  # rows whose label changed since the previous step (-1: unknown)
    far_dist: np.ndarray  # (r,) float32, the partition's farthest rows, descending
    far_rows: np.ndarray  # (r, d) float32


def lloyd_partial(
    xa: np.ndarray,
    x_sq: np.ndarray,
    centroids: np.ndarray,
    batch: int,
    previous_labels: Optional[np.ndarray] = None,
) -> tuple[LloydPartial, np.ndarray]:
    """Assign rows to ``centroids`` and return the partial sums plus the new labels."""
    k, d = centroids.shape
    labels, dist_sq = nearest(xa, x_sq, augment_centroids(centroids), batch)
    x = xa[:, :d]
    sums, counts = cluster_sums(xa, labels, k)
    sums = sums[:, :d]
    r = min(RESEED_CANDIDATES, len(dist_sq))
    far = np.argpartition(-dist_sq, r - 1)[:r] if r else np.empty(0, dtype=np.int64)
    far = far[np.lexsort((far, -dist_sq[far]))]  # farthest first, ties by row index
    changed = -1 if previous_labels is None else int(np.count_nonzero(previous_labels != labels))
    partial = LloydPartial(
        sums=sums,
        counts=counts,
        inertia=float(dist_sq.sum(dtype=np.float64)),
        n_changed=changed,
        far_dist=dist_sq[far],
        far_rows=np.ascontiguousarray(x[far]),
    )
    return partial, labels


@dataclass
class LloydUpdate:
    centroids: np.ndarray  # (k, d) float32
    inertia: float  # of the assignment to the *previous* centroids
    shift_sq: float  # sum of squared centroid moves
    n_changed: int  # -1 when unknown (first step)
    n_reseeded: int


def reduce_lloyd(partials: list[LloydPartial], previous: np.ndarray) -> LloydUpdate:
    """Combine partials (in the given, fixed order) into the next centroids.

    An empty cluster is re-seeded at the farthest row not already used for
    another empty cluster (ties: earlier partition, lower row); if none is left
    it keeps its previous position, so a centroid is never NaN.
    """
    sums = np.zeros_like(partials[0].sums)
    counts = np.zeros_like(partials[0].counts)
    inertia = 0.0
    changed = 0
    for part in partials:
        sums += part.sums
        counts += part.counts
        inertia += part.inertia
        changed = -1 if (changed < 0 or part.n_changed < 0) else changed + part.n_changed
    new = previous.astype(np.float64, copy=True)
    filled = counts > 0
    new[filled] = sums[filled] / counts[filled, None]
    empty = np.flatnonzero(~filled)
    if empty.size:
        far_dist = np.concatenate([p.far_dist for p in partials])
        far_rows = np.concatenate([p.far_rows for p in partials])
        order = np.argsort(-far_dist, kind="stable")[: empty.size]
        new[empty[: order.size]] = far_rows[order]
    new32 = new.astype(np.float32)
    shift_sq = float(((new32.astype(np.float64) - previous.astype(np.float64)) ** 2).sum())
    return LloydUpdate(new32, inertia, shift_sq, changed, int(empty.size))
