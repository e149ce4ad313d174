"""One Lloyd step on one partition, and the reduction of the partitions' partials.

A step with bounds first moves each row's distance bounds by how far the centroids
moved (`bounds.py`); rows whose label cannot change are skipped, the others may get
their distance to the assigned centroid or to the most-moved centroids measured, and
only rows still in doubt get the full GEMM against all centroids. Labels equal those
of the exact computation: rows tied within float32 rounding are decided by exact distances
(`ties.py`), so no label depends on which rows a GEMM took; early steps (centroids moving a lot) skip nothing,
late steps most rows (docs/benchmarks.md). A step without bounds (the first one, or
when pruning does not pay) is the plain blocked GEMM + argmin.

Rows and per-row state stay where the partition lives (NumPy or CuPy, `backend.py`); the
centroids and drift arrive as NumPy and the partial comes back as NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import backend as be
from . import bounds as bd
from . import ties
from .kmeans import BlockSums, augment_centroids, nearest, nearest_two
from .pruning import PruningCosts, bounds_pay, regrown, schedule, worth

#: Farthest rows each partition offers per Lloyd step for re-seeding empty clusters.
RESEED_CANDIDATES = 32

#: Rows per chunk when recomputing distances to the assigned centroids or the most-moved ones
#: (their gathered rows and centroids, 6 MB at d=384: 8192 rows held 25 MB, the fit's largest
#: temporary, and were not faster).
ASSIGNED_CHUNK = 2048


@dataclass
class LloydPartial:
    """One partition's contribution to a Lloyd step; reduced in partition order."""

    sums: np.ndarray  # (k, d) float64
    counts: np.ndarray  # (k,) int64
    inertia: float
    n_changed: int  # rows whose label changed since the previous step (-1: unknown)
    far_dist: np.ndarray  # (r,) float64 exact squared distances of the partition's farthest rows, descending
    far_rows: np.ndarray  # (r, d) float32
    n_recomputed: int = 0  # rows that needed the full distance computation


def partial_bytes(k: int, d: int) -> int:
    """The most bytes a (combined) `LloydPartial` of ``k`` clusters in ``d`` dimensions holds: the
    float64 sums and int64 counts, and up to ``k`` far rows (float32) with their distances."""
    return k * (8 * d + 8) + k * (4 * d + 8)


def lloyd_partial(
    xa: np.ndarray,
    x_sq: np.ndarray,
    centroids: np.ndarray,
    batch: int,
    previous: Optional[tuple[LloydPartial, bd.RowBounds]] = None,
    drift: Optional[np.ndarray] = None,
    costs: PruningCosts = PruningCosts(),
) -> tuple[LloydPartial, bd.RowBounds]:
    """Assign rows to ``centroids``; return the partial sums and the rows' new state.

    ``previous`` is this partition's result of the last step and ``drift`` how far each
    centroid moved since; with both, rows whose label cannot change are skipped. Without
    ``drift`` every row is computed and no bounds are kept. Below ``always_bounds_from_k``
    clusters, a step without bounds keeps a few rows' bounds, and bounds are computed for all
    rows only when those predict that they pay; when pruning then settles too few rows, the
    next 1, 2, 4, ... steps run without (`pruning.py`). The cluster sums are always recomputed
    from all rows (updating them with the rows that moved made centroids depend on the rounding
    history, which changed labels). ``costs`` decide when pruning and its checks pay.
    """
    xp = be.namespace(xa)
    k, d = centroids.shape
    n = x_sq.shape[0]
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    ca, batch = augment_centroids(centroids, ref=xa), be.block_rows(xp, batch, k)
    last = None if previous is None or drift is None else previous[1]
    if last is None or last.plain_left > 0 or not bounds_pay(last, x_sq, centroids, drift, costs):
        block_sums = BlockSums.for_rows(xa, k)
        labels, dist_sq = nearest(xa, x_sq, ca, batch, block_sums, centroids)
        n_recomputed, known, err = n, xp.ones(n, dtype=xp.bool, device=be.device(xa)), None
        state = bd.RowBounds(labels, plain_left=max(last.plain_left - 1, 0) if last else 0,
                             backoff=last.backoff if last else 1)
        if k < costs.always_bounds_from_k and state.plain_left == 0:  # the next step asks it
            state.sample = bd.BoundsSample.of(xa, x_sq, ca, centroids)
    else:
        err = bd.score_error(x_sq, centroids)
        if last.upper is None:  # the last step kept no bounds: compute them for the next
            work, stale = RowWork.blank(x_sq), xp.ones(n, dtype=xp.bool, device=be.device(xa))
        else:
            work, stale = _settle(xa, x_sq, ca, err, last, drift, costs)
        block_sums = BlockSums(xa, work.labels, k)
        n_recomputed = _recompute(xa, x_sq, ca, centroids, batch, stale, err, work, block_sums, costs)
        labels, dist_sq, known = work.labels, work.dist_sq, work.known
        state = bd.RowBounds(
            labels, work.upper, work.lower, work.assigned_lower, work.yields, backoff=last.backoff
        )
        if last.upper is not None:
            schedule(state, k, 1.0 - n_recomputed / max(n, 1), costs)
    sums, counts = block_sums.result()
    sums, counts = be.to_host(sums[:, :d]), be.to_host(counts)
    upper_sq = None if err is None else xp.astype(state.upper, xp.float64) ** 2 + err
    far, far_dist = bd.farthest(
        dist_sq, known, upper_sq, RESEED_CANDIDATES, lambda rows: _to_assigned(xa, x_sq, ca, labels, rows),
        exact=lambda rows: ties.exact_sq_to(xa, rows, centroids, xp.take(labels, rows)),
        slack=float(be.to_host(ties.slack(xp.reshape(xp.max(x_sq), (1,)), centroids))[0]) if n else 0.0,
    )
    partial = LloydPartial(
        sums=sums,
        counts=counts,
        inertia=_inertia(sums, counts, labels, x_sq, centroids),
        n_changed=-1 if previous is None else int(xp.sum(xp.astype(previous[1].labels != labels, xp.int64))),
        far_dist=far_dist,
        far_rows=np.ascontiguousarray(be.to_host(xp.take(xa, be.like(far, xa), axis=0))[:, :d]),
        n_recomputed=n_recomputed,
    )
    return partial, state


