#!/usr/bin/env bash
# Copy the top-level crds/ into the Helm chart so the two stay byte-identical.
# Run after regenerating crds/ from the spec model.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source_dir="$repo_root/crds"
chart_dir="$repo_root/charts/kmeans-partition/crds"

shopt -s nullglob
sources=("$source_dir"/*.yaml)
if (( ${#sources[@]} == 0 )); then
    echo "sync-chart-crds: no CRD files in $source_dir" >&2
    exit 1
fi
mkdir -p "$chart_dir"
rm -f "$chart_dir"/*.yaml
cp "${sources[@]}" "$chart_dir/"
echo "sync-chart-crds: copied ${#sources[@]} file(s) to ${chart_dir#"$repo_root"/}"
