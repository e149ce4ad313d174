"""One Lloyd step on one partition, and the reduction of the partitions' partials.

A step first moves each row's distance bounds by how far the centroids moved
(`bounds.py`); rows whose label cannot change are skipped, the others get their
distance to the assigned centroid recomputed (one dot product), and only rows still
in doubt get the full GEMM against all centroids. Labels equal those of the full
float32 computation; early steps (centroids moving a lot) skip nothing, late steps
most rows (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import bounds as bd
from .kmeans import augment_centroids, cluster_sums, nearest_two, scratch

#: Farthest rows each partition offers per Lloyd step for re-seeding empty clusters.
RESEED_CANDIDATES = 32

#: Rows per chunk when recomputing distances to the assigned centroids.
ASSIGNED_CHUNK = 8192


@dataclass
class LloydPartial:
    """One partition's contribution to a Lloyd step; reduced in partition order."""

    sums: np.ndarray  # (k, d) float64
    counts: np.ndarray  # (k,) int64
    inertia: float
    n_changed: int  # rows whose label changed since the previous step (-1: unknown)
    far_dist: np.ndarray  # (r,) float32, the partition's farthest rows, descending
    far_rows: np.ndarray  # (r, d) float32
    n_recomputed: int = 0  # rows that needed the full distance computation


def lloyd_partial(
    xa: np.ndarray,
    x_sq: np.ndarray,
    centroids: np.ndarray,
    batch: int,
    previous: Optional[tuple[LloydPartial, bd.RowBounds]] = None,
    drift: Optional[np.ndarray] = None,
) -> tuple[LloydPartial, bd.RowBounds]:
    """Assign rows to ``centroids``; return the partial sums and the rows' new bounds.

    ``previous`` is this partition's result of the last step and ``drift`` how far each
    centroid moved since (both or neither); with them, settled rows are skipped. The
    cluster sums are always recomputed from all rows (updating them with the rows that
    moved made centroids depend on the rounding history, which changed labels).
    """
    k, d = centroids.shape
    ca = augment_centroids(centroids)
    err = bd.score_error(x_sq, centroids)
    if previous is None or drift is None:
        work, stale = RowWork.blank(x_sq.shape[0]), np.ones(x_sq.shape[0], dtype=bool)
    else:
        work, stale = _settle(xa, x_sq, ca, err, previous[1], drift)
    n_recomputed = _recompute(xa, x_sq, ca, batch, stale, err, work)
    labels = work.labels
    sums, counts = cluster_sums(xa, labels, k)
    sums = sums[:, :d]
    upper_sq = work.upper.astype(np.float64) ** 2 + err
    far = bd.farthest(
        work.dist_sq, work.known, upper_sq, RESEED_CANDIDATES,
        lambda rows: _to_assigned(xa, x_sq, ca, labels, rows),
    )
    partial = LloydPartial(
        sums=sums,
        counts=counts,
        inertia=_inertia(sums, counts, labels, x_sq, centroids),
        n_changed=-1 if previous is None else int(np.count_nonzero(previous[1].labels != labels)),
        far_dist=work.dist_sq[far],
        far_rows=np.ascontiguousarray(xa[far, :d]),
        n_recomputed=n_recomputed,
    )
    return partial, bd.RowBounds(labels, work.upper, work.lower, work.own)


@dataclass
class RowWork:
    """Per-row arrays a step fills in place."""

    labels: np.ndarray
    upper: np.ndarray
    lower: np.ndarray
    own: np.ndarray  # lower bound on the distance to the assigned centroid
    dist_sq: np.ndarray  # computed squared distance to the assigned centroid, where `known`
    known: np.ndarray

    @classmethod
    def blank(cls, n: int, previous: Optional[bd.RowBounds] = None) -> "RowWork":
        empty = np.empty(n, dtype=np.float32)
        labels = np.zeros(n, dtype=np.int32) if previous is None else previous.labels.copy()
        return cls(labels, empty, empty.copy(), empty.copy(), np.zeros(n, np.float32), np.zeros(n, bool))


