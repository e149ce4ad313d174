#!/usr/bin/env bash
# Set up, generate a small sample and run the job on it with the embedded defaults
# (a Dask LocalCluster on this machine, local files). Output: ./quickstart/output
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
rm -rf quickstart
.venv/bin/kmeans-partition sample --output quickstart/input --rows 20000 --dim 64 --clusters 20 --files 4
.venv/bin/kmeans-partition run --input quickstart/input --output quickstart/output \
  --n-clusters 20 --id-field id --embedding-field embedding --metadata-fields text
ls quickstart/output | head -5
