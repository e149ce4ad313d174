"""The kill-and-resume benchmark runs on a tiny problem and finds the resumed output identical."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "faults_resume.py"


# Known defect (issue 10, found 2026-12-02, also on 5b24ee9; seen in CI): the resumed run equalled the
# undisturbed one through iteration 19, then differed from iteration 20 on (last digits of the inertia).
# Not reproduced on 2026-12-06 (13 runs, idle and loaded; in-process, 40 resumes of the Lloyd kernels
# with bounds dropped gave identical labels); one real cause, another partitioning when resumed on
# another number of workers, is fixed (the checkpoint keeps the plan). The xfail names where the
# output first differed. Only that mismatch is an xfail; any other failure still fails.
@pytest.mark.timeout(300)
def test_tiny_kill_and_resume_benchmark():
    run = subprocess.run([sys.executable, str(BENCH), "--rows", "20000", "--dim", "16", "--k", "32",
                          "--max-iter", "40", "--files", "2"], capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stderr[-2000:]
    resumed_from = int(re.search(r"resumed from iteration (\d+)", run.stdout).group(1))
    assert 10 <= resumed_from < 40 and resumed_from % 5 == 0
    assert "output identical to the undisturbed run:" in run.stdout
    if "output identical to the undisturbed run: True" not in run.stdout:
        where = re.search(r"first difference: (.*)", run.stdout)
        pytest.xfail(f"known defect (issue 10): the resumed output differs; {where.group(1) if where else '?'}")


def test_first_difference_names_the_iteration_or_the_keys():
    import importlib.util

    spec = importlib.util.spec_from_file_location("faults_resume", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    it = lambda n, inertia: {"iteration": n, "inertia": inertia, "centroid_shift": 0.1}  # noqa: E731
    want = ({"a.parquet": "x"}, {"iterations": [it(1, 5.0), it(2, 4.0)], "n_iter": 2})
    got = ({"a.parquet": "x"}, {"iterations": [it(1, 5.0), it(2, 4.5)], "n_iter": 2})
    assert bench.first_difference(got, want).startswith("iteration 2: resumed")
    got = ({"a.parquet": "y"}, {"iterations": [it(1, 5.0), it(2, 4.0)], "n_iter": 3})
    assert bench.first_difference(got, want) == "manifest keys ['n_iter']; files ['a.parquet']"
