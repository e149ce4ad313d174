"""A/B of the k-means|| candidate reduction (`runner/kmeans.reduce_candidates`): this tree against
the `kmeans.py` of a git revision, side by side in one process (alternating runs, the median of
each), on the same candidates and weights, NumPy, one BLAS thread (as on a worker).

    python bench/ab_reduction.py --baseline-rev 5af049e

Prints seconds per side, the ratio (this tree / baseline) and whether both chose the same centres.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from kmeans_partition.runner import kmeans as current

ROOT = Path(__file__).resolve().parents[1]


def baseline_module(rev: str):
    """`runner/kmeans.py` at ``rev``, imported inside the package (its relative imports resolve)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:src/kmeans_partition/runner/kmeans.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "kmeans_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("kmeans_partition.runner._kmeans_baseline", path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "kmeans_partition.runner"
    spec.loader.exec_module(module)
    return module


def candidates(m: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(2, m // 40), d))
    x = centres[rng.integers(len(centres), size=m)] + 0.5 * rng.standard_normal((m, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), rng.integers(1, 50, size=m).astype(np.float64)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-rev", required=True)
    parser.add_argument("--cases", default="1000:4001:384:1e9,1000:4001:384:1e5,10000:40001:384:1e9",
                        help="k:m:d:n_rows (n_rows caps the local trials: 1e9 gives 2 + ln k)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    base = baseline_module(args.baseline_rev)
    print(f"| k | candidates | d | trials | this tree s | baseline s | ratio | same centres |")
    print("|---|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        k, m, d, n_rows = case.split(":")
        k, m, d, n_rows = int(k), int(m), int(d), int(float(n_rows))
        points, weights = candidates(m, d, seed=k)
        times = {"new": [], "old": []}
        results = {}
        with threadpool_limits(1):
            for _ in range(args.repeats):
                for name, module in (("new", current), ("old", base)):
                    started = time.perf_counter()
                    results[name] = module.reduce_candidates(points, weights, k, [1, 2], n_rows)
                    times[name].append(time.perf_counter() - started)
        new, old = statistics.median(times["new"]), statistics.median(times["old"])
        same = np.array_equal(results["new"], results["old"])
        print(f"| {k:,} | {m:,} | {d} | {current.local_trials(k, m, n_rows)} | {new:.2f} | {old:.2f} "
              f"| {new / old:.2f} | {same} |")
    print(f"\nCommand: `python bench/ab_reduction.py {' '.join(sys.argv[1:])}`")


if __name__ == "__main__":
    main()
