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

from typing import Optional

import numpy as np

from . import backend as be


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


def nearest(xa, x_sq, ca, batch: int, sums: Optional["BlockSums"] = None):
    """Labels (int32) and squared distances (float32, >= 0) to the nearest centroid.

    ``xa``: augmented rows (n, d + 1), ``x_sq``: their squared norms (n,), ``ca``: augmented
    centroids (k, d + 1), all of one library and device. Ties go to the lowest centroid index
    (as NumPy's argmin and scikit-learn do). With ``sums`` (built on the same labels array,
    see `BlockSums.for_rows`), each block's rows are added to the cluster sums right after
    they are labelled.
    """
    xp = be.namespace(xa)
    n = xa.shape[0]
    k = ca.shape[0]
    dev = be.device(xa)
    labels = sums.labels if sums is not None else xp.empty(n, dtype=xp.int32, device=dev)
    dist_sq = xp.empty(n, dtype=xp.float32, device=dev)
    block = be.scratch(xp, xa, (min(batch, n), k))
    ca_t = ca.T
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        scores = be.matmul(xp, xa[start:stop, :], ca_t, out=block[: stop - start, :])
        lab = xp.argmin(scores, axis=1)
        labels[start:stop] = xp.astype(lab, xp.int32)
        dist_sq[start:stop] = xp.take_along_axis(scores, lab[:, None], axis=1)[:, 0] + x_sq[start:stop]
        if sums is not None:
            sums.advance(stop)
    return labels, be.maximum_(xp, dist_sq, 0.0)


def nearest_two(xa, ca_t, scores):
    """One block: labels (int32), smallest and second smallest score ``||c||^2 - 2x.c``.

    ``scores`` is a ``len(xa) x k`` float32 work buffer (overwritten). The second score is
    ``inf`` when there is one centroid. Ties go to the lowest index, as in `nearest`.
    """
    xp = be.namespace(xa)
    scores = be.matmul(xp, xa, ca_t, out=scores)
    labels = xp.argmin(scores, axis=1)
    first = xp.take_along_axis(scores, labels[:, None], axis=1)[:, 0]
    second = xp.min(be.mask_labels(xp, scores, labels), axis=1)
    return xp.astype(labels, xp.int32), first, second


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