@dataclass
class RowWork:
    """Per-row arrays a step fills in place."""

    labels: np.ndarray
    upper: np.ndarray
    lower: np.ndarray
    assigned_lower: np.ndarray  # lower bound on the distance to the assigned centroid
    dist_sq: np.ndarray  # computed squared distance to the assigned centroid, where `known`
    known: np.ndarray
    yields: tuple[float, float] = (1.0, 1.0)  # see bounds.RowBounds.yields

    @classmethod
    def blank(cls, ref, previous: Optional[bd.RowBounds] = None) -> "RowWork":
        """Fresh arrays for the rows of ``ref`` ((n,) array, for its length, library and device)."""
        xp, dev, n = be.namespace(ref), be.device(ref), ref.shape[0]
        empty = xp.empty(n, dtype=xp.float32, device=dev)
        labels = xp.zeros(n, dtype=xp.int32, device=dev) if previous is None else xp.asarray(previous.labels, copy=True)
        return cls(labels, empty, xp.empty_like(empty), xp.empty_like(empty), xp.zeros(n, dtype=xp.float32, device=dev),
                   xp.zeros(n, dtype=xp.bool, device=dev))


def _settle(
    xa, x_sq, ca, err, previous: bd.RowBounds, drift, costs: PruningCosts
) -> tuple[RowWork, np.ndarray]:
    """Move the bounds by ``drift`` and find the rows still in doubt (``stale``).

    Also records in ``work.yields`` how many of the rows each check looked at it settled.
    """
    xp = be.namespace(xa)
    k = ca.shape[0]
    work = RowWork.blank(x_sq, previous)
    tighten_yield, measure_yield = previous.yields
    moved = bd.most_drifted(drift)
    if not worth(measure_yield, k, costs.gather + moved.size):
        moved = moved[:0]
    work.upper, work.lower, work.assigned_lower = bd.shifted(previous, drift, moved)
    stale = ~bd.settled(work.upper, work.lower, err)
    # Tighten (one dot product) only rows that the exact distance could settle.
    doubt = be.nonzero(xp, stale & bd.settled(work.assigned_lower, work.lower, err))
    if doubt.shape[0] and worth(tighten_yield, k, costs.tighten):
        dist = _to_assigned(xa, x_sq, ca, work.labels, doubt)
        err_d, lower_d = xp.take(err, doubt), xp.take(work.lower, doubt)
        upper_d = bd.upper_from_distance(dist, err_d)
        work.dist_sq = be.put(xp, work.dist_sq, doubt, dist)
        work.known = be.put(xp, work.known, doubt, True)
        work.upper = be.put(xp, work.upper, doubt, upper_d)
        work.assigned_lower = be.put(xp, work.assigned_lower, doubt, bd.lower_from_distance(dist, err_d))
        still = ~bd.settled(upper_d, lower_d, err_d)
        stale = be.put(xp, stale, doubt, still)
        tighten_yield = 1.0 - _count(xp, still) / doubt.shape[0]
    else:
        tighten_yield = regrown(tighten_yield)
    hopeful = be.nonzero(xp, ~stale)
    if moved.size:  # the most-moved centroids were left out of `lower`: measure them
        if hopeful.shape[0]:
            near = _nearest_of(xa, x_sq, ca, work.labels, hopeful, moved)
            err_h = xp.take(err, hopeful)
            lower_h = xp.minimum(xp.take(work.lower, hopeful), bd.lower_from_distance(near, err_h))
            work.lower = be.put(xp, work.lower, hopeful, lower_h)
            still = ~bd.settled(xp.take(work.upper, hopeful), lower_h, err_h)
            stale = be.put(xp, stale, hopeful, still)
            measure_yield = 1.0 - _count(xp, still) / hopeful.shape[0]
    else:
        measure_yield = regrown(measure_yield)
    work.yields = (float(tighten_yield), float(measure_yield))
    return work, stale


