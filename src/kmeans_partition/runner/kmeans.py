"""K-means numerics on one block of rows (NumPy, float32 data).

Everything here is a pure function of arrays, so the Dask layer (`fit.py`)
only moves arrays and reduces partial results in a fixed order.

Distances use one GEMM per block of ``batch`` rows. Rows are stored with an
extra constant column of ones (``augment_rows``) and centroids as
``[-2c, ||c||^2]`` (``augment_centroids``), so ``xa @ ca.T`` is
``||x - c||^2 - ||x||^2`` without another pass over the ``batch x k`` block.
"""

from __future__ import annotations

import threading
from typing import Optional

import numpy as np
import scipy.sparse as sp



def augment_rows(x: np.ndarray) -> np.ndarray:
    """(n, d) -> (n, d + 1) float32 with a trailing column of ones."""
    out = np.empty((x.shape[0], x.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = x
    out[:, -1] = 1.0
    return out


def augment_centroids(centroids: np.ndarray) -> np.ndarray:
    """(k, d) -> (k, d + 1) float32 ``[-2c, ||c||^2]`` (norms computed in float64)."""
    c64 = np.asarray(centroids, dtype=np.float64)
    out = np.empty((c64.shape[0], c64.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = -2.0 * c64
    out[:, -1] = np.einsum("ij,ij->i", c64, c64)
    return out


def row_sq_norms(x: np.ndarray) -> np.ndarray:
    """Squared L2 norm of each row, float32."""
    x = np.asarray(x, dtype=np.float32)
    return np.einsum("ij,ij->i", x, x, dtype=np.float32)


_SCRATCH = threading.local()


def scratch(size: int, name: str = "block") -> np.ndarray:
    """A float32 buffer of at least `size` values, reused by this thread across calls.

    Each Lloyd step needs a ``batch x k`` block (131 MB at the defaults); allocating it
    afresh every step costs page faults on every touch.
    """
    buffer = getattr(_SCRATCH, name, None)
    if buffer is None or buffer.size < size:
        buffer = np.empty(size, dtype=np.float32)
        setattr(_SCRATCH, name, buffer)
    return buffer[:size]


def nearest(
    xa: np.ndarray, x_sq: np.ndarray, ca: np.ndarray, batch: int, sums: Optional["BlockSums"] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (int32) and squared distances (float32, >= 0) to the nearest centroid.

    ``xa``: augmented rows, ``x_sq``: their squared norms, ``ca``: augmented centroids.
    Ties go to the lowest centroid index (as NumPy's argmin and scikit-learn do). With
    ``sums`` (built on the same labels array, see `BlockSums.for_rows`), each block's rows
    are added to the cluster sums right after they are labelled.
    """
    n = xa.shape[0]
    k = ca.shape[0]
    labels = sums.labels if sums is not None else np.empty(n, dtype=np.int32)
    dist_sq = np.empty(n, dtype=np.float32)
    block = scratch(min(batch, n) * k).reshape(min(batch, n), k)
    ca_t = ca.T
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        scores = block[: stop - start]
        np.matmul(xa[start:stop], ca_t, out=scores)
        lab = scores.argmin(axis=1)
        labels[start:stop] = lab
        dist_sq[start:stop] = np.take_along_axis(scores, lab[:, None], axis=1)[:, 0] + x_sq[start:stop]
        if sums is not None:
            sums.advance(stop)
    np.maximum(dist_sq, 0.0, out=dist_sq)
    return labels, dist_sq


def nearest_two(xa: np.ndarray, ca_t: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One block: labels (int32), smallest and second smallest score ``||c||^2 - 2x.c``.

    ``scores`` is a ``len(xa) x k`` float32 work buffer (overwritten). The second score is
    ``inf`` when there is one centroid. Ties go to the lowest index, as in `nearest`.
    """
    np.matmul(xa, ca_t, out=scores)
    labels = scores.argmin(axis=1)
    rows = np.arange(len(labels))
    first = scores[rows, labels]
    scores[rows, labels] = np.inf
    second = scores.min(axis=1)
    return labels.astype(np.int32), first, second


#: Rows per one-hot product in `cluster_sums`: float32 products, accumulated in float64.
SUM_BLOCK = 4096


class BlockSums:
    """Per-cluster row sums (float64) built block by block as the labels become final.

    Each block of `SUM_BLOCK` rows is summed in float32 with a sparse one-hot product and
    the block sums are accumulated in float64, in row order, so the rounding error does not
    grow with the cluster size and the result does not depend on when `advance` is called
    (adding a block right after its rows were labelled reads them while still in cache).
    ``xa`` should be C-contiguous (scipy copies strided views).
    """

    def __init__(self, xa: np.ndarray, labels: np.ndarray, k: int):
        self.xa, self.labels, self.k = xa, labels, k
        self.sums = np.zeros((k, xa.shape[1]), dtype=np.float64)
        self.done = 0
        self.ones = np.ones(min(xa.shape[0], SUM_BLOCK), dtype=xa.dtype)

    @classmethod
    def for_rows(cls, xa: np.ndarray, k: int) -> "BlockSums":
        """Sums over a fresh labels array (``.labels``) that the caller fills in row order."""
        return cls(xa, np.empty(xa.shape[0], dtype=np.int32), k)

    def advance(self, stop: int) -> None:
        """Add every block whose rows all lie below ``stop`` (all rows once ``stop`` >= n)."""
        n = self.xa.shape[0]
        while self.done < n and (self.done + SUM_BLOCK <= stop or stop >= n):
            end = min(self.done + SUM_BLOCK, n)
            rows = np.arange(end - self.done)
            one_hot = sp.csr_matrix(
                (self.ones[: end - self.done], (self.labels[self.done : end], rows)), shape=(self.k, end - self.done)
            )
            self.sums += one_hot @ self.xa[self.done : end]
            self.done = end

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(sums (k, columns) float64, counts (k,) int64) over all rows."""
        self.advance(self.xa.shape[0])
        return self.sums, np.bincount(self.labels, minlength=self.k).astype(np.int64)


def cluster_sums(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
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


#: Candidate sets up to this size use a precomputed Gram matrix in k-means++ (m x m float32).
GRAM_MAX_POINTS = 8192


def weighted_kmeans_pp(
    points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """Greedy weighted k-means++ (scikit-learn's local-trials variant) on a small set.

    Returns indices of ``k`` chosen points; ``points`` must have at least ``k`` rows.
    """
    m = points.shape[0]
    p32 = np.ascontiguousarray(points, dtype=np.float32)
    sq = np.einsum("ij,ij->i", p32, p32, dtype=np.float64)
    gram = p32 @ p32.T if m <= GRAM_MAX_POINTS else None

    def dist_to(rows: np.ndarray) -> np.ndarray:
        dots = gram[rows] if gram is not None else p32[rows] @ p32.T
        return np.maximum(sq[rows][:, None] - 2.0 * dots + sq[None, :], 0.0)

    w = weights.astype(np.float64)
    trials = 2 + int(np.log(k))
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.choice(m, p=w / w.sum()) if w.sum() > 0 else rng.integers(m)
    closest = dist_to(chosen[:1])[0]
    for c in range(1, k):
        pot = w * closest
        total = pot.sum()
        if total <= 0:  # every point coincides with a chosen one: take unused points in order
            unused = np.setdiff1d(np.arange(m), chosen[:c])
            chosen[c:] = unused[: k - c]
            break
        cand = np.minimum(np.searchsorted(np.cumsum(pot), rng.random(trials) * total), m - 1)
        dist = np.minimum(dist_to(cand), closest[None, :])
        best = int(np.argmin(dist @ w))
        chosen[c] = cand[best]
        closest = dist[best]
    return chosen


def reduce_candidates(points: np.ndarray, weights: np.ndarray, k: int, seed: list[int]) -> np.ndarray:
    """k-means|| last step: weighted k-means++ picks ``k`` of the candidates.

    No weighted Lloyd refinement on the candidates (Spark runs one): measured on 384-d
    embeddings it pulled centroids towards the mean and Lloyd on the data then stopped in a
    worse optimum (docs/benchmarks.md).
    """
    rng = np.random.default_rng(seed)
    chosen = weighted_kmeans_pp(points, weights, k, rng)
    return np.ascontiguousarray(points[chosen], dtype=np.float32)