#: Float32 entries of one distance block of the candidate reduction (128 MB); a block has at most
#: this many entries (and at least one row), never candidates x candidates.
SEED_BLOCK_ENTRIES = 1 << 25
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
    """Squared distances between rows of one point set: one float32 GEMM per block."""

    def __init__(self, points: np.ndarray):
        self.points = np.ascontiguousarray(points, dtype=np.float32)
        self.augmented = augment_rows(self.points)
        self.sq = row_sq_norms(self.points)

    def block(self, rows: np.ndarray, cols: Optional[np.ndarray] = None) -> np.ndarray:
        """(len(rows), len(cols) or all points) float32, >= 0."""
        targets = self.augmented if cols is None else self.augmented[cols]
        out = augment_centroids(self.points[rows]) @ targets.T
        out += self.sq if cols is None else self.sq[cols]
        return np.maximum(out, 0.0, out=out)

    def nearest_of(self, rows: np.ndarray, closest: np.ndarray) -> np.ndarray:
        """``closest`` lowered to each point's distance to ``rows``, in blocks of `SEED_BLOCK_ENTRIES`."""
        step = max(1, SEED_BLOCK_ENTRIES // len(self.sq))
        for start in range(0, len(rows), step):
            np.minimum(closest, self.block(rows[start : start + step]).min(axis=0), out=closest)
        closest[rows] = 0.0
        return closest


def _pool_size(trials: int, n_chosen: int, room: int, n_points: int) -> int:
    """Proposals per batch: about ``trials x n_chosen / 4`` (so most are accepted), capped by the
    block size, and by the ``room`` left with a quarter spare for rejections."""
    wanted = trials * min(max(1, n_chosen // 4), room + room // 4 + 1)
    cap = SEED_POOL_MAX if trials == 1 else SEED_BLOCK_ENTRIES // n_points
    return int(max(trials, min(wanted, cap)))


def _plain_batch(dist: PointDistances, proposals: np.ndarray, closest: np.ndarray, u: np.ndarray, room: int):
    """Without local trials: the accepted proposals, each tested against the ones before it."""
    start = closest[proposals]
    near = dist.block(proposals, proposals)
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


def _greedy_batch(dist, proposals, closest, w, u, trials: int, room: int):
    """With local trials: each centre is the best of the next ``trials`` accepted proposals."""
    start = closest[proposals]
    block = dist.block(proposals)
    taken, j = [], 0
    while len(taken) < room:
        rows = []
        while len(rows) < trials and j < len(proposals):
            if u[j] * start[j] < closest[proposals[j]]:
                rows.append(j)
            j += 1
        if len(rows) < trials:  # pool used up: the next batch draws afresh
            break
        after = np.minimum(block[rows], closest[None, :])
        best = int(np.argmin(after @ w))
        closest = after[best]
        closest[proposals[rows[best]]] = 0.0
        taken.append(proposals[rows[best]])
    return np.asarray(taken, dtype=np.int64), closest


def weighted_kmeans_pp(
    points: np.ndarray,
    weights: np.ndarray,
    k: int,
    rng: np.random.Generator,
    trials: Optional[int] = None,
    pool: Optional[int] = None,
) -> np.ndarray:
    """Greedy weighted k-means++ (scikit-learn's local-trials variant), in GEMM-sized batches.

    Returns indices of ``k`` chosen points; ``points`` must have at least ``k`` rows. Each batch
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
    w = np.asarray(weights, dtype=np.float64)
    trials = trials or 2 + int(np.log(k))
    dist = PointDistances(points)
    accept_rng = rng.spawn(1)[0]  # acceptance draws do not shift the proposals' stream
    first = rng.choice(m, p=w / w.sum()) if w.sum() > 0 else rng.integers(m)
    chosen = [np.array([first], dtype=np.int64)]
    closest = dist.nearest_of(chosen[0], np.full(m, np.inf))
    n_chosen = 1
    while n_chosen < k:
        cumulative = np.cumsum(w * closest)
        total = cumulative[-1]
        if total <= 0:  # every point coincides with a chosen one: take unused points in order
            unused = np.setdiff1d(np.arange(m), np.concatenate(chosen))
            chosen.append(unused[: k - n_chosen])
            break
        size = max(trials, pool or _pool_size(trials, n_chosen, k - n_chosen, m))
        proposals = np.minimum(np.searchsorted(cumulative, rng.random(size) * total), m - 1)
        u = accept_rng.random(size)
        if trials == 1:
            picked, closest = _plain_batch(dist, proposals, closest, u, k - n_chosen)
        else:
            picked, closest = _greedy_batch(dist, proposals, closest, w, u, trials, k - n_chosen)
        chosen.append(picked)
        n_chosen += len(picked)
    return np.concatenate(chosen)


def reduce_candidates(
    points: np.ndarray, weights: np.ndarray, k: int, seed: list[int], n_rows: Optional[int] = None
) -> np.ndarray:
    """k-means|| last step: weighted k-means++ picks ``k`` of the candidates.

    ``n_rows`` (the data's rows) caps the local trials (`local_trials`). No weighted Lloyd
    refinement on the candidates (Spark runs one): measured on 384-d embeddings it pulled
    centroids towards the mean and Lloyd on the data then stopped in a worse optimum
    (docs/benchmarks.md).
    """
    rng = np.random.default_rng(seed)
    chosen = weighted_kmeans_pp(points, weights, k, rng, trials=local_trials(k, len(points), n_rows))
    return np.ascontiguousarray(points[chosen], dtype=np.float32)
