"""What the assign stage records about every row, summarised so partitions merge by addition.

Per row (``x`` unit-norm, centroids ``c_j`` of any length):

* cosine distance to centroid j: ``1 - x.c_j / ||c_j||`` (as ``cosine_dist_to_cent``);
* second centroid: the centroid nearest after the assigned one, by the squared L2
  distance the assignment uses (ties to the lowest index);
* margin: cosine distance to the second centroid minus cosine distance to the assigned
  one. It is >= 0 when the two centroids have the same length and can be slightly
  negative otherwise (a row that L2 and cosine place on different sides of the border);
  either way a small margin means a row on the border between two partitions. No margin
  (NaN) when there is one centroid.

`AssignSummary` holds per-cluster sizes, cosine-distance sums and maxima, per-cluster
counts of rows with a margin below each of `MARGIN_THRESHOLDS`, and histograms over fixed
bin edges: the sum of the partitions' summaries is the summary of the whole output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from . import backend as be
from . import ties

#: A row with a margin below a threshold counts as a boundary row at that threshold.
MARGIN_THRESHOLDS = (0.005, 0.01, 0.02)
#: The threshold `boundary_share` and the resource's status report.
HEADLINE_THRESHOLD = 0.01
#: Fixed bin edges, so histograms of partitions add up.
MARGIN_EDGES = np.linspace(0.0, 0.2, 201)
DISTANCE_EDGES = np.linspace(0.0, 1.0, 201)


def nearest_with_second(xa, x_sq, ca, batch: int, centroids: Optional[np.ndarray] = None):
    """`kmeans.nearest` plus each row's second-nearest centroid (int32; None when k == 1).

    Same distance block and tie rules as `kmeans.nearest`, so the labels are the same (with
    ``centroids``, (k, d) float32 on the host, near ties decided exactly; their second is the
    next of the near-tied centroids by exact distance). Runs where the rows live (NumPy or
    CuPy); the results stay there.
    """
    xp = be.namespace(xa)
    n, k = xa.shape[0], ca.shape[0]
    dev = be.device(xa)
    labels = xp.empty(n, dtype=xp.int32, device=dev)
    second = xp.empty(n, dtype=xp.int32, device=dev) if k > 1 else None
    dist_sq = xp.empty(n, dtype=xp.float32, device=dev)
    block = be.scratch(xp, xa, (min(batch, n), k))
    ca_t = ca.T
    rule = None if centroids is None else ties.TieRule(centroids)
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        scores = be.matmul(xp, xa[start:stop, :], ca_t, out=block[: stop - start, :])
        lab = xp.argmin(scores, axis=1)
        first = xp.take_along_axis(scores, lab[:, None], axis=1)[:, 0]
        labels[start:stop] = xp.astype(lab, xp.int32)
        dist_sq[start:stop] = first + x_sq[start:stop]
        if second is None:
            continue
        masked = be.mask_labels(xp, scores, lab)
        runner = xp.argmin(masked, axis=1)
        second[start:stop] = xp.astype(runner, xp.int32)
        if rule is not None:
            runner_score = xp.take_along_axis(masked, runner[:, None], axis=1)[:, 0]
            found = rule.settle(xa[start:stop, :], x_sq[start:stop], masked, lab, first, runner_score)
            labels, dist_sq = ties.write_back(found, start, x_sq, labels, dist_sq)
            if found is not None:
                second = be.put(xp, second, found.rows + start, be.like(found.runner_up, second))
    return labels, be.maximum_(xp, dist_sq, 0.0), second


def second_nearest(
    x: np.ndarray, centroids: np.ndarray, labels: np.ndarray, batch: int = 32768
) -> Optional[np.ndarray]:
    """Second centroid of rows whose centroid is already known (`labels`); None when k == 1."""
    c64 = np.asarray(centroids, dtype=np.float64)
    if len(c64) < 2:
        return None
    c_sq = np.einsum("ij,ij->i", c64, c64)
    second = np.empty(len(labels), dtype=np.int32)
    for start in range(0, len(labels), batch):
        stop = min(start + batch, len(labels))
        scores = c_sq[None, :] - 2.0 * (x[start:stop].astype(np.float64) @ c64.T)
        scores[np.arange(stop - start), labels[start:stop]] = np.inf
        second[start:stop] = scores.argmin(axis=1)
    return second


def unit_centroids(centroids, ref):
    """(k, d) float64 centroids scaled to unit length, on ``ref``'s device."""
    xp = be.namespace(ref)
    c64 = be.like(np.asarray(be.to_host(centroids), dtype=np.float64), ref)
    norms = xp.sqrt(be.rowdot(xp, c64, c64))
    return c64 / xp.maximum(norms, float(np.finfo(np.float64).tiny))[:, None]


