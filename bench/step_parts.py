"""Where one plain Lloyd step's time goes, beside scikit-learn's Lloyd iteration on the same rows.

    python bench/step_parts.py [n d k]     # default 500k x 128, k=100

Both single-threaded on the same normalised blob rows and the same centroids (rows picked at
random): ours is `lloyd_partial` without bounds (the GEMM in blocks, argmin, the near-tie check,
the one-hot sums), scikit-learn's is its private chunked Lloyd kernel (GEMM in 256-row chunks,
argmin and sums fused in one compiled loop). Prints the min and median of each over 5 steps and
our step's functions by own time (cProfile), so the part above the GEMM shows.
"""
import cProfile
import pstats
import sys
import time

import numpy as np
from sklearn.cluster._k_means_lloyd import lloyd_iter_chunked_dense  # loads scipy's BLAS before the limit
from threadpoolctl import threadpool_limits

from kmeans_partition.runner import kmeans as km
from kmeans_partition.runner.lloyd import lloyd_partial

STEPS = 5


def blob_rows(n: int, d: int, rng) -> np.ndarray:
    centres = rng.standard_normal((200, d)).astype(np.float32)
    x = centres[rng.integers(0, 200, n)] + rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def sklearn_steps(x: np.ndarray, c: np.ndarray) -> tuple[list[float], np.ndarray]:
    n, k = x.shape[0], c.shape[0]
    weights, new, in_cluster = np.ones(n, np.float32), np.empty_like(c), np.zeros(k, np.float32)
    labels, shift, times = np.empty(n, np.int32), np.empty(k, np.float32), []
    for _ in range(STEPS):
        start = time.perf_counter()
        lloyd_iter_chunked_dense(x, weights, c, new, in_cluster, labels, shift, 1, True)
        times.append(time.perf_counter() - start)
    return times, labels


def measure(n: int, d: int, k: int) -> dict:
    """Both kernels' step times (s), their labels' agreement and our last step's profile."""
    rng = np.random.default_rng(0)
    x = blob_rows(n, d, rng)
    c = x[rng.choice(n, k, replace=False)].copy()
    xa, x_sq = km.augment_rows(x), km.row_sq_norms(x)
    with threadpool_limits(1):
        ours, profile = [], cProfile.Profile()
        for step in range(STEPS):
            start = time.perf_counter()
            if step == STEPS - 1:
                profile.enable()
            _, state = lloyd_partial(xa, x_sq, c, 32768)
            profile.disable()
            ours.append(time.perf_counter() - start)
        theirs, labels = sklearn_steps(x, c)
    return {"ours": ours, "sklearn": theirs, "same labels": float(np.mean(state.labels == labels)),
            "profile": profile}


def main(argv: list[str]) -> dict:
    n, d, k = (int(v) for v in argv[:3]) if len(argv) > 2 else (500_000, 128, 100)
    result = measure(n, d, k)
    print(f"{n} x {d}, k={k}, one thread; same labels for {100 * result['same labels']:.3f}% of rows")
    for name in ("ours", "sklearn"):
        print(f"{name:8s} min {min(result[name]):.3f} s  median {np.median(result[name]):.3f} s")
    print(f"scikit-learn's time / ours (median): {np.median(result['sklearn']) / np.median(result['ours']):.2f}x")
    pstats.Stats(result["profile"]).sort_stats("tottime").print_stats(10)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
