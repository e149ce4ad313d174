"""Near ties decided by exact distances, so a label never depends on how a GEMM was shaped.

A float32 score ``||c||^2 - 2 x.c`` is within `bounds.score_error` (e) of its exact value, but
which rounding it gets depends on the product that computed it: BLAS blocks a subset of rows
differently from a whole block (docs/reliability.md, "near ties"). The exact nearest centroid
``c*`` always scores within 2e of the best computed score (``computed(c*) <= exact(c*) + e <=
exact(best) + e <= computed(best) + 2e``), so a row whose two best scores lie further apart
than 2e has the exact label already. A row whose runner-up lies within 2e is a *near tie*: it
is re-decided here by float64 distances to every centroid within 2e of its best, computed on
the host one row-centroid pair at a time (each value independent of which other pairs are
computed), ties to the lowest index. Labels then equal the exact argmin whatever the GEMM's
shape, on NumPy and CuPy alike, and so do the farthest rows picked for re-seeding
(`exact_sq_to`).

Near ties are rare (the slack is a few 1e-4 on unit vectors at d=384): their cost is a copy of a
few rows to the host. Finding them costs one more pass over each block's scores (the
second-smallest score), or none where the fused host kernel labels NumPy blocks (`label_fused`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import backend as be
from . import bounds as bd
from . import host_kernels as hk

#: Up to this many centroids, NumPy finds near ties by counting scores under the limit (measured:
#: 0.7 ms vs 1.2 ms for a masked min over 16384 x 100 scores; at k=1000 the min is faster).
COUNT_BELOW_K = 255

#: Row-centroid pairs per float64 chunk of `exact_sq` (8 MB at d=384).
EXACT_CHUNK = 2048


@dataclass
class Ties:
    """The near-tie rows of one block and how they were decided (host arrays, one entry per row)."""

    rows: object  # (t,) int64 block-local indices, on the block's device
    labels: np.ndarray  # (t,) int32, the exact nearest among the candidates
    scores: np.ndarray  # (t,) float32, the computed score of that label
    runner_up: np.ndarray  # (t,) int32, the next candidate by exact distance


class TieRule:
    """The near-tie rule for one set of centroids ((k, d), host): their largest norm computed once,
    not for every block."""

    def __init__(self, centroids: np.ndarray):
        self.centroids = np.ascontiguousarray(be.to_host(centroids), dtype=np.float32)
        self.c_max = bd.max_norm(self.centroids)

    def slack(self, x_sq):
        """Per row, the float64 width (2e) within which a computed score may beat the exact nearest's."""
        return 2.0 * bd.score_error(x_sq, self.centroids, self.c_max)

    def settle(self, xa, x_sq, scores, labels, first, second=None) -> Optional["Ties"]:
        """`settle_block` for a block of rows (``x_sq`` their squared norms)."""
        return settle_block(xa, scores, labels, first, self.slack(x_sq), self.centroids, second)

    def label_fused(self, xa, x_sq, scores, labels, dist_sq, slack) -> Optional["Ties"]:
        """Label a NumPy block with the fused host kernel (`host_kernels.label_block`): writes the
        labels (int32) and squared distances (float32, before ties) into ``labels`` and ``dist_sq``
        (the block's (m,) views) and returns the decided near ties, as `settle` does after argmin.
        ``slack``: `slack` of the block's rows (computed once for all blocks: one call per block
        cost ~0.15 ms, 3% of a step at k=100)."""
        first, near = np.empty(scores.shape[0], dtype=np.float32), np.empty(scores.shape[0], dtype=np.bool_)
        n_near = hk.label_block(scores, slack, labels, first, near)
        np.add(first, x_sq, out=dist_sq)
        if n_near == 0:
            return None
        return settle_block(xa, scores, labels, first, slack, self.centroids, rows=np.flatnonzero(near))


def slack(x_sq, centroids: np.ndarray):
    """`TieRule.slack` for a one-off call."""
    return TieRule(centroids).slack(x_sq)


def write_back(found: Optional["Ties"], start: int, x_sq, labels, dist_sq):
    """Labels and squared distances (n,) with a block's decided ties (block rows from ``start``) put in.

    Returns both (new arrays where the library cannot write in place).
    """
    if found is None:
        return labels, dist_sq
    xp = be.namespace(labels)
    at = found.rows + start
    labels = be.put(xp, labels, at, be.like(found.labels, labels))
    return labels, be.put(xp, dist_sq, at, be.like(found.scores, dist_sq) + xp.take(x_sq, at))


