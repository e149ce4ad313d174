"""Helpers for the Helm chart tests: offline chart copy, rendering, RBAC queries."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable

import yaml

from .tools import REPO_ROOT, k8s_tools

CHART_DIR = REPO_ROOT / "charts" / "kmeans-partition"
CRD_DIR = REPO_ROOT / "crds"
CHART_CRD_DIR = CHART_DIR / "crds"
SYNC_SCRIPT = "scripts/sync-chart-crds.sh"

# Cluster-scoped resources an operator might be tempted to name; none may
# appear in a (namespaced) Role -- dask-kubernetes#916.
CLUSTER_SCOPED_RESOURCES = frozenset({
    "namespaces", "nodes", "persistentvolumes", "customresourcedefinitions",
    "clusterroles", "clusterrolebindings", "clusterkopfpeerings", "storageclasses",
    "priorityclasses", "certificatesigningrequests", "validatingwebhookconfigurations",
    "mutatingwebhookconfigurations", "apiservices", "runtimeclasses", "ingressclasses",
    "csidrivers", "csinodes", "volumeattachments", "componentstatuses",
})


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real helm binary offline."""
    result = subprocess.run(
        [str(k8s_tools()["helm"]), *args], capture_output=True, text=True, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def offline_chart_copy(dest: Path) -> Path:
    """Copy the chart, dropping dependencies that are disabled by default.

    Helm refuses to lint/render a chart whose declared dependencies are not
    vendored in charts/, even when their `condition` is false; fetching them
    needs the network. A disabled dependency renders nothing, so the copy
    without it renders exactly what the real chart renders by default.
    """
    target = dest / CHART_DIR.name
    shutil.copytree(CHART_DIR, target)
    chart_yaml = target / "Chart.yaml"
    chart = yaml.safe_load(chart_yaml.read_text())
    values = yaml.safe_load((target / "values.yaml").read_text())
    kept = [dep for dep in chart.get("dependencies", []) if _enabled_by_default(dep, values)]
    if kept:
        chart["dependencies"] = kept
    else:
        chart.pop("dependencies", None)
    chart_yaml.write_text(yaml.safe_dump(chart, sort_keys=False))
    return target


def _enabled_by_default(dependency: dict[str, Any], values: dict[str, Any]) -> bool:
    condition = dependency.get("condition")
    if not condition:
        return True
    node: Any = values
    for key in condition.split("."):
        if not isinstance(node, dict) or key not in node:
            return True
        node = node[key]
    return bool(node)


def render(chart: Path, *sets: str, namespace: str = "kmp-system", crds: bool = False) -> list[dict]:
    """`helm template` -> list of manifests."""
    args = ["template", "kmp", str(chart), "--namespace", namespace]
    if crds:
        args.append("--include-crds")
    for item in sets:
        args += ["--set", item]
    out = helm(*args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def of_kind(docs: Iterable[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def the_deployment(docs: list[dict]) -> dict:
    deployments = of_kind(docs, "Deployment")
    assert len(deployments) == 1, [d["metadata"]["name"] for d in deployments]
    return deployments[0]


def grants(rules: list[dict], group: str, resource: str, verb: str) -> bool:
    """Whether any rule grants `verb` on `group`/`resource`."""
    return any(
        group in rule.get("apiGroups", [])
        and resource in rule.get("resources", [])
        and verb in rule.get("verbs", [])
        for rule in rules
    )


def rules_of(docs: list[dict], kind: str) -> list[dict]:
    return [rule for doc in of_kind(docs, kind) for rule in doc.get("rules", [])]
