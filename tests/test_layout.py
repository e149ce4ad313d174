"""The repository layout must not shadow the standard library (`operator/` is a folder here)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_python_dash_m_works_from_the_repository_root():
    # `python -m` puts the working directory first on sys.path before importing runpy,
    # which imports collections, which imports the standard library's `operator`.
    done = subprocess.run([sys.executable, "-m", "json.tool"], input="{}", cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_operator_folder_is_a_namespaced_package_only():
    assert not (ROOT / "operator" / "__init__.py").exists()
    import kmeans_partition.operator.crd as crd

    assert Path(crd.__file__).resolve().parent == ROOT / "operator"
