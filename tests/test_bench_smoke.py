"""The benchmark script runs end to end on a tiny problem (no timing assertions)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_kmeans.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_kmeans", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(120)
def test_tiny_benchmark_table(tmp_path, capsys):
    pytest.importorskip("sklearn")
    bench = load_bench()
    markdown = tmp_path / "table.md"
    rows = bench.main([
        "--rows", "2000", "--dim", "16", "--k", "8", "--iters", "3", "--peers", "sklearn,sklearn-elkan",
        "--workers", "2", "--partition-rows", "500", "--batch", "256", "--true-clusters", "12",
        "--markdown", str(markdown),
    ])
    assert [r["method"] for r in rows][1:] == ["ours", "ours, no bounds", "scikit-learn", "scikit-learn elkan"]
    assert all(r["k"] == 8 for r in rows)
    ours, plain, sk, elkan = rows[1:]
    assert 0 < ours["rows computed"] <= 1 and plain["rows computed"] == 1
    # bounds change which rows are computed, never the result
    assert ours["inertia@iters"] == pytest.approx(plain["inertia@iters"], rel=1e-9)
    assert elkan["inertia@iters"] == pytest.approx(sk["inertia@iters"], rel=1e-3)
    for row in (ours, sk):
        assert 1 <= row["iters"] <= 3
        for column in ("s/iter", "x ours", "% floor", "inertia@iters", "init s", "init (iters)",
                       "final inertia", "vs sklearn++"):
            assert math.isfinite(row[column]) and row[column] > 0, (row["method"], column, row[column])
    assert ours["init"] == "k-means||" and sk["init"] == "k-means++"
    assert sk["vs sklearn++"] == pytest.approx(1.0)
    # same data, same initial centroids, same Lloyd: the two runs land on (nearly) the same inertia
    assert ours["inertia@iters"] == pytest.approx(sk["inertia@iters"], rel=1e-3)
    out = capsys.readouterr().out
    for target in ("of the GEMM floor", "x scikit-learn's speed (lloyd) (target >= 0.9x)", "k-means|| init took",
                   "converged inertia", "without bounds", "scikit-learn elkan"):
        assert target in out
    text = markdown.read_text()
    assert text.count("\n| ") == 6 and "| ours | 8 |" in text


def test_unknown_peer_is_rejected():
    bench = load_bench()
    with pytest.raises(SystemExit):
        bench.parse_args(["--peers", "sklearn,spark"])


@pytest.mark.timeout(120)
def test_random_init_baseline_row_and_target(capsys):
    bench = load_bench()
    rows = bench.main([
        "--rows", "2000", "--dim", "16", "--k", "8", "--iters", "1", "--peers", "none", "--random-init",
        "--converge-iters", "8", "--workers", "2", "--partition-rows", "500", "--batch", "256", "--true-clusters", "12",
    ])
    assert [r["method"] for r in rows][1:] == ["ours", "ours, no bounds", "ours, random init"]
    ours, rnd = rows[1], rows[3]
    assert rnd["init"] == "random" and rnd["init s"] > 0 and rnd["s/iter"] is None
    assert math.isfinite(rnd["final inertia"]) and rnd["final inertia"] > 0
    out = capsys.readouterr().out
    ratio = ours["final inertia"] / rnd["final inertia"]
    assert f"converged inertia after k-means|| is {ratio:.4f}x that after random init" in out
    assert "sampling passes" in out and "local trials" in out


def test_step_parts_runs_both_kernels_on_the_same_rows(capsys):
    """`bench/step_parts.py` times scikit-learn's private Lloyd kernel: it must still import and do
    the same step as ours (labels agree but for float32 near ties)."""
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("step_parts", BENCH.parent / "step_parts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["3000", "16", "8"])
    assert result["same labels"] >= 0.999
    assert len(result["ours"]) == len(result["sklearn"]) == module.STEPS
    assert "scikit-learn's time / ours" in capsys.readouterr().out
