"""Helpers for the Helm chart tests: the chart as shipped, rendering, RBAC queries."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path
from typing import Iterable

import yaml

from .tools import REPO_ROOT, k8s_tools

CHART_DIR = REPO_ROOT / "charts" / "kmeans-partition"
CRD_DIR = REPO_ROOT / "crds"
CHART_CRD_DIR = CHART_DIR / "crds"
SYNC_SCRIPT = "scripts/sync-chart-crds.sh"
DASK_OPERATOR = "dask-kubernetes-operator"
VENDOR_SCRIPT = "scripts/vendor-dask-operator-chart.sh"

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


def chart_metadata() -> dict:
    return yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())


def dask_operator_dependency() -> dict:
    """The dask operator's entry in Chart.yaml `dependencies`."""
    (dependency,) = [d for d in chart_metadata().get("dependencies", []) if d["name"] == DASK_OPERATOR]
    return dependency


def vendored_chart_files(archive: Path) -> dict[str, bytes]:
    """A packaged chart's files, by path inside the archive."""
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
