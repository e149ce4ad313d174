"""The package installs as `kmeans_partition` from src/ and never shadows the standard library."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_package_imports_from_any_directory_beside_the_stdlib_operator(tmp_path):
    code = (
        "import operator, kmeans_partition.runner, kmeans_partition.operator, kmeans_partition.operator.crd as crd;"
        "print(operator.__file__); print(crd.__file__); print(hasattr(operator, 'itemgetter'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    stdlib_operator, crd_file, has_itemgetter = out.stdout.split()
    assert has_itemgetter == "True"
    assert Path(crd_file).resolve().parent == ROOT / "src" / "kmeans_partition" / "operator"
    assert not Path(stdlib_operator).resolve().is_relative_to(ROOT)


def test_no_top_level_package_folders_beside_src():
    assert not (ROOT / "runner").exists() and not (ROOT / "operator").exists()
