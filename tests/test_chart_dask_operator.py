"""The chart's optional dask-kubernetes operator dependency, vendored in charts/: pinned,
packaged from the release, off by default, and able to run the operator's DaskClusters."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from kmeans_partition.operator import builders as B
from kmeans_partition.spec import parse_resource_spec

from k8s.chart import (
    CHART_DIR, DASK_OPERATOR, VENDOR_SCRIPT, dask_operator_dependency, helm, of_kind, render,
    vendored_chart_files,
)
from k8s.crd_validation import validate_resource

EXAMPLES = sorted((CHART_DIR.parents[1] / "examples").glob("kmeanspartition-*.yaml"))
DASK_IMAGE = "ghcr.io/dask/dask-kubernetes-operator"


@pytest.fixture(scope="module")
def version() -> str:
    return dask_operator_dependency()["version"]


@pytest.fixture(scope="module")
def vendored(version) -> dict[str, bytes]:
    archives = sorted((CHART_DIR / "charts").glob("*.tgz"))
    assert [p.name for p in archives] == [f"{DASK_OPERATOR}-{version}.tgz"], (
        f"charts/ must hold exactly the pinned dependency: run {VENDOR_SCRIPT}")
    return vendored_chart_files(archives[0])


@pytest.fixture(scope="module")
def dask_cluster_crd(vendored) -> dict:
    return yaml.safe_load(vendored[f"{DASK_OPERATOR}/crds/daskcluster.yaml"])


def test_dependency_is_optional_off_by_default_and_pinned(version):
    dependency = dask_operator_dependency()
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert dependency["condition"] == "daskOperator.enabled"
    assert values["daskOperator"]["enabled"] is False
    assert dependency["repository"].startswith("https://")
    assert version.count(".") == 2 and all(part.isdigit() for part in version.split("."))


def test_deploy_docs_install_the_pinned_version_separately(version):
    docs = (CHART_DIR.parents[1] / "docs" / "deploy.md").read_text()
    assert f"helm install dask-operator {DASK_OPERATOR} --repo " in docs
    assert f"--version {version} " in docs


def test_vendored_chart_is_the_pinned_release_with_its_placeholders_filled(vendored, version):
    assert all(name.startswith(f"{DASK_OPERATOR}/") for name in vendored)
    chart = yaml.safe_load(vendored[f"{DASK_OPERATOR}/Chart.yaml"])
    values = yaml.safe_load(vendored[f"{DASK_OPERATOR}/values.yaml"])
    assert (chart["name"], chart["version"]) == (DASK_OPERATOR, version)
    assert values["image"] == {**values["image"], "name": DASK_IMAGE, "tag": version}
    placeholders = (b"set-by-chartpress", b"set.by.chartpress")
    assert not [name for name, data in vendored.items() if any(p in data for p in placeholders)]


def test_helm_finds_the_dependency_vendored(version):
    listing = helm("dependency", "list", str(CHART_DIR)).stdout
    (row,) = [line.split() for line in listing.splitlines() if line.startswith(DASK_OPERATOR)]
    assert row[1] == version and row[-1] == "ok", listing


def test_off_by_default_nothing_of_the_dask_operator_renders():
    docs = render(CHART_DIR, crds=True)
    assert all(d["metadata"]["labels"]["app.kubernetes.io/name"] == "kmeans-partition" for d in docs)
    assert not [d for d in docs if "dask" in d["metadata"]["name"]]


def test_enabled_it_installs_the_dask_operator_and_its_crds(version):
    docs = render(CHART_DIR, "daskOperator.enabled=true", crds=True)
    deployments = {d["metadata"]["name"]: d for d in of_kind(docs, "Deployment")}
    (container,) = deployments[f"kmp-{DASK_OPERATOR}"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{DASK_IMAGE}:{version}"
    assert "kmp-kmeans-partition" in deployments
    crds = {d["metadata"]["name"]: d for d in of_kind(docs, "CustomResourceDefinition")}
    served = [v["name"] for v in crds[f"{B.DASK_PLURAL}.{B.DASK_GROUP}"]["spec"]["versions"] if v["served"]]
    assert B.DASK_VERSION in served


def test_enabled_the_notes_stop_asking_for_a_dask_operator():
    def notes(*sets: str) -> str:
        args = ["install", "kmp", str(CHART_DIR), "--dry-run=client", "--namespace", "kmp-system"]
        for item in sets:
            args += ["--set", item]
        return helm(*args).stdout.split("NOTES:", 1)[1]

    assert "dask-kubernetes operator must run" in " ".join(notes().split())
    assert "dask-kubernetes operator must run" not in " ".join(notes("daskOperator.enabled=true").split())


def _integer_quantities(resource: dict) -> dict:
    """The resource with integer CPU quantities, which its CRD allows (int-or-string)."""
    resource = copy.deepcopy(resource)
    resource["spec"]["cluster"]["resources"]["worker"] = {"requests": {"cpu": 4}, "limits": {"cpu": 4}}
    return resource


@pytest.mark.parametrize("integers", [False, True], ids=["as-written", "integer-quantities"])
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_operator_dask_clusters_are_valid_for_the_vendored_crd(dask_cluster_crd, example: Path, integers):
    """What the operator creates must pass the API server's check against dask's own CRD
    (it types quantities `string`: an integer GPU limit or CPU request would be refused)."""
    resource = yaml.safe_load(example.read_text())
    spec = parse_resource_spec((_integer_quantities(resource) if integers else resource)["spec"])
    cluster = B.build_dask_cluster(resource["metadata"]["name"], "team-a", "uid-1", spec)
    assert validate_resource(cluster, dask_cluster_crd) == []
    misspelled = copy.deepcopy(cluster)
    misspelled["spec"]["worker"]["replicaz"] = 1
    assert validate_resource(misspelled, dask_cluster_crd) == [
        "spec.worker: Additional properties are not allowed ('replicaz' was unexpected)"]
