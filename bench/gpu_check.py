"""Every GPU check in one run: GEMM floor, plain CuPy / PyTorch Lloyd, labels vs the NumPy engine,
TF32 label changes, and our engine on CuPy-resident partitions (a LocalCUDACluster when dask_cuda
imports, else an in-process LocalCluster with one worker on GPU 0).

    python bench/gpu_check.py --out gpu-check.md                  # 8M x 768, k=1000 and 10000
    python bench/gpu_check.py --out small.md --rows 500000        # a quicker look

Needs CuPy and a GPU; PyTorch (peer Lloyd, TF32 labels), dask_cuda and this package's pure-Python
dependencies (dask, distributed, array-api-compat, pyarrow: our engine) are optional: what cannot
run is named in the output, with the reason. About 5 minutes on one H200 at the defaults.
Synthetic data: unit-norm float32 rows around ``--true-clusters`` Gaussian centres, generated on
the GPU in chunks with per-chunk seeds (any process regenerates the same chunk). Every method
starts from the same initial centroids (``k`` distinct rows) and runs ``--iters`` Lloyd iterations.

Columns, per k (seconds per iteration; ratios to the float32 GEMM floor):
- floor: best of two passes of ``X_block @ C.T`` (float32, TF32 off) over all rows;
- cupy / torch: a plain blocked Lloyd (GEMM, argmin, scatter-add, divide), TF32 off;
- engine (bounds off / on): our engine's Lloyd (``DaskKMeans.lloyd``) on CuPy partitions, one
  Dask-CUDA worker per GPU; peak device memory: what CuPy's pool holds after the runs on the
  busiest worker (the pool keeps freed blocks, so it is the peak) over that worker's share of the
  float32 embeddings;
- labels: rows of a ``--sample`` subsample whose label from our engine's kernel on CuPy
  (``runner.kmeans.nearest`` on device arrays) differs from the NumPy engine's (the same kernel on
  NumPy, float32 on the CPU) for the same centroids, and how many of those are ties within the
  rounding bound the engine uses (``runner.bounds.score_error``, twice);
- tf32: rows of the subsample whose label changes when the distance GEMM uses TF32 (PyTorch).

``--cpu-smoke`` runs the same code with NumPy on tiny shapes, our engine on NumPy partitions in a
CPU LocalCluster (the CI smoke test); its numbers mean nothing. The engine part is in
``bench/gpu_engine.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
if SRC.is_dir() and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))  # our package from the source tree; it need not be installed
BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


def sync(xp) -> None:
    if xp.__name__ == "cupy":
        xp.cuda.Device().synchronize()


def timed(xp, fn: Callable[[], Any]) -> tuple[Any, float]:
    sync(xp)
    started = time.perf_counter()
    out = fn()
    sync(xp)
    return out, time.perf_counter() - started


def to_host(xp, array) -> np.ndarray:
    return xp.asnumpy(array) if xp.__name__ == "cupy" else np.asarray(array)


# ----------------------------------------------------------------- data


def centres(xp, d: int, true_k: int, seed: int):
    return xp.random.default_rng(seed).standard_normal((true_k, d), dtype=xp.float32)


def make_chunk(xp, index: int, rows: int, d: int, true_k: int, seed: int, spread: float):
    """Chunk ``index`` of the data: the same values in any process for the same arguments."""
    rng = xp.random.default_rng(seed * 1_000_003 + index + 1)
    labels = rng.integers(0, true_k, size=rows)
    x = centres(xp, d, true_k, seed)[labels] + xp.float32(spread) * rng.standard_normal((rows, d), dtype=xp.float32)
    x /= xp.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_data(xp, n: int, d: int, true_k: int, seed: int, spread: float, chunk: int):
    x = xp.empty((n, d), dtype=xp.float32)
    for i, start in enumerate(range(0, n, chunk)):
        stop = min(start + chunk, n)
        x[start:stop] = make_chunk(xp, i, stop - start, d, true_k, seed, spread)
    return x


def initial_centroids(x_rows: Callable, n: int, k: int, seed: int) -> np.ndarray:
    chosen = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
    return np.ascontiguousarray(x_rows(chosen), dtype=np.float32)


# ----------------------------------------------------------------- floor and peers


def gemm_floor(xp, x, c, block: int, passes: int = 2) -> float:
    """Best time of one pass of float32 ``x_block @ c.T`` over every row."""
    ct = xp.ascontiguousarray(c.T)
    buf = xp.empty((min(block, len(x)), len(c)), dtype=xp.float32)

    def one_pass():
        for start in range(0, len(x), block):
            part = x[start:start + block]
            xp.matmul(part, ct, out=buf[: len(part)])

    return min(timed(xp, one_pass)[1] for _ in range(passes))


def block_sums(xp, labels, part, k: int):
    """Per-cluster row sums of one block: the transposed sparse one-hot (rows x k, CSR) times the block."""
    try:
        sparse = __import__("cupyx.scipy.sparse" if xp.__name__ == "cupy" else "scipy.sparse", fromlist=["x"])
    except ImportError:  # no sparse module: atomic scatter-add / np.add.at
        sums = xp.zeros((k, part.shape[1]), dtype=part.dtype)
        (__import__("cupyx").scatter_add if xp.__name__ == "cupy" else np.add.at)(sums, labels, part)
        return sums
    n = len(labels)
    csr = (xp.ones(n, dtype=part.dtype), labels.astype(xp.int32), xp.arange(n + 1, dtype=xp.int32))
    onehot = sparse.csr_matrix(csr, shape=(n, k))
    return xp.asarray(onehot.T @ part)


def lloyd_step(xp, x, c, block: int, buf):
    """One plain Lloyd iteration: (new centroids, labels, inertia less the constant sum of ||x||^2)."""
    k = len(c)
    neg2ct = xp.ascontiguousarray(-2.0 * c.T)
    c_sq = (c * c).sum(axis=1)
    labels = xp.empty(len(x), dtype=xp.int32)
    sums = xp.zeros_like(c)
    inertia = 0.0
    for start in range(0, len(x), block):
        part = x[start:start + block]
        scores = buf[: len(part)]
        xp.matmul(part, neg2ct, out=scores)
        scores += c_sq
        lab = scores.argmin(axis=1)
        labels[start:start + len(part)] = lab
        inertia = inertia + xp.take_along_axis(scores, lab[:, None], axis=1).sum()
        sums += block_sums(xp, lab, part, k)
    counts = xp.bincount(labels, minlength=k).astype(xp.float32)
    new = xp.where(counts[:, None] > 0, sums / xp.maximum(counts, 1)[:, None], c)
    return new, labels, float(inertia)


def xp_lloyd(xp, x, c0: np.ndarray, iters: int, block: int) -> tuple[np.ndarray, float]:
    """(final centroids on the host, seconds per iteration) of the plain Lloyd on ``xp``."""
    c = xp.asarray(c0)
    buf = xp.empty((min(block, len(x)), len(c)), dtype=xp.float32)
    seconds = []
    for _ in range(iters):
        (c, _, _), spent = timed(xp, lambda: lloyd_step(xp, x, c, block, buf))
        seconds.append(spent)
    return to_host(xp, c), float(np.median(seconds))


def torch_lloyd(torch, x_cupy, c0: np.ndarray, iters: int, block: int) -> float:
    """Seconds per iteration of the same Lloyd in PyTorch on the same device array (TF32 off)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.from_dlpack(x_cupy)
    c = torch.as_tensor(c0, device=x.device)
    seconds = []
    for _ in range(iters):
        torch.cuda.synchronize()
        started = time.perf_counter()
        sums, counts = torch.zeros_like(c), torch.zeros(len(c), device=x.device)
        neg2ct, c_sq = (-2.0 * c).T.contiguous(), (c * c).sum(1)
        for start in range(0, len(x), block):
            part = x[start:start + block]
            lab = torch.addmm(c_sq, part, neg2ct).argmin(1)
            sums.index_add_(0, lab, part)
            counts += torch.bincount(lab, minlength=len(c))
        c = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], c)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return float(np.median(seconds))


