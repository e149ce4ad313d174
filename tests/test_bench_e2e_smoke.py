"""The end-to-end benchmark script runs on a tiny problem (no timing assertions)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "bench_e2e.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_e2e", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the script pickles its worker functions by value
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(180)
def test_tiny_end_to_end_benchmark(tmp_path, capsys):
    bench = load_bench()
    args = ["--rows", "3000", "--dim", "8", "--clusters", "6", "--files", "2", "--k", "5", "--max-iter", "3",
            "--data-dir", str(tmp_path / "data")]
    report = bench.main(args + ["--baseline-src", str(ROOT / "src"), "--markdown", str(tmp_path / "table.md")])
    baseline, ours = report["seconds"]
    assert ours["run"] == "job (this checkout)" and baseline["run"].startswith("job (")
    for row in (baseline, ours):
        for column in ("read", "init", "fit", "assign", "write", "total", "x plain"):
            assert math.isfinite(row[column]) and row[column] > 0, (row["run"], column)
        assert row["read+assign+write"] == pytest.approx(row["read"] + row["assign"] + row["write"])
    for row in report["cpu"]:  # CPU seconds per stage, workers + client: the load-independent comparison
        for column in ("read", "init", "fit", "assign", "write", "x plain"):
            assert math.isfinite(row[column]) and row[column] > 0, (row["run"], column)
    assert report["plain"]["cpu"]["total"] > 0
    for row in report["memory"]:
        assert 0 < row["idle GiB"] <= row["peak GiB"] < 8
        assert row["x data share"] == pytest.approx(row["peak GiB"] / row["data share GiB"])
        assert 0 < row["peak reading"] <= row["peak GiB"] and 0 < row["peak writing"] <= row["peak GiB"]
    plain = report["plain"]
    assert sum(plain["rows_per_centroid"]) == 3000 and plain["timings"]["total"] > 0
    assert report["moved"] < 0.01  # the plain pass labels rows like the job (up to float32 near-ties)
    out = capsys.readouterr().out
    for text in ("read+assign+write =", "peak worker RSS =", "plain pass: read", "load average", "| peak writing |"):
        assert text in out
    assert (tmp_path / "table.md").read_text().count("\n| job") == 6  # seconds, CPU and memory, two runs each
    # the sample is cached: it is reused, and no scratch output is left next to it
    data = tmp_path / "data"
    assert sorted(p.name for p in data.iterdir()) == ["sample-3000x8-c6-f2-s0", "sample-3000x8-c6-f2-s0.done"]
    stamp = [p.stat().st_mtime_ns for p in sorted((data / "sample-3000x8-c6-f2-s0").iterdir())]
    assert bench.sample_dir(bench.parse_args(args)) == data / "sample-3000x8-c6-f2-s0"
    assert [p.stat().st_mtime_ns for p in sorted((data / "sample-3000x8-c6-f2-s0").iterdir())] == stamp
