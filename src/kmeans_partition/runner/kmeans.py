"""K-means numerics on one block of rows (float32 data), on any array API library.

Everything here is a pure function of arrays, so the Dask layer (`fit.py`)
only moves arrays and reduces partial results in a fixed order. The kernels take
the rows' namespace (`backend.namespace`): NumPy on CPU workers, CuPy on GPU workers;
what the array API standard lacks comes from `backend.py`.

Distances use one GEMM per block of ``batch`` rows. Rows are stored with an
extra constant column of ones (``augment_rows``) and centroids as
``[-2c, ||c||^2]`` (``augment_centroids``), so ``xa @ ca.T`` is
``||x - c||^2 - ||x||^2`` without another pass over the ``batch x k`` block.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import backend as be
from . import host_kernels as hk
from . import ties


def augment_rows(x):
    """(n, d) -> (n, d + 1) float32 with a trailing column of ones (same library and device)."""
    xp = be.namespace(x)
    out = xp.empty((x.shape[0], x.shape[1] + 1), dtype=xp.float32, device=be.device(x))
    out[:, :-1] = x
    out[:, -1] = 1.0
    return out


def augment_centroids(centroids, ref=None):
    """(k, d) -> (k, d + 1) float32 ``[-2c, ||c||^2]`` (norms computed in float64).

    Computed where ``centroids`` live; with ``ref`` (an array), returned on ``ref``'s device.
    """
    xp = be.namespace(centroids)
    c64 = xp.astype(centroids, xp.float64)
    k, d = c64.shape
    out = xp.empty((k, d + 1), dtype=xp.float32, device=be.device(c64))
    out[:, :-1] = xp.astype(-2.0 * c64, xp.float32)
    out[:, -1] = xp.astype(be.rowdot(xp, c64, c64), xp.float32)
    return out if ref is None else be.like(out, ref)


def row_sq_norms(x):
    """Squared L2 norm of each row, float32."""
    xp = be.namespace(x)
    x = xp.astype(x, xp.float32, copy=False)
    return be.rowdot(xp, x, x, dtype=xp.float32)


def scratch(size: int, name: str = "block") -> np.ndarray:
    """A NumPy float32 buffer of at least `size` values reused by this thread (`backend.scratch`)."""
    return be.scratch(be.namespace(np.empty(0)), None, (size,), name)


def nearest(xa, x_sq, ca, batch: int, sums: Optional["BlockSums"] = None, centroids: Optional[np.ndarray] = None):
    """Labels (int32) and squared distances (float32, >= 0) to the nearest centroid.

    ``xa``: augmented rows (n, d + 1), ``x_sq``: their squared norms (n,), ``ca``: augmented
    centroids (k, d + 1), all of one library and device. Ties go to the lowest centroid index
    (as NumPy's argmin and scikit-learn do). With ``sums`` (built on the same labels array,
    see `BlockSums.for_rows`), each block's rows are added to the cluster sums right after
    they are labelled. With ``centroids`` (the (k, d) float32 centroids on the host), near ties
    are decided by exact distances (`ties.py`): the labels then do not depend on ``batch``.
    """
    xp = be.namespace(xa)
    n = xa.shape[0]
    k = ca.shape[0]
    dev = be.device(xa)
    labels = sums.labels if sums is not None else xp.empty(n, dtype=xp.int32, device=dev)
    dist_sq = xp.empty(n, dtype=xp.float32, device=dev)
    block = be.scratch(xp, xa, (min(batch, n), k))
    ca_t = ca.T
    rule = None if centroids is None else ties.TieRule(centroids)
    fused = rule is not None and hk.usable(xa)
    slack = rule.slack(x_sq) if fused else None
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        scores = be.matmul(xp, xa[start:stop, :], ca_t, out=block[: stop - start, :])
        if fused:  # the same labels, distances and ties, two passes per row in cache (`host_kernels.py`)
            found = rule.label_fused(xa[start:stop, :], x_sq[start:stop], scores, labels[start:stop],
                                     dist_sq[start:stop], slack[start:stop])
        else:
            lab = xp.argmin(scores, axis=1)
            first = xp.take_along_axis(scores, lab[:, None], axis=1)[:, 0]
            labels[start:stop] = xp.astype(lab, xp.int32)
            dist_sq[start:stop] = first + x_sq[start:stop]
            found = None if rule is None else rule.settle(xa[start:stop, :], x_sq[start:stop], scores, lab, first)
        labels, dist_sq = ties.write_back(found, start, x_sq, labels, dist_sq)
        if sums is not None:
            sums.labels = labels  # a new array where `put` cannot write in place
            sums.advance(stop)
    return labels, be.maximum_(xp, dist_sq, 0.0)


def nearest_two(xa, ca_t, scores):
    """One block: labels (int32), smallest and second smallest score ``||c||^2 - 2x.c``, and the scores.

    ``scores`` is a ``len(xa) x k`` float32 work buffer (overwritten; the returned scores may be
    another array, with each row's label entry set to ``inf`` or not). The second score is
    ``inf`` when there is one centroid. Ties go to the lowest index, as in `nearest`.
    """
    xp = be.namespace(xa)
    scores = be.matmul(xp, xa, ca_t, out=scores)
    labels = xp.argmin(scores, axis=1)
    first = xp.take_along_axis(scores, labels[:, None], axis=1)[:, 0]
    second = xp.min(be.mask_labels(xp, scores, labels), axis=1)
    return xp.astype(labels, xp.int32), first, second, scores


#: Rows per one-hot product in `cluster_sums` on NumPy: float32 products, accumulated in float64
#: (on CuPy: `backend.sum_block`).
SUM_BLOCK = be.HOST_SUM_BLOCK


class BlockSums:
    """Per-cluster row sums (float64) built block by block as the labels become final.

    Each block of `SUM_BLOCK` rows is summed in float32 with a one-hot product
    (`backend.segment_sum`) and the block sums are accumulated in float64, in row order, so
    the rounding error does not grow with the cluster size and the result does not depend on
    when `advance` is called (adding a block right after its rows were labelled reads them
    while still in cache). ``xa`` should be C-contiguous (scipy copies strided views).
    """

    def __init__(self, xa, labels, k: int):
        xp = be.namespace(xa)
        self.xp, self.xa, self.labels, self.k = xp, xa, labels, k
        self.sums = xp.zeros((k, xa.shape[1]), dtype=xp.float64, device=be.device(xa))
        self.done = 0
        self.block = SUM_BLOCK if be.is_numpy(xp) else be.sum_block(xp)
        self.ones = xp.ones(min(xa.shape[0], self.block), dtype=xa.dtype, device=be.device(xa))

    @classmethod
    def for_rows(cls, xa, k: int) -> "BlockSums":
        """Sums over a fresh labels array (``.labels``) that the caller fills in row order."""
        xp = be.namespace(xa)
        return cls(xa, xp.empty(xa.shape[0], dtype=xp.int32, device=be.device(xa)), k)

    def advance(self, stop: int) -> None:
        """Add every block whose rows all lie below ``stop`` (all rows once ``stop`` >= n)."""
        n = self.xa.shape[0]
        while self.done < n and (self.done + self.block <= stop or stop >= n):
            end = min(self.done + self.block, n)
            block = be.segment_sum(self.xp, self.labels[self.done:end], self.xa[self.done:end, :], self.k, self.ones)
            self.sums += block  # float32 block sums added into float64 (no float64 temporary)
            self.done = end

    def result(self):
        """(sums (k, columns) float64, counts (k,) int64) over all rows, on the rows' device."""
        self.advance(self.xa.shape[0])
        return self.sums, be.bincount(self.xp, self.labels, self.k)


def cluster_sums(x, labels, k: int):
    """Per-cluster row sums (float64, k x d) and counts (int64): `BlockSums` in one go.

    Pass the augmented rows (contiguous) and drop the last column of the sums.
    """
    return BlockSums(x, labels, k).result()


def tolerance(feature_sum: np.ndarray, feature_sq_sum: np.ndarray, n_rows: int, tol: float) -> float:
    """scikit-learn's absolute tolerance: ``tol`` x mean per-feature variance of the data."""
    if tol == 0 or n_rows == 0:
        return 0.0
    mean = feature_sum / n_rows
    variance = np.maximum(feature_sq_sum / n_rows - mean**2, 0.0)
    return float(variance.mean() * tol)


# ---------------------------------------------------------------- k-means++ on the k-means|| candidates

#: Float32 entries of one distance block of the candidate reduction (16 MB, like the host score
#: blocks); a block has at most this many entries (and at least one row), never candidates x
#: candidates. 128 MB before: the reducing worker's peak went up 105 MiB at k=2000 (24 MiB now), at
#: the same speed there; at k=10,000 the reduction takes 4.3 -> 5.0 s.
SEED_BLOCK_ENTRIES = 1 << 22
#: Most proposals drawn per batch without local trials (their pairwise distances: 4 MB).
SEED_POOL_MAX = 1024
#: The local trials' GEMMs may cost this share of one Lloyd iteration over the data, at most.
TRIAL_BUDGET = 0.1


def local_trials(k: int, n_points: int, n_rows: Optional[int] = None) -> int:
    """Local trials per centre: scikit-learn's ``2 + ln k``, fewer when that would cost too much.

    Each trial is one row of distances to the ``n_points`` candidates, so the trials cost about
    ``trials x k x n_points`` multiply-adds per dimension against ``n_rows x k`` for one Lloyd
    iteration over the data; with ``n_rows``, trials are capped at ``TRIAL_BUDGET`` of that.
    """
    full = 2 + int(np.log(k))
    if n_rows is None:
        return full
    return int(min(full, max(1, TRIAL_BUDGET * n_rows // max(n_points, 1))))


class PointDistances:
    """Squared distances between rows of one point set: one float32 GEMM per block.

    ``points`` (m, d) may live on any array library/device (NumPy, CuPy); distances stay there.
    Index arguments are host (NumPy) integer arrays.
    """

    def __init__(self, points):
        xp = be.namespace(points)
        self.xp = xp
        self.points = np.ascontiguousarray(points, dtype=np.float32) if be.is_numpy(xp) else \
            xp.astype(points, xp.float32, copy=False)
        self.augmented = augment_rows(self.points)
        self.sq = row_sq_norms(self.points)

    def index(self, rows) -> Any:
        """Host indices as an index array on the points' device."""
        return np.asarray(rows, dtype=np.int64) if be.is_numpy(self.xp) else be.like(np.asarray(rows, np.int64), self.sq)

    def block(self, rows, cols=None):
        """(len(rows), len(cols) or all points) float32, >= 0, on the points' device."""
        xp, r = self.xp, self.index(rows)
        targets = self.augmented if cols is None else xp.take(self.augmented, self.index(cols), axis=0)
        out = be.matmul(xp, augment_centroids(xp.take(self.points, r, axis=0)), targets.T)
        sq = self.sq if cols is None else xp.take(self.sq, self.index(cols), axis=0)
        if be.is_numpy(xp):
            out += sq
        else:
            out = out + sq[None, :]
        return be.maximum_(xp, out, 0.0)

    def nearest_of(self, rows, closest):
        """``closest`` (m,) lowered to each point's distance to ``rows``, in blocks of `SEED_BLOCK_ENTRIES`."""
        xp = self.xp
        step = max(1, SEED_BLOCK_ENTRIES // self.sq.shape[0])
        for start in range(0, len(rows), step):
            nearest_block = xp.min(self.block(rows[start : start + step]), axis=0)
            if be.is_numpy(xp):
                np.minimum(closest, nearest_block, out=closest)
            else:
                closest = xp.minimum(closest, xp.astype(nearest_block, closest.dtype))
        return be.put(xp, closest, self.index(rows), 0.0)

    def at(self, values, rows) -> np.ndarray:
        """``values[rows]`` (a per-point array on the device) as NumPy."""
        return be.to_host(self.xp.take(values, self.index(rows), axis=0))


def _pool_size(trials: int, n_chosen: int, room: int, n_points: int) -> int:
    """Proposals per batch: about ``trials x n_chosen / 4`` (so most are accepted), capped by the
    block size, and by the ``room`` left with a quarter spare for rejections."""
    wanted = trials * min(max(1, n_chosen // 4), room + room // 4 + 1)
    cap = SEED_POOL_MAX if trials == 1 else SEED_BLOCK_ENTRIES // n_points
    return int(max(trials, min(wanted, cap)))


def _plain_batch(dist: PointDistances, proposals: np.ndarray, closest, u: np.ndarray, room: int):
    """Without local trials: the accepted proposals, each tested against the ones before it
    (on the host: a pool x pool block); then every point's distance lowered on the device."""
    start = dist.at(closest, proposals)
    near = be.to_host(dist.block(proposals, proposals))
    near[proposals[:, None] == proposals[None, :]] = 0.0  # a repeated proposal is the same point
    current = start.copy()
    taken = []
    for j in range(len(proposals)):
        if u[j] * start[j] < current[j]:
            taken.append(proposals[j])
            if len(taken) == room:
                break
            np.minimum(current, near[j], out=current)
    picked = np.asarray(taken, dtype=np.int64)
    return picked, dist.nearest_of(picked, closest)


def _greedy_batch(dist: PointDistances, proposals: np.ndarray, closest, w, u: np.ndarray, trials: int, room: int):
    """With local trials: each centre is the best of the next ``trials`` accepted proposals.

    ``closest`` and ``w`` (m,) live with the points; the acceptance tests read the proposals'
    current distances from one host copy per centre."""
    xp = dist.xp
    start = dist.at(closest, proposals)
    now = start
    block = dist.block(proposals)
    taken, j = [], 0
    while len(taken) < room:
        rows = []
        while len(rows) < trials and j < len(proposals):
            if u[j] * start[j] < now[j]:
                rows.append(j)
            j += 1
        if len(rows) < trials:  # pool used up: the next batch draws afresh
            break
        after = xp.minimum(xp.take(block, dist.index(rows), axis=0), closest[None, :])
        best = int(be.to_host(xp.argmin(after @ w)))
        closest = be.put(xp, after[best, ...], dist.index([proposals[rows[best]]]), 0.0)
        taken.append(proposals[rows[best]])
        now = dist.at(closest, proposals)
    return np.asarray(taken, dtype=np.int64), closest


def weighted_kmeans_pp(
    points,
    weights: np.ndarray,
    k: int,
    rng: np.random.Generator,
    trials: Optional[int] = None,
    pool: Optional[int] = None,
) -> np.ndarray:
    """Greedy weighted k-means++ (scikit-learn's local-trials variant), in GEMM-sized batches.

    Returns (host) indices of ``k`` chosen points; ``points`` (m, d), on any array library and
    device (the distances, potentials and cumulative sums are computed there; random numbers are
    drawn on the host), must have at least ``k`` rows. Each batch
    draws ``pool`` proposals from the potential (weight x squared distance to the nearest chosen
    point) and computes their distances with one GEMM; the centres are then picked one by one,
    a proposal being accepted with probability (its distance now / at the batch start). That is
    rejection sampling from the current potential, so every pool size samples the sequential
    algorithm's distribution, and ``pool=trials`` is the sequential algorithm draw for draw.
    ``trials`` defaults to ``2 + ln k``; with one trial only the accepted proposals get
    distances to every point. Work: O(k x points x d x trials); memory: one block of at most
    `SEED_BLOCK_ENTRIES` floats.
    """
    m = points.shape[0]
    w_host = np.asarray(weights, dtype=np.float64)
    trials = trials or 2 + int(np.log(k))
    dist = PointDistances(points)
    xp = dist.xp
    w = w_host if be.is_numpy(xp) else be.like(w_host, dist.sq)
    accept_rng = rng.spawn(1)[0]  # acceptance draws do not shift the proposals' stream
    first = rng.choice(m, p=w_host / w_host.sum()) if w_host.sum() > 0 else rng.integers(m)
    chosen = [np.array([first], dtype=np.int64)]
    closest = dist.nearest_of(chosen[0], xp.full((m,), np.inf, dtype=xp.float64, device=be.device(dist.sq)))
    n_chosen = 1
    while n_chosen < k:
        cumulative = np.cumsum(w * closest) if be.is_numpy(xp) else xp.cumulative_sum(w * closest)
        total = float(be.to_host(cumulative[-1:])[0])
        if total <= 0:  # every point coincides with a chosen one: take unused points in order
            unused = np.setdiff1d(np.arange(m), np.concatenate(chosen))
            chosen.append(unused[: k - n_chosen])
            break
        size = max(trials, pool or _pool_size(trials, n_chosen, k - n_chosen, m))
        draws = rng.random(size) * total
        found = np.searchsorted(cumulative, draws) if be.is_numpy(xp) else \
            be.to_host(xp.searchsorted(cumulative, be.like(draws, cumulative)))
        proposals = np.minimum(found, m - 1)
        u = accept_rng.random(size)
        if trials == 1:
            picked, closest = _plain_batch(dist, proposals, closest, u, k - n_chosen)
        else:
            picked, closest = _greedy_batch(dist, proposals, closest, w, u, trials, k - n_chosen)
        chosen.append(picked)
        n_chosen += len(picked)
    return np.concatenate(chosen)


def reduce_candidates(points, weights: np.ndarray, k: int, seed: list[int], n_rows: Optional[int] = None
                      ) -> np.ndarray:
    """k-means|| last step: weighted k-means++ picks ``k`` of the candidates (k, d) float32 NumPy.

    ``points`` (m, d) on any array library/device: the work runs there. ``n_rows`` (the data's
    rows) caps the local trials (`local_trials`). No weighted Lloyd refinement on the candidates
    (Spark runs one): measured on 384-d embeddings it pulled centroids towards the mean and Lloyd
    on the data then stopped in a worse optimum (docs/benchmarks.md).
    """
    rng = np.random.default_rng(seed)
    chosen = weighted_kmeans_pp(points, weights, k, rng, trials=local_trials(k, points.shape[0], n_rows))
    xp = be.namespace(points)
    picked = points[chosen] if be.is_numpy(xp) else xp.take(points, be.like(chosen, points), axis=0)
    return np.ascontiguousarray(be.to_host(picked), dtype=np.float32)
