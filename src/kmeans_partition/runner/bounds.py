"""Distance bounds that let a Lloyd step skip rows whose label cannot change (Hamerly, 2010).

Each row keeps an upper bound ``upper`` on its distance to its assigned centroid and a
lower bound ``lower`` on its distance to every other centroid. When the centroids move by
``drift`` (per centroid), the triangle inequality gives new bounds without touching the
row: ``upper + drift[label]`` and ``lower - max(drift of the others)``. A row whose
bounds still separate by more than the float32 rounding of a distance computation keeps
its label: the full float32 computation would pick the same centroid, so skipping it
changes nothing (``test_bounds.py`` checks labels against the full computation).

Rounding: a float32 score ``||c||^2 - 2 x.c`` over ``d + 1`` terms is off by at most
``score_error`` (the classic ``gamma_n`` dot-product bound, doubled), and bounds are
stored rounded outwards, so they hold for the exact distances.

Per-row arrays live with the partition (NumPy or CuPy, `backend.py`); ``drift`` and the
centroids come from the client as NumPy and are small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import backend as be

#: Relative widening applied whenever a bound is stored in float32 (> float32 rounding).
WIDEN = 1e-6


@dataclass
class RowBounds:
    """Per-row state carried from one Lloyd step to the next on the worker.

    The three bounds are None after a step that kept none (see ``lloyd.lloyd_partial``).
    """

    labels: np.ndarray  # (n,) int32, nearest centroid under the step's centroids
    upper: Optional[np.ndarray] = None  # (n,) float32, >= distance to the assigned centroid
    lower: Optional[np.ndarray] = None  # (n,) float32, <= distance to any other centroid
    assigned_lower: Optional[np.ndarray] = None  # (n,) float32, <= distance to the assigned centroid
    #: Fractions of the rows the two optional checks (tightening, measuring the most-moved
    #: centroids) settled in the last step; they decide whether the checks run (lloyd.py).
    yields: tuple[float, float] = (1.0, 1.0)
    plain_left: int = 0  # steps still to run without bounds
    backoff: int = 1  # steps to run without bounds the next time pruning does not pay
    #: After a step without bounds (below ``PruningCosts.always_bounds_from_k``): bounds of a few
    #: rows, from which the next step predicts whether computing bounds for all would pay.
    sample: Optional["BoundsSample"] = None

    def drop_bounds(self) -> None:
        """Keep only the labels (used: the step after this one is done). A step redone from this
        state runs without bounds anyway and still counts its changed labels; one with drift would
        compute the bounds afresh. 12 of the 16 bytes a row."""
        self.upper = self.lower = self.assigned_lower = None


#: Rows per partition whose bounds a step without bounds keeps (`BoundsSample`).
SAMPLE_ROWS = 1024


@dataclass
class BoundsSample:
    """Bounds of evenly spaced rows of a partition, kept by a step that kept no bounds."""

    rows: np.ndarray  # (s,) row indices, on the partition's device
    bounds: "RowBounds"  # their labels, upper, lower and assigned_lower (s,)

    @classmethod
    def of(cls, xa, x_sq, ca, centroids: np.ndarray) -> "BoundsSample":
        """The sample's bounds under ``centroids`` ((k, d) host; ``ca`` their augmented form on
        the rows' device), from one small GEMM: ``min(n, SAMPLE_ROWS)`` rows x k."""
        from .kmeans import nearest_two

        xp, n = be.namespace(xa), x_sq.shape[0]
        rows = xp.arange(0, n, max(1, -(-n // SAMPLE_ROWS)), dtype=xp.int64, device=be.device(xa))
        sq = xp.take(x_sq, rows)
        err = score_error(sq, centroids)
        scores = xp.empty((rows.shape[0], ca.shape[0]), dtype=xp.float32, device=be.device(xa))
        labels, first, second, _ = nearest_two(xp.take(xa, rows, axis=0), ca.T, scores)
        upper, lower = from_distances(first + sq, second + sq, err)
        return cls(rows, RowBounds(labels, upper, lower, lower_from_distance(first + sq, err)))

    def settled_fraction(self, x_sq, centroids: np.ndarray, drift: np.ndarray) -> float:
        """Share of the sample the bounds would settle after ``drift``: the step's own share,
        had all rows kept bounds (the optional checks of `lloyd._settle` aside)."""
        if self.rows.shape[0] == 0:
            return 0.0
        xp = be.namespace(x_sq)
        upper, lower, _ = shifted(self.bounds, drift)
        ok = settled(upper, lower, score_error(xp.take(x_sq, self.rows), centroids))
        return float(xp.sum(xp.astype(ok, xp.float64))) / self.rows.shape[0]


def max_norm(centroids: np.ndarray) -> float:
    """The largest centroid norm (float64, host)."""
    c_host = be.to_host(centroids)
    return float(np.sqrt(np.einsum("ij,ij->i", c_host, c_host, dtype=np.float64).max()))


def score_error(x_sq: np.ndarray, centroids: np.ndarray, c_max: Optional[float] = None) -> np.ndarray:
    """Per row, an upper bound (float64) on the float32 error of a squared distance.

    ``2 (d + 2) 2^-24 (||x|| + max ||c||)^2``: the dot product's ``gamma_{d+1}`` bound on
    ``2|x||c| + |c|^2``, the rounding of ``||c||^2`` and ``||x||^2``, times 2 for safety.
    ``c_max``: `max_norm` of ``centroids``, when the caller already has it.
    """
    d = centroids.shape[1]
    c_max = max_norm(centroids) if c_max is None else c_max
    gamma = 2.0 * (d + 2) * 2.0**-24
    xp = be.namespace(x_sq)
    return gamma * (xp.sqrt(xp.astype(x_sq, xp.float64)) + c_max) ** 2


def upper_from_distance(dist_sq: np.ndarray, err: np.ndarray) -> np.ndarray:
    """Upper bound on the true distance given a computed squared distance."""
    xp = be.namespace(dist_sq)
    return xp.astype(xp.sqrt(xp.maximum(xp.astype(dist_sq, xp.float64), 0.0) + err) * (1 + WIDEN), xp.float32)


def lower_from_distance(dist_sq: np.ndarray, err: np.ndarray) -> np.ndarray:
    """Lower bound on the true distance given a computed squared distance."""
    xp = be.namespace(dist_sq)
    return xp.astype(xp.sqrt(xp.maximum(xp.astype(dist_sq, xp.float64) - err, 0.0)) * (1 - WIDEN), xp.float32)


def from_distances(first_sq: np.ndarray, second_sq: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds (upper, lower) from computed squared distances to the nearest and second nearest."""
    return upper_from_distance(first_sq, err), lower_from_distance(second_sq, err)


def shifted(
    bounds: RowBounds, drift: np.ndarray, skip: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """New (upper, lower, assigned_lower) after the centroids moved by ``drift`` (k, float64, >= 0).

    With ``skip`` (centroid indices), ``lower`` bounds only the distance to the other
    centroids not in ``skip``: the caller measures the skipped ones directly.
    """
    xp = be.namespace(bounds.labels)
    rest = np.asarray(drift, dtype=np.float64).copy()  # (k,) on the host
    if skip is not None:
        rest[skip] = -np.inf
    order = np.argsort(rest, kind="stable")
    largest = max(float(rest[order[-1]]), 0.0)
    runner_up = max(float(rest[order[-2]]), 0.0) if rest.shape[0] > 1 else 0.0
    others = xp.where(bounds.labels == int(order[-1]), be.like(np.float64(runner_up), bounds.labels), largest)
    own_drift = xp.take(be.like(np.asarray(drift, dtype=np.float64), bounds.labels), bounds.labels)
    upper = (xp.astype(bounds.upper, xp.float64) + own_drift) * (1 + WIDEN)
    lower = xp.maximum(xp.astype(bounds.lower, xp.float64) - others, 0.0) * (1 - WIDEN)
    if skip is not None and skip.size == drift.shape[0]:
        lower = xp.full_like(lower, xp.inf)  # nothing left to bound
    assigned_lower = xp.maximum(xp.astype(bounds.assigned_lower, xp.float64) - own_drift, 0.0) * (1 - WIDEN)
    return xp.astype(upper, xp.float32), xp.astype(lower, xp.float32), xp.astype(assigned_lower, xp.float32)


def most_drifted(drift: np.ndarray) -> np.ndarray:
    """The ``k // 32`` (at least one) centroids that moved most, measured directly each step.

    Hamerly's single lower bound shrinks by the largest move; a few centroids that jump
    (small clusters, re-seeds) would otherwise unsettle every row.
    """
    k = drift.shape[0]
    m = min(k, max(1, k // 32))
    return np.sort(np.argpartition(-drift, m - 1)[:m]) if k > 1 else np.empty(0, dtype=np.int64)


def settled(upper: np.ndarray, lower: np.ndarray, err: np.ndarray) -> np.ndarray:
    """Rows whose label is certain: ``upper^2 + 2 err < lower^2`` (float64)."""
    xp = be.namespace(upper)
    u = xp.astype(upper, xp.float64)
    lo = xp.astype(lower, xp.float64)
    return u * u + 2.0 * err < lo * lo


def farthest(values, known, upper_sq, r: int, compute, exact=None, slack: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``r`` largest ``values``, farthest first, ties by lower index, and those values.

    ``values`` holds computed squared distances where ``known``; elsewhere only
    ``upper_sq`` (>= the computed value) is known, and ``compute(indices)`` returns the
    computed values. Only rows that could enter the top ``r`` are computed, so the result
    equals selecting from fully computed values. ``values``/``known`` are updated in place
    on NumPy/CuPy; both results are NumPy arrays (of at most ``r`` rows).

    With ``exact(indices)`` (host float64 exact values) and ``slack`` (how far a computed value
    may be from the exact one, twice): rows are ranked by their exact values among those whose
    computed value lies within ``slack`` of the ``r``-th largest, and the exact values are
    returned, so the choice does not depend on how the values were computed (`ties.py`).
    """
    xp = be.namespace(values)
    n = values.shape[0]
    r = min(r, n)
    if r == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64 if exact else np.float32)

    def rth_largest_known(values, known) -> float:
        pool = values[known]
        size = pool.shape[0]
        if size < r:
            return -np.inf
        if be.is_numpy(xp):
            return float(np.partition(pool, size - r)[size - r])
        return float(xp.sort(pool)[size - r])

    if not bool(xp.all(known)):
        threshold = rth_largest_known(values, known) - slack
        need = be.nonzero(xp, ~known & (upper_sq >= threshold))
        if need.shape[0]:
            values = be.put(xp, values, need, compute(need))
            known = be.put(xp, known, need, True)
    candidates = be.nonzero(xp, known & (values >= rth_largest_known(values, known) - slack))
    if exact is None:
        order = xp.argsort(-xp.astype(xp.take(values, candidates), xp.float64), stable=True)[:r]
        chosen = xp.take(candidates, order)
        return be.to_host(chosen), be.to_host(xp.take(values, chosen))
    rows = be.to_host(candidates)
    distances = exact(candidates)
    order = np.lexsort((rows, -distances))[:r]
    return rows[order], distances[order]
