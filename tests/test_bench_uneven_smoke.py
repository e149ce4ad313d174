"""The uneven-load benchmark runs on a tiny problem (no timing assertions): with stealing off no
partition reaches another worker and the scheduler confirms no steal."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2,
                    reason="needs taskset and two CPUs")
@pytest.mark.timeout(180)
def test_tiny_uneven_load_benchmark(tmp_path):
    spec = importlib.util.spec_from_file_location("uneven_load", ROOT / "bench" / "uneven_load.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    results = bench.main(["--rows", "4000", "--dim", "8", "--clusters", "6", "--files", "4", "--k", "5",
                          "--max-iter", "3", "--data-dir", str(tmp_path)])
    assert [r["stealing"] for r in results] == [False, True]
    off = results[0]
    assert off["steals"] == 0 and len(off["workers"]) == 2 and off["seconds"] > 0
    for report in off["workers"].values():
        assert report["peak_rss_mib"] > 0 and "load_partition" not in report["received_mib"]
    from kmeans_partition.runner.cluster import SCHEDULER_CONFIG

    assert SCHEDULER_CONFIG == {"distributed.scheduler.work-stealing": False}  # left as it was