def _settle(xa, x_sq, ca, err, previous: bd.RowBounds, drift) -> tuple[RowWork, np.ndarray]:
    """Move the bounds by ``drift`` and find the rows still in doubt (``stale``)."""
    work = RowWork.blank(x_sq.shape[0], previous)
    moved = bd.most_drifted(drift)
    work.upper, work.lower, work.own = bd.shifted(previous, drift, moved)
    stale = ~bd.settled(work.upper, work.lower, err)
    # Tighten (one dot product) only rows that the exact distance could settle.
    doubt = np.flatnonzero(stale & bd.settled(work.own, work.lower, err))
    if doubt.size:
        work.dist_sq[doubt] = _to_assigned(xa, x_sq, ca, work.labels, doubt)
        work.known[doubt] = True
        work.upper[doubt] = bd.upper_from_distance(work.dist_sq[doubt], err[doubt])
        work.own[doubt] = bd.lower_from_distance(work.dist_sq[doubt], err[doubt])
        stale[doubt] = ~bd.settled(work.upper[doubt], work.lower[doubt], err[doubt])
    hopeful = np.flatnonzero(~stale)
    if hopeful.size and moved.size:  # bound the most-moved centroids directly
        near = _nearest_of(xa, x_sq, ca, work.labels, hopeful, moved)
        work.lower[hopeful] = np.minimum(work.lower[hopeful], bd.lower_from_distance(near, err[hopeful]))
        stale[hopeful] = ~bd.settled(work.upper[hopeful], work.lower[hopeful], err[hopeful])
    return work, stale


def _to_assigned(xa, x_sq, ca, labels, rows) -> np.ndarray:
    """Computed squared distances (float32, >= 0) of ``rows`` to their assigned centroids."""
    out = np.empty(rows.shape[0], dtype=np.float32)
    for start in range(0, rows.shape[0], ASSIGNED_CHUNK):
        chunk = rows[start : start + ASSIGNED_CHUNK]
        scores = np.einsum("ij,ij->i", xa[chunk], ca[labels[chunk]], dtype=np.float32)
        out[start : start + chunk.shape[0]] = np.maximum(scores + x_sq[chunk], 0.0)
    return out


def _nearest_of(xa, x_sq, ca, labels, rows, subset) -> np.ndarray:
    """Computed squared distance of each of ``rows`` to its nearest centroid in ``subset``,
    leaving out its own centroid (``inf`` when none is left)."""
    position = np.full(ca.shape[0], -1, dtype=np.int64)
    position[subset] = np.arange(subset.size)
    sub_t = ca[subset].T
    out = np.empty(rows.shape[0], dtype=np.float32)
    for start in range(0, rows.shape[0], ASSIGNED_CHUNK):
        chunk = rows[start : start + ASSIGNED_CHUNK]
        scores = xa[chunk] @ sub_t
        own = position[labels[chunk]]
        mine = np.flatnonzero(own >= 0)
        scores[mine, own[mine]] = np.inf
        out[start : start + chunk.shape[0]] = scores.min(axis=1) + x_sq[chunk]
    return out


def _recompute(xa, x_sq, ca, batch, stale, err, work: RowWork) -> int:
    """Full distances for the ``stale`` rows, in blocks of at most ``batch`` rows.

    A block that is almost all stale is computed whole in place (no copy); otherwise its
    stale rows are gathered first (a copy costs ~1/k of their GEMM). Returns how many
    rows were computed.
    """
    n, k = x_sq.shape[0], ca.shape[0]
    ca_t = ca.T
    size = min(batch, n)
    done = 0
    for start in range(0, n, size):
        stop = min(start + size, n)
        count = int(np.count_nonzero(stale[start:stop]))
        if count == 0:
            continue
        if 10 * count >= 9 * (stop - start):
            rows = np.arange(start, stop)
            block = xa[start:stop]
        else:
            rows = start + np.flatnonzero(stale[start:stop])
            block = scratch(count * xa.shape[1], "rows").reshape(count, xa.shape[1])
            np.take(xa, rows, axis=0, out=block)
        scores = scratch(rows.shape[0] * k).reshape(rows.shape[0], k)
        lab, first, second = nearest_two(block, ca_t, scores)
        first += x_sq[rows]
        second += x_sq[rows]
        work.labels[rows] = lab
        work.dist_sq[rows] = np.maximum(first, 0.0)
        work.known[rows] = True
        work.upper[rows], work.lower[rows] = bd.from_distances(first, second, err[rows])
        work.own[rows] = bd.lower_from_distance(first, err[rows])
        done += rows.shape[0]
    return done


