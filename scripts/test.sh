#!/usr/bin/env bash
# Set up (.venv with the test extra, helm and kubectl in .tools/bin) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
if [ -f scripts/fetch-k8s-tools.sh ]; then bash scripts/fetch-k8s-tools.sh; fi
exec .venv/bin/python -m pytest "$@"