def exact_sq(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distances (float64) between paired rows of ``x`` and ``c`` ((m, d) float32, host).

    Each value is the float64 sum of squared float64 differences of one pair (the difference of
    two float32 numbers is exact in float64): it depends on that pair only.
    """
    out = np.empty(x.shape[0], dtype=np.float64)
    for start in range(0, x.shape[0], EXACT_CHUNK):
        stop = min(start + EXACT_CHUNK, x.shape[0])
        diff = x[start:stop].astype(np.float64) - c[start:stop].astype(np.float64)
        np.square(diff, out=diff)
        out[start:stop] = diff.sum(axis=1)
    return out


def exact_sq_to(xa, rows, centroids: np.ndarray, labels) -> np.ndarray:
    """Exact squared distances (float64, host) of ``rows`` of the augmented ``xa`` to their labels' centroids.

    Rows are copied to the host `EXACT_CHUNK` at a time (data full of duplicates may tie many rows).
    """
    xp = be.namespace(xa)
    d = centroids.shape[1]
    rows, assigned = np.asarray(be.to_host(rows), dtype=np.int64), be.to_host(labels)
    out = np.empty(rows.shape[0], dtype=np.float64)
    for start in range(0, rows.shape[0], EXACT_CHUNK):
        chunk = be.like(rows[start:start + EXACT_CHUNK], xa)
        x = np.ascontiguousarray(be.to_host(xp.take(xa, chunk, axis=0))[:, :d])
        out[start:start + x.shape[0]] = exact_sq(x, centroids[assigned[start:start + EXACT_CHUNK]])
    return out


def _near_tie_rows(xp, scores, labels, limit, second):
    """Block-local indices of the rows with a second score within ``limit`` (float64 per row)."""
    if second is None and be.is_numpy(xp) and scores.shape[1] <= COUNT_BELOW_K:
        # short rows: one vectorised comparison and a byte count beat a masked min per row
        within = scores <= np.nextafter(limit.astype(np.float32), np.float32(np.inf))[:, None]
        return np.flatnonzero(within.view(np.uint8).sum(axis=1, dtype=np.uint8) > 1)
    if second is None:
        second = xp.min(be.mask_labels(xp, scores, labels), axis=1)
    return be.nonzero(xp, xp.astype(second, xp.float64) <= limit)


def settle_block(xa, scores, labels, first, slack_rows, centroids: np.ndarray, second=None,
                 rows=None) -> Optional[Ties]:
    """Find and decide the near ties of one block; None when there are none.

    ``xa`` (m, d + 1): the block's augmented rows; ``scores`` (m, k): their computed scores (each
    row's ``labels`` entry may already be ``inf``: ``second`` (m,), the smallest score of the
    others, is then given; without it they are masked here, in place); ``first`` (m,): each
    row's smallest score;
    ``slack_rows`` (m,) float64: `slack`; ``centroids`` (k, d) float32 on the host. Arrays other
    than ``centroids`` live on the block's device.
    """
    xp = be.namespace(scores)
    if scores.shape[1] < 2:
        return None
    limit = xp.astype(first, xp.float64) + slack_rows
    rows = _near_tie_rows(xp, scores, labels, limit, second) if rows is None else rows
    if rows.shape[0] == 0:
        return None
    limit_h = be.to_host(xp.take(limit, rows))
    sub = be.to_host(xp.take(scores, rows, axis=0)).copy()  # (t, k), own label masked
    own = be.to_host(xp.take(labels, rows)).astype(np.int64)
    at = np.arange(rows.shape[0])
    sub[at, own] = be.to_host(xp.take(first, rows))
    pair_row, pair_col = np.nonzero(sub.astype(np.float64) <= limit_h[:, None])
    d = centroids.shape[1]
    x = np.ascontiguousarray(be.to_host(xp.take(xa, rows, axis=0))[:, :d])
    dist = exact_sq(x[pair_row], centroids[pair_col])
    order = np.lexsort((pair_col, dist, pair_row))  # by row, then exact distance, then index
    pair_row, pair_col = pair_row[order], pair_col[order]
    starts = np.flatnonzero(np.r_[True, pair_row[1:] != pair_row[:-1]])
    best = pair_col[starts]
    after = np.minimum(starts + 1, pair_row.size - 1)  # every near tie has two candidates at least
    runner_up = np.where(pair_row[after] == pair_row[starts], pair_col[after], best)
    return Ties(rows, best.astype(np.int32), sub[at, best].astype(np.float32), runner_up.astype(np.int32))
