#!/usr/bin/env bash
# Resolve the GPU image's pip install without Docker and without installing anything:
# `pip install --dry-run --report` for Python 3.12 on manylinux_2_28 x86_64 (the gpu stage's
# Ubuntu 24.04 python3), with docker/constraints-gpu.txt, the project's runtime requirements
# and extras s3,gcs,operator,gpu (read from pyproject.toml) plus "cuml-cu12[dask]==CUML_VERSION"
# (from the Dockerfile). Then checks that raft-dask-cu12 and dask-cudf-cu12 are in the resolution
# at the cuML release. Slow and large: pip fetches every wheel it cannot read metadata for
# (several GB for the RAPIDS libraries), so this is not part of the test suite.
#
#   scripts/check-gpu-resolve.sh            # prints the resolved RAPIDS packages, exit 1 on a problem
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
cuml_version="$(sed -n 's/^ARG CUML_VERSION=//p' Dockerfile)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$PYTHON" - "$work/requirements.txt" <<'PY'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
lines = project["dependencies"] + [req for name in ("s3", "gcs", "operator", "gpu") for req in extras[name]]
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY
"$PYTHON" -m pip install --dry-run --ignore-installed --quiet --report "$work/report.json" \
  --python-version 3.12 --platform manylinux_2_28_x86_64 --only-binary=:all: --target "$work/target" \
  --constraint docker/constraints-gpu.txt -r "$work/requirements.txt" "cuml-cu12[dask]==${cuml_version}"
"$PYTHON" - "$work/report.json" "$cuml_version" <<'PY'
import json, sys
report, cuml_version = json.load(open(sys.argv[1])), sys.argv[2]
release = ".".join(cuml_version.split(".")[:2])
found = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in report["install"]}
print(f"{len(found)} packages resolved")
problems = []
for name in ("cuml-cu12", "raft-dask-cu12", "dask-cudf-cu12", "dask-cuda", "rmm-cu12", "cupy-cuda12x"):
    version = found.get(name)
    print(f"  {name}=={version}")
    if version is None:
        problems.append(f"{name} is not in the resolution")
    elif name != "cupy-cuda12x" and not version.startswith(release + "."):
        problems.append(f"{name}=={version} is not RAPIDS {release}")
if problems:
    sys.exit("check-gpu-resolve: " + "; ".join(problems))
PY
