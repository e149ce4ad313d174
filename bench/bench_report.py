"""Time `kmeans-partition report` on the output of a large run (summaries present, no parquet read).

Builds what a run over ``--rows`` rows into ``--k`` clusters leaves beside its partitions: the
manifest (its summary computed by the runner's own `AssignSummary` from synthetic per-row
labels, distances and margins, a lognormal spread of cluster sizes, an iteration history) and
the centroids. No ``centroid=N/`` folders are written: with a summary the report must not need
them. Then runs the command in a fresh process, as a user would, and prints the wall time:

    python bench/bench_report.py                       # 2,000,000 rows, k=10000, dim 128
    python bench/bench_report.py --rows 20000 --k 50   # a quick check
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kmeans_partition.runner.manifest import RunResult, manifest_data
from kmeans_partition.runner.summary import AssignSummary
from kmeans_partition.spec import parse_job_spec


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--k", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--iters", type=int, default=40, help="iterations in the history")
    parser.add_argument("--out", help="output folder (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def synthetic_output(folder: Path, rows: int, k: int, dim: int, iters: int, seed: int) -> dict:
    """Write ``_manifest.json`` and ``kmeans_centroids.npy`` as a run of that size would."""
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, 1.0, k)
    labels = rng.choice(k, size=rows, p=weights / weights.sum()).astype(np.int32)
    cosine = rng.gamma(4.0, 0.05, rows).astype(np.float32)
    margin = rng.exponential(0.08, rows).astype(np.float32)
    summary = AssignSummary.from_rows(labels, cosine, margin, k)
    sizes = summary.sizes
    spec = parse_job_spec({"n_clusters": k, "id_field": "id", "embedding_field": "embedding",
                           "input_path": "in", "output_path": str(folder)})
    shifts = np.geomspace(1.0, 1e-6, iters)
    result = RunResult(
        output_path=str(folder), manifest_path=str(folder / "_manifest.json"),
        centroids_path=str(folder / "kmeans_centroids.npy"), n_rows=rows, n_clusters=k, embedding_dim=dim,
        n_iter=iters, inertia=float(rows) * 0.4, converged=True,
        rows_per_centroid=[int(s) for s in sizes],
        files=[{"centroid": c, "path": f"centroid={c}/part-00000.parquet", "rows": int(s)}
               for c, s in enumerate(sizes) if s],
        input_files=[f"in/part-{i:05d}.parquet" for i in range(64)], n_duplicate_ids=0, n_reseeded=0,
        iterations=[{"iteration": i + 1, "inertia": rows * (0.4 + 0.2 / (i + 1)), "centroid_shift": float(s),
                     "rows_computed": rows, "seconds": 1.0} for i, s in enumerate(shifts)],
        tol_abs=1e-6, summary=summary.to_dict(),
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "_manifest.json").write_text(json.dumps(manifest_data(spec, result), indent=2))
    np.save(folder / "kmeans_centroids.npy", rng.standard_normal((k, dim)).astype(np.float32))
    return result.to_dict()


def main(argv=None) -> float:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.out or scratch) / "out"
        synthetic_output(folder, args.rows, args.k, args.dim, args.iters, args.seed)
        command = [sys.executable, "-m", "kmeans_partition.cli", "report", str(folder),
                   "--html", str(folder / "page.html")]
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        size_mb = (folder / "_manifest.json").stat().st_size / 1e6
        print(f"report on {args.rows:,} rows, k={args.k:,} (manifest {size_mb:.1f} MB, no parquet files): "
              f"{seconds:.2f} s wall, including Python start-up and imports")
    return seconds


if __name__ == "__main__":
    main()
