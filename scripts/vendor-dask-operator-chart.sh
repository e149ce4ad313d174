#!/usr/bin/env bash
# Package the dask-kubernetes operator Helm chart into charts/kmeans-partition/charts/
# from the released dask-kubernetes sources, at the version Chart.yaml pins.
#
# Source: the dask-kubernetes sdist of that version (pip download), which carries the
# chart under dask_kubernetes/operator/deployment/helm/dask-kubernetes-operator/. Its
# Chart.yaml version and values.yaml image tag are placeholders that dask's release tool
# (chartpress) fills with the release tag; this script fills them the same way (both
# become the pinned version) and changes nothing else. Needs pip, tar and helm (v4).
# After bumping the dependency's version in Chart.yaml, run this and the chart tests.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
chart_dir="$repo_root/charts/kmeans-partition"
name="dask-kubernetes-operator"
helm="${HELM:-$repo_root/.tools/bin/helm}"
[[ -x "$helm" ]] || helm="$(command -v helm)" || { echo "vendor: helm (v4) is required" >&2; exit 1; }
python="${PYTHON:-$repo_root/.venv/bin/python}"
[[ -x "$python" ]] || python="python3"

version="$(awk -v dep="$name" '
    $0 ~ "name: " dep "$" { found = 1; next }
    found && /version:/ { gsub(/[" ]/, "", $2); print $2; exit }' "$chart_dir/Chart.yaml")"
[[ -n "$version" ]] || { echo "vendor: no $name version in $chart_dir/Chart.yaml" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-deps --no-binary :all: "dask-kubernetes==$version" -d "$work"
tar -xzf "$work/dask_kubernetes-$version.tar.gz" -C "$work"
source="$work/dask_kubernetes-$version/dask_kubernetes/operator/deployment/helm/$name"

fill() {  # file, placeholder line pattern, replacement: exactly one line must match
    local file="$1" pattern="$2" replacement="$3"
    [[ "$(grep -c -E "$pattern" "$file")" == 1 ]] || { echo "vendor: '$pattern' not once in $file" >&2; exit 1; }
    touch -r "$file" "$work/mtime"  # keep the released file's time: the package is then reproducible
    sed -i -E "s/$pattern/$replacement/" "$file"
    touch -r "$work/mtime" "$file"
}
fill "$source/Chart.yaml" '^version: 0\.0\.1-set\.by\.chartpress$' "version: $version"
fill "$source/values.yaml" '^  tag: "set-by-chartpress"' "  tag: \"$version\""

mkdir -p "$chart_dir/charts"
rm -f "$chart_dir/charts/$name"-*.tgz
"$helm" package "$source" --destination "$chart_dir/charts" >/dev/null
echo "vendor: charts/kmeans-partition/charts/$name-$version.tgz from dask-kubernetes $version"