# ----------------------------------------------------------------- labels


def tie_bound(x_sq: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The engine's float32 error bound of a squared distance (``runner.bounds.score_error``)."""
    d = c.shape[1]
    c_max = float(np.sqrt(np.einsum("ij,ij->i", c, c, dtype=np.float64).max()))
    return 2.0 * (d + 2) * 2.0**-24 * (np.sqrt(x_sq.astype(np.float64)) + c_max) ** 2


def engine_labels(xp, x, c: np.ndarray, block: int):
    """Labels from our engine's kernel on ``xp`` arrays (CuPy on the GPU); None without the package."""
    try:
        from kmeans_partition.runner import kmeans as km
    except Exception:
        return None
    xa = km.augment_rows(x)
    labels, _ = km.nearest(xa, km.row_sq_norms(x), km.augment_centroids(c, ref=xa), block)
    return to_host(xp, labels)


def numpy_engine_labels(x: np.ndarray, c: np.ndarray, block: int) -> tuple[np.ndarray, str]:
    """Labels from our NumPy engine's ``nearest`` (float32), or a float32 NumPy argmin without the package."""
    try:
        from kmeans_partition.runner import kmeans as km
    except Exception as err:  # the package's dependencies may be missing on a bare GPU machine
        scores = x @ (-2.0 * c.T) + (c * c).sum(axis=1)
        return scores.argmin(axis=1).astype(np.int32), f"plain NumPy float32 ({type(err).__name__}: {err})"
    labels, _ = km.nearest(km.augment_rows(x), km.row_sq_norms(x), km.augment_centroids(c), block)
    return labels, "runner.kmeans.nearest"


def label_differences(x: np.ndarray, c: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(rows where labels a and b differ, how many of those are ties within twice the engine's bound)."""
    rows = np.flatnonzero(a != b)
    if len(rows) == 0:
        return 0, 0
    x64, c64 = x[rows].astype(np.float64), c.astype(np.float64)
    da = ((x64 - c64[a[rows]]) ** 2).sum(axis=1)
    db = ((x64 - c64[b[rows]]) ** 2).sum(axis=1)
    bound = 2 * tie_bound((x[rows] * x[rows]).sum(axis=1), c)
    return len(rows), int((np.abs(da - db) <= bound).sum())


def tf32_label_changes(torch, x_sample: np.ndarray, c: np.ndarray) -> tuple[int, int]:
    """(rows whose label changes when PyTorch's GEMM may use TF32, of which ties within the fp32 bound)."""
    x, ct = torch.as_tensor(x_sample, device="cuda"), torch.as_tensor(-2.0 * c.T, device="cuda")
    c_sq = torch.as_tensor((c * c).sum(1), device="cuda")
    labels = {}
    for allow in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = allow
        labels[allow] = torch.addmm(c_sq, x, ct).argmin(1).cpu().numpy().astype(np.int32)
    torch.backends.cuda.matmul.allow_tf32 = False
    return label_differences(x_sample, c, labels[False], labels[True])


# ----------------------------------------------------------------- the run


def run_checks(args, xp, torch=None) -> dict[str, Any]:
    results: dict[str, Any] = {"ks": {}}
    x, spent = timed(xp, lambda: make_data(xp, args.rows, args.dim, args.true_clusters, args.seed, args.spread,
                                           args.chunk))
    results["data_seconds"] = spent
    sample_rows = np.sort(np.random.default_rng(args.seed + 1).choice(args.rows, min(args.sample, args.rows),
                                                                     replace=False))
    x_sample = to_host(xp, x[xp.asarray(sample_rows)])
    for k in args.ks:
        row: dict[str, Any] = {}
        c0 = initial_centroids(lambda rows: to_host(xp, x[xp.asarray(rows)]), args.rows, k, args.seed)
        row["floor"] = gemm_floor(xp, x, xp.asarray(c0), args.block)
        c_final, row["cupy"] = xp_lloyd(xp, x, c0, args.iters, args.block)
        if torch is not None:
            row["torch"] = torch_lloyd(torch, x, c0, args.iters, args.block)
            row["tf32"] = tf32_label_changes(torch, x_sample, c_final)
        gpu_labels = engine_labels(xp, xp.asarray(x_sample), c_final, args.block)
        if gpu_labels is None:  # without the package: the plain Lloyd's labels on the device
            gpu_labels = to_host(xp, lloyd_step(xp, xp.asarray(x_sample), xp.asarray(c_final), args.block,
                                                xp.empty((min(args.block, len(x_sample)), k), xp.float32))[1])
        cpu_labels, row["reference"] = numpy_engine_labels(x_sample, c_final, args.block)
        row["labels"] = label_differences(x_sample, c_final, gpu_labels, cpu_labels)
        if args.engine:
            import gpu_engine

            row["engine"] = gpu_engine.our_engine(args, k, c0, "numpy" if args.cpu_smoke else "cupy")
            if "centroids" in row["engine"]:  # the same Lloyd from the same start: the same centroids
                row["engine"]["centroid_gap"] = float(np.abs(row["engine"].pop("centroids") - c_final).max())
        else:
            row["engine"] = {"note": "not run (--no-engine)"}
        row["reduction"] = reduction_check(xp, x_sample, k, args.seed)
        results["ks"][k] = row
    return results


def reduction_check(xp, x_sample: np.ndarray, k: int, seed: int) -> Optional[tuple[float, float, int]]:
    """The k-means|| reduction (weighted k-means++ over ~5k candidates) on the device and in
    NumPy: (device s, NumPy s, centres the two share). None without the package."""
    try:
        from kmeans_partition.runner import kmeans as km
    except ImportError:
        return None
    cands = x_sample[: min(len(x_sample), 5 * k)]
    if len(cands) < k:
        return None
    weights = np.random.default_rng(seed).integers(1, 50, size=len(cands)).astype(np.float64)
    on_device, device_s = timed(xp, lambda: km.reduce_candidates(xp.asarray(cands), weights, k, [seed, 1], 10**8))
    started = time.perf_counter()
    on_host = km.reduce_candidates(cands, weights, k, [seed, 1], 10**8)
    host_s = time.perf_counter() - started
    shared = len({r.tobytes() for r in on_device} & {r.tobytes() for r in on_host})
    return device_s, host_s, shared


def _ratio(value: Optional[float], floor: float) -> str:
    return "-" if value is None else f"{value:.3f} ({value / floor:.2f}x)"


def render(results: dict[str, Any], environment: dict[str, str], args) -> str:
    lines = [f"# GPU check: {args.rows:,} x {args.dim} float32, {args.iters} Lloyd iterations", ""]
    lines += [f"- {key}: {value}" for key, value in environment.items()]
    lines += [f"- data generated on the device in {results['data_seconds']:.1f} s", "",
              "| k | floor s/iter | CuPy Lloyd | PyTorch Lloyd | engine, bounds off | engine, bounds on "
              "| labels != NumPy engine (ties) | TF32 label changes (ties) |",
              "|---|---|---|---|---|---|---|---|"]
    notes = []
    for k, row in results["ks"].items():
        engine, floor = row["engine"], row["floor"]
        if "note" in engine:
            notes.append(f"- engine, k={k}: {engine['note']}")
        else:
            pool, data = engine["memory"]
            notes.append(f"- engine, k={k}: {engine['cluster']}, {engine['workers']} worker(s); peak device memory "
                         f"(CuPy pool, busiest worker) {pool / 2**30:.1f} GiB = {pool / data:.2f}x its float32 "
                         f"embeddings ({data / 2**30:.1f} GiB); bounds on: {engine['rows_computed']:.0%} of the "
                         f"rows computed per iteration; centroids after {args.iters} iterations within "
                         f"{engine['centroid_gap']:.1e} of the plain Lloyd's")
        diff, ties = row["labels"]
        tf32 = row.get("tf32")
        lines.append(
            f"| {k:,} | {floor:.3f} | {_ratio(row['cupy'], floor)} | {_ratio(row.get('torch'), floor)} "
            f"| {_ratio(engine.get('bounds_off'), floor)} | {_ratio(engine.get('bounds_on'), floor)} "
            f"| {diff} of {args.sample:,} ({ties}) | {'-' if tf32 is None else f'{tf32[0]} ({tf32[1]})'} |")
        notes.append(f"- labels reference, k={k}: {row['reference']}")
        if row.get("reduction"):
            device_s, host_s, shared = row["reduction"]
            notes.append(f"- k-means|| reduction, k={k}, {min(args.sample, 5 * k):,} candidates: device {device_s:.2f} s, "
                         f"NumPy {host_s:.2f} s; {shared} of {k} centres the same (cumulative sums round differently)")
    return "\n".join(lines + ["", *notes, "", f"Command: `python bench/gpu_check.py {' '.join(args.argv)}`", ""])


def environment(xp, torch) -> dict[str, str]:
    env = {"python": platform.python_version(), "numpy": np.__version__,
           "CUPY_TF32": os.environ.get("CUPY_TF32", "unset (0: TF32 off)")}
    if xp.__name__ == "cupy":
        props = xp.cuda.runtime.getDeviceProperties(0)
        env["gpu"] = f"{props['name'].decode()} x {xp.cuda.runtime.getDeviceCount()}, " \
                     f"{props['totalGlobalMem'] / 2**30:.0f} GiB"
        env["cupy"] = xp.__version__
    env["torch"] = torch.__version__ if torch is not None else "not installed: no PyTorch peer, no TF32 count"
    for name in ("dask", "distributed", "dask_cuda"):
        try:
            env[name] = __import__(name).__version__
        except Exception as err:
            env[name] = f"not importable ({type(err).__name__}: {err})"
    return env


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="markdown file to write")
    parser.add_argument("--rows", type=int, default=8_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--ks", default="1000,10000", help="comma-separated cluster counts")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--sample", type=int, default=50_000, help="rows compared with the NumPy engine")
    parser.add_argument("--block", type=int, default=131_072, help="rows per distance GEMM")
    parser.add_argument("--chunk", type=int, default=1_000_000, help="rows per generated chunk / engine partition")
    parser.add_argument("--true-clusters", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-engine", dest="engine", action="store_false", help="skip our engine")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="NumPy instead of CuPy, engine on a CPU LocalCluster (CI smoke test only)")
    args = parser.parse_args(argv)
    args.ks = [int(k) for k in args.ks.split(",")]
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.cpu_smoke:
        xp, torch = np, None
    else:
        import cupy as xp

        try:
            import torch
        except ImportError:
            torch = None
    text = render(run_checks(args, xp, torch), environment(xp, torch), args)
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
