"""The kill-and-resume benchmark runs on a tiny problem and finds the resumed output identical."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "faults_resume.py"


@pytest.mark.timeout(300)
def test_tiny_kill_and_resume_benchmark():
    run = subprocess.run([sys.executable, str(BENCH), "--rows", "20000", "--dim", "16", "--k", "32",
                          "--max-iter", "40", "--files", "2"], capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stderr[-2000:]
    resumed_from = int(re.search(r"resumed from iteration (\d+)", run.stdout).group(1))
    assert 10 <= resumed_from < 40 and resumed_from % 5 == 0
    assert "output identical to the undisturbed run: True" in run.stdout
