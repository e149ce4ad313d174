"""Data, the GEMM floor and one runner per method for `bench_kmeans.py`.

Every runner takes the same float32 data and the same initial centroids and
returns a `Measurement`; inertias are recomputed here with one shared
function (`inertia`) so methods are compared on the same arithmetic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

import numpy as np
from threadpoolctl import threadpool_limits

#: Rows per block for the GEMM floor and for `inertia` (the engine's default batch).
BLOCK_ROWS = 32768


@dataclass
class Measurement:
    """One method at one k; None means "not measured"."""

    method: str
    k: int
    n_iter: Optional[int] = None
    seconds_per_iter: Optional[float] = None
    inertia_at_iters: Optional[float] = None  # after the fixed-init Lloyd run
    init_name: Optional[str] = None
    init_seconds: Optional[float] = None
    converged_inertia: Optional[float] = None  # init + Lloyd to convergence
    converged_iters: Optional[int] = None
    note: str = ""
    rows_computed: Optional[float] = None  # fraction of rows given the full distance computation
    cpu_per_iter: Optional[float] = None  # the busiest worker's CPU seconds per iteration (engine only)
    init_cpu: Optional[float] = None  # the busiest worker's CPU seconds in the init (engine only)


# ---------------------------------------------------------------- data


def make_data(n: int, d: int, n_true: int, spread: float, seed: int) -> np.ndarray:
    """Unit-norm float32 rows around ``n_true`` Gaussian centres (overlapping when spread is large)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_true, d), dtype=np.float32)
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, n)
        block = centres[rng.integers(n_true, size=stop - start)]
        block += spread * rng.standard_normal((stop - start, d), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[start:stop] = block
    return x


def initial_centroids(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` distinct rows, shared by every method as its starting point."""
    rng = np.random.default_rng([seed, k])
    return np.ascontiguousarray(x[np.sort(rng.choice(len(x), size=k, replace=False))])


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    """Sum of squared distances to the nearest centroid (float32 GEMM, float64 sums)."""
    c = np.asarray(centroids, dtype=np.float32)
    c_sq = np.einsum("ij,ij->i", c.astype(np.float64), c.astype(np.float64))
    total = 0.0
    rows = max(1, min(BLOCK_ROWS, (1 << 25) // len(c)))  # float64 scores of at most 256 MB
    for start in range(0, len(x), rows):
        block = x[start : start + rows]
        scores = c_sq[None, :] - 2.0 * (block @ c.T)
        x_sq = np.einsum("ij,ij->i", block, block, dtype=np.float64)
        total += float(np.maximum(scores.min(axis=1) + x_sq, 0.0).sum())
    return total


def feature_tolerance(x: np.ndarray, tol: float) -> float:
    """scikit-learn's absolute tolerance (tol x mean feature variance)."""
    return float(np.var(x, axis=0, dtype=np.float64).mean() * tol)


# ---------------------------------------------------------------- floor


@dataclass
class GemmFloor:
    gflops: float
    seconds_per_iter: float


def gemm_floor(x: np.ndarray, centroids: np.ndarray, threads: int, repeats: int = 2) -> GemmFloor:
    """Best time of ``X_block @ C.T`` over all rows, all cores: the float32 GEMM floor."""
    n, d = x.shape
    k = centroids.shape[0]
    c_t = np.ascontiguousarray(centroids, dtype=np.float32).T
    out = np.empty((min(BLOCK_ROWS, n), k), dtype=np.float32)
    best = float("inf")
    with threadpool_limits(limits=threads):
        np.matmul(x[: min(BLOCK_ROWS, n)], c_t, out=out[: min(BLOCK_ROWS, n)])  # warm-up
        for _ in range(repeats):
            started = time.perf_counter()
            for start in range(0, n, BLOCK_ROWS):
                stop = min(start + BLOCK_ROWS, n)
                np.matmul(x[start:stop], c_t, out=out[: stop - start])
            best = min(best, time.perf_counter() - started)
    flops = 2.0 * n * k * d
    return GemmFloor(gflops=flops / best / 1e9, seconds_per_iter=best)


# ---------------------------------------------------------------- our engine


class OursOnCluster:
    """The engine's `DaskKMeans` on a LocalCluster (one single-threaded worker per core)."""

    def __init__(self, x: np.ndarray, workers: int, partition_rows: int, batch: int, seed: int):
        from kmeans_partition.runner.cluster import dask_client

        self._context = dask_client(None, n_workers=workers)
        self.client = self._context.__enter__()
        self.x = x
        self.batch = batch
        self.seed = seed
        started = time.perf_counter()
        self.parts, self.rows = _scatter_partitions(self.client, x, partition_rows, workers)
        self.scatter_seconds = time.perf_counter() - started

    def close(self) -> None:
        self.parts = []
        self._context.__exit__(None, None, None)

    def _model(self, k: int, bounds: bool = True):
        from kmeans_partition.runner.fit import DaskKMeans

        return DaskKMeans(self.client, self.parts, self.rows, k, self.batch, self.seed, bounds=bounds)

    def _worker_cpu(self) -> dict:
        return self.client.run(time.process_time)

    def _busiest_cpu(self, before: dict) -> float:
        """CPU seconds of the busiest worker since ``before``: the phase's time on an idle machine
        (other processes on a shared machine stretch wall time, much less CPU time)."""
        after = self._worker_cpu()
        return max(after[w] - before.get(w, 0.0) for w in after)

    def measure_fixed(self, c0: np.ndarray, iters: int, bounds: bool) -> Measurement:
        """Only the fixed-init Lloyd run; ``bounds=False`` gives every row the full GEMM every step."""
        model = self._model(c0.shape[0], bounds)
        model.lloyd(c0, max_iter=1, tol_abs=0.0)  # warm-up: worker imports, first scatter
        cpu = self._worker_cpu()
        started = time.perf_counter()
        fixed = model.lloyd(c0, max_iter=iters, tol_abs=0.0)
        per_iter = (time.perf_counter() - started) / fixed.n_iter
        cpu_per_iter = self._busiest_cpu(cpu) / fixed.n_iter
        name = "ours" if bounds else "ours, no bounds"
        m = Measurement(name, c0.shape[0], fixed.n_iter, per_iter, inertia(self.x, fixed.centroids))
        m.rows_computed = fixed.rows_computed / (fixed.n_iter * len(self.x))
        m.cpu_per_iter = cpu_per_iter
        return m

    def measure(self, c0: np.ndarray, iters: int, converge_iters: int, tol: float) -> Measurement:
        k = c0.shape[0]
        model = self._model(k)
        m = self.measure_fixed(c0, iters, bounds=True)
        cpu = self._worker_cpu()
        started = time.perf_counter()
        seeded = model.init_kmeans_parallel(oversampling_factor=2.0)
        init_seconds = time.perf_counter() - started
        m.init_cpu = self._busiest_cpu(cpu)
        done = model.lloyd(seeded, max_iter=converge_iters, tol_abs=feature_tolerance(self.x, tol))
        m.init_name, m.init_seconds = "k-means||", init_seconds
        m.converged_inertia, m.converged_iters = inertia(self.x, done.centroids), done.n_iter
        info = model.init_details
        m.note = (f"k-means|| init: {info['sampling_s']:.1f} s sampling passes, {info['reduction_s']:.1f} s reducing "
                  f"{info['candidates']} candidates ({info['trials']} local trials); converged run: {done.n_iter} "
                  f"iterations, {done.rows_computed / (done.n_iter * len(self.x)):.0%} of rows computed per iteration")
        return m

    def measure_random(self, k: int, converge_iters: int, tol: float) -> Measurement:
        """`random` init (k distinct rows) + Lloyd to convergence: the baseline k-means|| must beat."""
        model = self._model(k)
        started = time.perf_counter()
        seeded = model.init_random()
        init_seconds = time.perf_counter() - started
        done = model.lloyd(seeded, max_iter=converge_iters, tol_abs=feature_tolerance(self.x, tol))
        m = Measurement("ours, random init", k, init_name="random", init_seconds=init_seconds)
        m.converged_inertia, m.converged_iters = inertia(self.x, done.centroids), done.n_iter
        m.note = f"converged run: {done.n_iter} iterations"
        return m


def _scatter_partitions(client, x: np.ndarray, partition_rows: int, workers: int):
    """About ``partition_rows`` rows per partition, a multiple of ``workers`` partitions; built on the
    workers in contiguous runs of partition indexes, as the job places them (`memory_mode.spread`:
    neighbours combine their partial sums where they are). Scattered without a placement, Dask
    alternated them, and every partial crossed between workers in each Lloyd step's reduction."""
    import pyarrow as pa
    from distributed import wait

    from kmeans_partition.runner.memory_mode import spread
    from kmeans_partition.runner.partition import Partition

    n_parts = min(len(x), workers * max(1, round(len(x) / partition_rows / workers)))
    chunks = np.array_split(np.arange(len(x)), n_parts)
    sizes = [SimpleNamespace(nbytes=len(ix) * x.shape[1] * x.itemsize) for ix in chunks]
    where = [options["workers"] for options in spread(sizes, client.scheduler_info()["workers"])]
    raw = [client.scatter(x[ix[0] : ix[-1] + 1], workers=w) for ix, w in zip(chunks, where)]
    parts = [
        client.submit(
            Partition.from_normalised, i, f"mem://part{i}", int(ix[0]),
            pa.array(ix.astype(np.int64)), r, pure=False, workers=w,
        )
        for i, (ix, r, w) in enumerate(zip(chunks, raw, where))
    ]
    wait(parts)
    del raw  # the partitions hold their own augmented copy
    return parts, [len(ix) for ix in chunks]


# ---------------------------------------------------------------- peers


def run_sklearn(x, c0, iters, threads, with_init, converge_iters, tol, seed) -> Measurement:
    from sklearn.cluster import KMeans, kmeans_plusplus

    k = c0.shape[0]
    with threadpool_limits(limits=threads):
        started = time.perf_counter()
        fixed = KMeans(k, init=c0, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd").fit(x)
        per_iter = (time.perf_counter() - started) / fixed.n_iter_
        m = Measurement("scikit-learn", k, int(fixed.n_iter_), per_iter, inertia(x, fixed.cluster_centers_))
        if with_init:
            started = time.perf_counter()
            seeded, _ = kmeans_plusplus(x, k, random_state=seed)
            m.init_name, m.init_seconds = "k-means++", time.perf_counter() - started
            done = KMeans(k, init=seeded, n_init=1, max_iter=converge_iters, tol=tol, algorithm="lloyd").fit(x)
            m.converged_inertia, m.converged_iters = inertia(x, done.cluster_centers_), int(done.n_iter_)
    return m


def run_sklearn_elkan(x, c0, iters, threads) -> Measurement:
    """scikit-learn's Elkan variant (triangle-inequality bounds), the bounds-based peer."""
    from sklearn.cluster import KMeans

    with threadpool_limits(limits=threads):
        started = time.perf_counter()
        fixed = KMeans(c0.shape[0], init=c0, n_init=1, max_iter=iters, tol=0.0, algorithm="elkan").fit(x)
        per_iter = (time.perf_counter() - started) / fixed.n_iter_
    return Measurement("scikit-learn elkan", c0.shape[0], int(fixed.n_iter_), per_iter,
                       inertia(x, fixed.cluster_centers_))


def run_faiss(x, c0, iters, threads, seed) -> Measurement:
    import faiss

    n, d = x.shape
    k = c0.shape[0]
    faiss.omp_set_num_threads(threads)
    km = faiss.Kmeans(d, k, niter=iters, seed=seed, max_points_per_centroid=n, verbose=False)
    started = time.perf_counter()
    km.train(x, init_centroids=c0)
    per_iter = (time.perf_counter() - started) / iters
    return Measurement("faiss", k, iters, per_iter, inertia(x, km.centroids))


def run_daskml(x, c0, iters, threads, partition_rows, with_init, seed) -> Measurement:
    """dask-ml on the threaded scheduler (its default without a Client), one BLAS thread per task."""
    import dask
    import dask.array as da
    from dask_ml.cluster import KMeans
    from dask_ml.cluster.k_means import k_init

    k = c0.shape[0]
    xd = da.from_array(x, chunks=(partition_rows, x.shape[1]))
    with dask.config.set(scheduler="threads", num_workers=threads), threadpool_limits(limits=1):
        started = time.perf_counter()
        fixed = KMeans(n_clusters=k, init=c0, max_iter=iters, tol=0.0, random_state=seed).fit(xd)
        per_iter = (time.perf_counter() - started) / fixed.n_iter_
        m = Measurement("dask-ml", k, int(fixed.n_iter_), per_iter, inertia(x, fixed.cluster_centers_))
        if with_init:
            started = time.perf_counter()
            seeded = k_init(xd, k, init="k-means||", random_state=seed)
            m.init_name, m.init_seconds = "k-means||", time.perf_counter() - started
            m.note = f"{len(np.unique(np.asarray(seeded), axis=0))} distinct init centres"
    return m