def distances_to_assigned(x, centroids, labels, batch: int, second=None):
    """(l2, cosine, margin) (n,) float32 of each row to its centroid, computed in float64 where ``x`` lives.

    ``l2 = ||x - c||``; ``cosine = 1 - x.c / ||c||`` (rows are unit-norm); ``margin`` = the cosine
    distance to the ``second`` (n,) centroid minus that to the own one (all NaN without ``second``).
    One pass over ``x`` in blocks of ``batch`` rows: each block is converted to float64 once and its
    dot product with the own unit centroid serves both the cosine and the margin.
    """
    xp = be.namespace(x)
    n = labels.shape[0]
    c64 = be.like(np.asarray(be.to_host(centroids), dtype=np.float64), x)
    c_unit = unit_centroids(centroids, x)
    l2, cosine = (xp.empty(n, dtype=xp.float32, device=be.device(x)) for _ in range(2))
    margin = xp.full(n, xp.nan, dtype=xp.float32, device=be.device(x))
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        xb = xp.astype(x[start:stop, :], xp.float64)
        lab = labels[start:stop]
        diff = xb - xp.take(c64, lab, axis=0)
        l2[start:stop] = xp.astype(xp.sqrt(be.rowdot(xp, diff, diff)), xp.float32)
        del diff
        own = be.rowdot(xp, xb, xp.take(c_unit, lab, axis=0))
        cosine[start:stop] = xp.astype(1.0 - own, xp.float32)
        if second is not None:
            other = be.rowdot(xp, xb, xp.take(c_unit, second[start:stop], axis=0))
            margin[start:stop] = xp.astype(own - other, xp.float32)  # (1 - other) - (1 - own)
    return l2, cosine, margin