def _count(xp, mask) -> int:
    return int(xp.sum(xp.astype(mask, xp.int64)))


def _to_assigned(xa, x_sq, ca, labels, rows):
    """Computed squared distances (float32, >= 0) of ``rows`` (an index array) to their assigned centroids."""
    xp = be.namespace(xa)
    out = xp.empty(rows.shape[0], dtype=xp.float32, device=be.device(xa))
    for start in range(0, rows.shape[0], ASSIGNED_CHUNK):
        chunk = rows[start : min(start + ASSIGNED_CHUNK, rows.shape[0])]
        assigned = xp.take(ca, xp.take(labels, chunk), axis=0)
        scores = be.rowdot(xp, xp.take(xa, chunk, axis=0), assigned, dtype=xp.float32)
        out[start : start + chunk.shape[0]] = xp.maximum(scores + xp.take(x_sq, chunk), 0.0)
    return out


def _nearest_of(xa, x_sq, ca, labels, rows, subset):
    """Computed squared distance of each of ``rows`` to its nearest centroid in ``subset``
    (host indices), leaving out its own centroid (``inf`` when none is left)."""
    xp = be.namespace(xa)
    position = np.full(ca.shape[0], -1, dtype=np.int64)
    position[subset] = np.arange(subset.size)
    position = be.like(position, xa)
    sub_t = xp.take(ca, be.like(np.asarray(subset, dtype=np.int64), xa), axis=0).T
    cols = xp.arange(subset.size, device=be.device(xa))
    out = xp.empty(rows.shape[0], dtype=xp.float32, device=be.device(xa))
    for start in range(0, rows.shape[0], ASSIGNED_CHUNK):
        chunk = rows[start : min(start + ASSIGNED_CHUNK, rows.shape[0])]
        scores = xp.take(xa, chunk, axis=0) @ sub_t
        own = xp.take(position, xp.take(labels, chunk))
        scores = xp.where(cols[None, :] == own[:, None], xp.inf, scores)
        out[start : start + chunk.shape[0]] = xp.min(scores, axis=1) + xp.take(x_sq, chunk)
    return out


def _recompute(
    xa, x_sq, ca, centroids, batch, stale, err, work: RowWork, block_sums: BlockSums, costs: PruningCosts
) -> int:
    """Full distances for the ``stale`` rows, in blocks of at most ``batch`` rows.

    A block whose stale rows would cost more to copy out than computing the others costs
    is computed whole in place; otherwise its stale rows are gathered first. Returns how
    many rows were computed. Each block's rows are added to ``block_sums`` once labelled.
    """
    xp = be.namespace(xa)
    n, k = x_sq.shape[0], ca.shape[0]
    ca_t = ca.T
    size = min(batch, n)
    done = 0
    for start in range(0, n, size):
        stop = min(start + size, n)
        count = _count(xp, stale[start:stop])
        if count == 0:
            block_sums.advance(stop)
            continue
        if count * (k + costs.gather) >= (stop - start) * k:
            rows = slice(start, stop)
            block = xa[start:stop, :]
            count = stop - start
        else:
            rows = start + be.nonzero(xp, stale[start:stop])
            if be.is_numpy(xp):
                block = be.scratch(xp, xa, (count, xa.shape[1]), "rows")
                np.take(xa, rows, axis=0, out=block)
            else:
                block = xp.take(xa, rows, axis=0)
        x_sq_rows = x_sq[rows] if isinstance(rows, slice) else xp.take(x_sq, rows)
        err_rows = err[rows] if isinstance(rows, slice) else xp.take(err, rows)
        scores = be.scratch(xp, xa, (count, k))
        lab, first, second, scores = nearest_two(block, ca_t, scores)
        found = ties.settle_block(block, scores, lab, first, 2.0 * err_rows, centroids, second)
        if found is not None:  # near ties: the exact label; its score bounds the row, the best the others
            second = be.put(xp, second, found.rows, xp.take(first, found.rows))
            first = be.put(xp, first, found.rows, be.like(found.scores, first))
            lab = be.put(xp, lab, found.rows, be.like(found.labels, lab))
        first = first + x_sq_rows
        second = second + x_sq_rows
        upper, lower = bd.from_distances(first, second, err_rows)
        for name, values in (("labels", lab), ("dist_sq", xp.maximum(first, 0.0)), ("known", True),
                             ("upper", upper), ("lower", lower),
                             ("assigned_lower", bd.lower_from_distance(first, err_rows))):
            target = getattr(work, name)
            if isinstance(rows, slice):
                target[rows] = values
            else:
                setattr(work, name, be.put(xp, target, rows, values))
        block_sums.labels = work.labels  # a new array where `put` cannot write in place
        block_sums.advance(stop)
        done += count
    return done


def _inertia(sums, counts, labels, x_sq, centroids) -> float:
    """Sum of squared distances to the assigned centroids, from the cluster sums (float64, host)."""
    c = np.asarray(centroids, dtype=np.float64)
    row_sq = be.to_host(be.bincount(be.namespace(labels), labels, c.shape[0], weights=x_sq))
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