def _inertia(sums, counts, labels, x_sq, centroids) -> float:
    """Sum of squared distances to the assigned centroids, from the cluster sums (float64)."""
    c = centroids.astype(np.float64)
    row_sq = np.bincount(labels, weights=x_sq.astype(np.float64), minlength=c.shape[0])
    total = row_sq.sum() - 2.0 * np.einsum("ij,ij->", c, sums) + float(counts @ np.einsum("ij,ij->i", c, c))
    return max(float(total), 0.0)


@dataclass
class LloydUpdate:
    centroids: np.ndarray  # (k, d) float32
    inertia: float  # of the assignment to the *previous* centroids
    shift_sq: float  # sum of squared centroid moves
    n_changed: int  # -1 when unknown (first step)
    n_reseeded: int
    drift: np.ndarray  # (k,) float64, how far each centroid moved (rounded up)
    n_recomputed: int = 0  # rows that needed the full distance computation


class LloydReduction:
    """Adds partials strictly in partition order as they arrive, then makes the update.

    Partials that arrive early wait until every earlier partition is in, so the sums
    (float64) do not depend on task timing or on the number of workers.
    """

    def __init__(self, n_parts: int):
        self.n_parts = n_parts
        self.waiting: dict[int, LloydPartial] = {}
        self.added: list[LloydPartial] = []
        self.sums: Optional[np.ndarray] = None
        self.counts: Optional[np.ndarray] = None
        self.inertia = 0.0
        self.changed = 0

    def add(self, index: int, partial: LloydPartial) -> None:
        self.waiting[index] = partial
        while len(self.added) in self.waiting:
            part = self.waiting.pop(len(self.added))
            if self.sums is None:
                self.sums, self.counts = part.sums.copy(), part.counts.copy()
            else:
                self.sums += part.sums
                self.counts += part.counts
            self.inertia += part.inertia
            self.changed = -1 if (self.changed < 0 or part.n_changed < 0) else self.changed + part.n_changed
            self.added.append(part)

    def finish(self, previous: np.ndarray) -> LloydUpdate:
        """The next centroids; call once every partition's partial was added.

        An empty cluster is re-seeded at the farthest row not already used for
        another empty cluster (ties: earlier partition, lower row); if none is left
        it keeps its previous position, so a centroid is never NaN.
        """
        if len(self.added) != self.n_parts:
            raise RuntimeError(f"{self.n_parts - len(self.added)} partition partials missing")
        new = previous.astype(np.float64, copy=True)
        filled = self.counts > 0
        new[filled] = self.sums[filled] / self.counts[filled, None]
        empty = np.flatnonzero(~filled)
        if empty.size:
            far_dist = np.concatenate([p.far_dist for p in self.added])
            far_rows = np.concatenate([p.far_rows for p in self.added])
            order = np.argsort(-far_dist, kind="stable")[: empty.size]
            new[empty[: order.size]] = far_rows[order]
        new32 = new.astype(np.float32)
        moved_sq = ((new32.astype(np.float64) - previous.astype(np.float64)) ** 2).sum(axis=1)
        drift = np.sqrt(moved_sq) * (1 + bd.WIDEN)
        recomputed = sum(p.n_recomputed for p in self.added)
        return LloydUpdate(
            new32, self.inertia, float(moved_sq.sum()), self.changed, int(empty.size), drift, recomputed
        )


def reduce_lloyd(partials: list[LloydPartial], previous: np.ndarray) -> LloydUpdate:
    """Combine partials (in the given, fixed order) into the next centroids."""
    reduction = LloydReduction(len(partials))
    for index, partial in enumerate(partials):
        reduction.add(index, partial)
    return reduction.finish(previous)