def _histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts (len(edges) + 1): [below edges[0], each bin [e_i, e_i+1), at or above edges[-1]]."""
    values = values[~np.isnan(values)]
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1).astype(np.int64)


def _round(values: np.ndarray, digits: int = 6) -> list:
    return [None if not np.isfinite(v) else float(f"{v:.{digits}g}") for v in np.asarray(values, dtype=np.float64)]


def _histogram_dict(counts: np.ndarray, edges: np.ndarray) -> dict[str, Any]:
    return {
        "edges": _round(edges),
        "counts": [int(c) for c in counts[1:-1]],
        "below": int(counts[0]),
        "above": int(counts[-1]),
    }


@dataclass
class AssignSummary:
    """Per-cluster numbers of the assign stage; `merge` adds partitions."""

    sizes: np.ndarray  # (k,) int64
    cosine_sum: np.ndarray  # (k,) float64
    cosine_max: np.ndarray  # (k,) float64, -inf for an empty cluster
    below: np.ndarray  # (len(MARGIN_THRESHOLDS), k) int64: rows with margin < threshold
    distance_hist: np.ndarray  # (len(DISTANCE_EDGES) + 1,) int64, see `_histogram`
    margin_hist: np.ndarray  # (len(MARGIN_EDGES) + 1,) int64
    rows_with_margin: int

    @classmethod
    def from_rows(cls, labels: np.ndarray, cosine: np.ndarray, margin: np.ndarray, k: int) -> "AssignSummary":
        labels = np.asarray(labels, dtype=np.int64)
        cosine64 = np.asarray(cosine, dtype=np.float64)
        cosine_max = np.full(k, -np.inf)
        np.maximum.at(cosine_max, labels, cosine64)
        has_margin = ~np.isnan(margin)
        below = np.stack([
            np.bincount(labels[has_margin & (margin < t)], minlength=k) for t in MARGIN_THRESHOLDS
        ]).astype(np.int64)
        return cls(
            sizes=np.bincount(labels, minlength=k).astype(np.int64),
            cosine_sum=np.bincount(labels, weights=cosine64, minlength=k),
            cosine_max=cosine_max,
            below=below,
            distance_hist=_histogram(cosine64, DISTANCE_EDGES),
            margin_hist=_histogram(np.asarray(margin, dtype=np.float64), MARGIN_EDGES),
            rows_with_margin=int(has_margin.sum()),
        )

    @classmethod
    def merge(cls, parts: list["AssignSummary"]) -> "AssignSummary":
        if not parts:
            raise ValueError("no partition summaries to merge")
        return cls(
            sizes=np.sum([p.sizes for p in parts], axis=0),
            cosine_sum=np.sum([p.cosine_sum for p in parts], axis=0),
            cosine_max=np.max([p.cosine_max for p in parts], axis=0),
            below=np.sum([p.below for p in parts], axis=0),
            distance_hist=np.sum([p.distance_hist for p in parts], axis=0),
            margin_hist=np.sum([p.margin_hist for p in parts], axis=0),
            rows_with_margin=sum(p.rows_with_margin for p in parts),
        )

    def to_dict(self, sampled_rows: Optional[int] = None) -> dict[str, Any]:
        """The manifest's ``summary`` (means and maxima None for empty clusters)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(self.sizes > 0, self.cosine_sum / np.maximum(self.sizes, 1), np.nan)
        return {
            "rows": int(self.sizes.sum()),
            "sampled_rows": sampled_rows,
            "rows_with_margin": self.rows_with_margin,
            "thresholds": list(MARGIN_THRESHOLDS),
            "boundary_rows": [int(v) for v in self.below.sum(axis=1)],
            "boundary_rows_per_cluster": [[int(v) for v in row] for row in self.below],
            "cosine_dist_mean_per_cluster": _round(mean),
            "cosine_dist_max_per_cluster": _round(self.cosine_max),
            "cosine_dist_mean": float(self.cosine_sum.sum() / max(int(self.sizes.sum()), 1)),
            "cosine_dist_hist": _histogram_dict(self.distance_hist, DISTANCE_EDGES),
            "margin_hist": _histogram_dict(self.margin_hist, MARGIN_EDGES),
        }


class MergeInOrder:
    """Adds partition summaries in partition order as they arrive in any order.

    Holds only the running total and the partitions that arrived early, so the client never
    keeps every partition's per-cluster arrays; the order makes the float sums reproducible.
    """

    def __init__(self, n_parts: int):
        self.n_parts = n_parts
        self.total: Optional[AssignSummary] = None
        self.waiting: dict[int, AssignSummary] = {}
        self.next = 0

    def add(self, index: int, summary: AssignSummary) -> None:
        self.waiting[index] = summary
        while self.next in self.waiting:
            part = self.waiting.pop(self.next)
            self.total = part if self.total is None else AssignSummary.merge([self.total, part])
            self.next += 1

    def result(self) -> AssignSummary:
        if self.next != self.n_parts or self.total is None:
            raise ValueError(f"{self.next} of {self.n_parts} partition summaries added")
        return self.total


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """Imbalance, largest cluster's share and boundary share of a run's summary dict or manifest.

    imbalance = k x sum(size^2) / n^2: the pairwise stage's cost relative to equal clusters.
    """
    sizes = np.asarray(result.get("rows_per_centroid") or [], dtype=np.float64)
    out: dict[str, Any] = {}
    n = sizes.sum()
    if n > 0:
        out["imbalance"] = float(len(sizes) * np.square(sizes).sum() / n**2)
        out["largest_share"] = float(sizes.max() / n)
    summary = result.get("summary") or {}
    rows = summary.get("rows") or 0
    if rows and HEADLINE_THRESHOLD in summary.get("thresholds", []):
        at = summary["thresholds"].index(HEADLINE_THRESHOLD)
        out["boundary_share"] = summary["boundary_rows"][at] / rows
        out["boundary_margin"] = HEADLINE_THRESHOLD
    return out
