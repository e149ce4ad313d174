"""A/B of one partition's plain Lloyd step (``lloyd_partial`` without bounds) between two source trees.

    git archive <before> | tar -x -C /tmp/before
    for t in /tmp/before/src src; do OPENBLAS_NUM_THREADS=1 python bench/ab_lloyd_step.py $t [n d k]; done

CPU seconds per step (process time, so a loaded machine disturbs it less than wall time), min and
median of 10 steps on n x d float32 rows (default 100k x 384, k=1000), one BLAS thread.
"""
import sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from kmeans_partition.runner import kmeans as km
from kmeans_partition.runner.lloyd import lloyd_partial
rng = np.random.default_rng(0)
n, d, k = (int(v) for v in sys.argv[2:5]) if len(sys.argv) > 4 else (100_000, 384, 1000)
centres = rng.standard_normal((1500, d))
x = centres[rng.integers(1500, size=n)] + 2.0 * rng.standard_normal((n, d))
x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
c = x[rng.choice(n, k, replace=False)]
xa, x_sq = km.augment_rows(x), km.row_sq_norms(x)
times = []
for step in range(10):
    t = time.process_time()
    partial, state = lloyd_partial(xa, x_sq, c, 16384)
    times.append(time.process_time() - t)
print(f"plain min {min(times):.3f} median {np.median(times):.3f}")
