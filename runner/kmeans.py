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
    xa: np.ndarray, x_sq: np.ndarray, ca: np.ndarray, batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (int32) and squared distances (float32, >= 0) to the nearest centroid.

    ``xa``: augmented rows, ``x_sq``: their squared norms, ``ca``: augmented centroids.
    Ties go to the lowest centroid index (as NumPy's argmin and scikit-learn do).
    """
    n = xa.shape[0]
    k = ca.shape[0]
    labels = np.empty(n, dtype=np.int32)
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


def cluster_sums(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster row sums (float64, k x d) and counts (int64), via sparse one-hot GEMMs.

    Each block of `SUM_BLOCK` rows is summed in float32 (cache-friendly) and the
    block sums are accumulated in float64, so the rounding error does not grow
    with the cluster size. ``x`` should be C-contiguous (scipy copies strided
    views): pass the augmented rows and drop the last column of the sums.
    """
    n = x.shape[0]
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    ones = np.ones(min(n, SUM_BLOCK), dtype=x.dtype)
    for start in range(0, n, SUM_BLOCK):
        stop = min(start + SUM_BLOCK, n)
        rows = np.arange(stop - start)
        one_hot = sp.csr_matrix((ones[: stop - start], (labels[start:stop], rows)), shape=(k, stop - start))
        sums += one_hot @ x[start:stop]
    counts = np.bincount(labels, minlength=k).astype(np.int64)
    return sums, counts


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
