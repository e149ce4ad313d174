"""The status model: the CRD's status schema comes from it, and every writer stays inside it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from k8s.fake_api import FakeApi
from pydantic import ValidationError

from kmeans_partition.operator import crd as crd_module
from kmeans_partition.operator import labels as L
from kmeans_partition.operator.reconcile import _finish, _Pass, reconcile
from kmeans_partition.runner.k8s_status import KubernetesStatusSink
from kmeans_partition.runner.progress import Progress
from kmeans_partition.status import (
    OPERATOR_STATUS_KEYS, RUNNER_STATUS_KEYS, KMeansPartitionStatus, OperatorStatus, ProgressStatus, wire,
)

NAME = "docs"
SPEC = {
    "nClusters": 4, "idField": "id", "embeddingField": "embedding",
    "inputPath": ["s3://bucket/in/"], "outputPath": "s3://bucket/out/", "cleanupPolicy": "Never",
}
DASK, JOB = L.dask_cluster_name(NAME), L.job_name(NAME)
SUMMARY = {
    "n_rows": 1000, "n_clusters": 4, "n_iter": 12, "inertia": 3.5, "converged": True,
    "manifest_path": "s3://b/out/_manifest.json", "centroids_path": "s3://b/out/_centroids.parquet",
    "rows_per_centroid": [100, 400, 250, 250], "output_path": "s3://b/out/",
    "summary": {"rows": 1000, "thresholds": [0.005, 0.01, 0.02], "boundary_rows": [3, 7, 20]},
}


def status_schema() -> dict[str, Any]:
    """The status schema as shipped in the CRD."""
    return crd_module.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]


def undeclared(value: Any, schema: dict[str, Any], path: str = "status") -> list[str]:
    """Paths in `value` that `schema` does not declare (what the API server would prune)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out = []
        for key, sub in value.items():
            if key not in props:
                out.append(f"{path}.{key}")
            elif sub is not None:
                out += undeclared(sub, props[key], f"{path}.{key}")
        return out
    if isinstance(value, list):
        items = schema["items"]
        return [bad for index, item in enumerate(value) for bad in undeclared(item, items, f"{path}[{index}]")]
    return []


def nodes(schema: dict[str, Any]):
    yield schema
    for sub in schema.get("properties", {}).values():
        yield from nodes(sub)
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"])


def test_status_schema_is_the_model_split_between_its_two_writers():
    props = status_schema()["properties"]
    assert set(OPERATOR_STATUS_KEYS).isdisjoint(RUNNER_STATUS_KEYS)
    assert set(props) == set(OPERATOR_STATUS_KEYS) | set(RUNNER_STATUS_KEYS)
    assert set(RUNNER_STATUS_KEYS) == {"progress", "result"}
    assert {"phase", "conditions", "observedGeneration", "waitingFor", "job"} <= set(OPERATOR_STATUS_KEYS)
    model_keys = {info.alias for info in KMeansPartitionStatus.model_fields.values()}
    assert set(props) == model_keys


def test_status_schema_has_no_defaults_nulls_or_requirements_beyond_conditions():
    schema = status_schema()
    for node in nodes(schema):
        assert "default" not in node and "nullable" not in node, node
    conditions = schema["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert conditions["items"]["required"] == ["type", "status", "lastTransitionTime", "reason", "message"]
    required = [node for node in nodes(schema) if "required" in node]
    assert required == [conditions["items"]]
    props = schema["properties"]
    assert props["phase"]["enum"] == ["Pending", "Running", "Succeeded", "Failed"]
    assert props["progress"]["properties"]["iteration"] == {"type": "integer", "format": "int64"}
    assert props["startTime"] == {"type": "string", "format": "date-time"}


def test_printer_columns_read_declared_status_fields_of_their_type():
    schema = status_schema()
    columns = [c for c in crd_module.printer_columns() if c["jsonPath"].startswith(".status.")]
    assert {c["jsonPath"] for c in columns} >= {".status.phase", ".status.progress.iteration", ".status.job"}
    for column in columns:
        node = schema
        for part in column["jsonPath"].split(".")[2:]:
            assert part in node.get("properties", {}), f"{column['jsonPath']} is not in the status schema"
            node = node["properties"][part]
        assert node["type"] == column["type"], column


def test_undeclared_finds_what_the_api_server_would_prune():
    schema = status_schema()
    written = {"progress": {"stage": "fitting", "rowsComputed": 0.5},
               "conditions": [{"type": "Running", "reason": "x", "extra": 1}], "waitingFor": None}
    assert undeclared(written, schema) == ["status.progress.rowsComputed", "status.conditions[0].extra"]


class RecordingApi(FakeApi):
    def __init__(self):
        super().__init__()
        self.status_patches: list[dict] = []

    def patch_status(self, api_version, kind, namespace, name, status):
        self.status_patches.append(dict(status))
        return super().patch_status(api_version, kind, namespace, name, status)


def _drive_operator_through_every_state() -> RecordingApi:
    api = RecordingApi()
    api.objects[("DaskCluster", "default", DASK)] = {  # a foreign owner first: waitingFor is written
        "apiVersion": "kubernetes.dask.org/v1", "kind": "DaskCluster",
        "metadata": {"name": DASK, "namespace": "default", "ownerReferences": [{"uid": "old-uid"}]},
    }
    api.add_resource(NAME, SPEC)
    now = iter(f"2030-01-01T00:00:{second:02d}Z" for second in range(60))

    def step():
        reconcile(api.resource(NAME), api, now=lambda: next(now))

    step()
    api.objects.pop(("DaskCluster", "default", DASK))
    step()  # waitingFor removed (null), our DaskCluster created
    api.set_status("DaskCluster", DASK, {"phase": "Running"})
    api.objects[("Pod", "default", f"{DASK}-scheduler")] = {
        "kind": "Pod", "metadata": {"name": f"{DASK}-scheduler", "labels": {"dask.org/cluster-name": DASK,
                                                                          "dask.org/component": "scheduler"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    step()
    api.set_status("Job", JOB, {"active": 1, "startTime": "2030-01-01T01:00:00Z"})
    step()
    api.set_status("Job", JOB, {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}],
                                "startTime": "2030-01-01T01:00:00Z", "completionTime": "2030-01-01T02:00:00Z"})
    step()
    invalid = RecordingApi()
    invalid.add_resource(NAME, {**SPEC, "nClusters": 0})
    reconcile(invalid.resource(NAME), invalid)
    api.status_patches += invalid.status_patches
    return api


def test_every_key_the_operator_writes_is_in_the_crd():
    api = _drive_operator_through_every_state()
    written = {key for patch in api.status_patches for key in patch}
    assert written == set(OPERATOR_STATUS_KEYS), "the drive should reach every operator-owned key"
    assert any(patch.get("waitingFor") is None and "waitingFor" in patch for patch in api.status_patches)
    schema = status_schema()
    for patch in api.status_patches:
        assert undeclared(patch, schema) == [], patch


def test_every_key_the_runner_writes_is_in_the_crd():
    sent: list[dict] = []
    progress = Progress(sinks=[KubernetesStatusSink(sent.append, min_interval=0.0)])
    progress.stage("reading", files_total=2)
    progress.file_read(rows=10)
    progress.stage("fitting", max_iter=3)
    progress.iteration(1, inertia=12.5, shift=0.25, rows_computed=0.5)
    progress.stage("writing", centroids_total=4)
    progress.centroids_written(4, rows=10)
    progress.result(SUMMARY)
    progress.close()
    assert {key for patch in sent for key in patch} == set(RUNNER_STATUS_KEYS)
    progress_keys = {key for patch in sent for key in patch.get("progress", {})}
    assert progress_keys == {"stage", "iteration", "maxIter", "inertia", "centroidShift", "rowsRead", "rowsWritten"}
    result_keys = {key for patch in sent for key in patch.get("result", {})}
    assert result_keys == {"nRows", "nIter", "inertia", "converged", "manifest", "centroids", "clusterSizes",
                           "imbalance", "largestShare", "boundaryShare", "boundaryMargin"}
    schema = status_schema()
    for patch in sent:
        assert undeclared(patch, schema) == [], patch


def test_a_key_outside_the_model_cannot_be_written():
    with pytest.raises(ValidationError, match="rowsComputed"):
        ProgressStatus(stage="fitting", rowsComputed=0.5)
    api = RecordingApi()
    api.add_resource(NAME, SPEC)
    run = _Pass(api.resource(NAME), api, lambda: "2030-01-01T00:00:00Z", None)
    run.status["lastError"] = "boom"
    with pytest.raises(ValidationError, match="lastError"):
        _finish(run)
    assert api.status_patches == []


def test_wire_drops_nones_unless_they_are_removals():
    status = OperatorStatus(phase="Running", waiting_for=None)
    assert wire(status) == {"phase": "Running"}
    assert wire(status, removals=True) == {"phase": "Running", "waitingFor": None}


def test_docs_status_table_names_every_key_with_its_owner():
    text = (Path(__file__).resolve().parents[1] / "docs" / "operator.md").read_text(encoding="utf-8")
    section = text.split("## Status", 1)[1].split("\n## ", 1)[0]
    owners = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 3 and cells[1] in ("operator", "runner"):
            for key in re.findall(r"`(\w+)(?:\[\])?`", cells[0]):
                owners[key] = cells[1]
    expected = {**{key: "operator" for key in OPERATOR_STATUS_KEYS}, **{key: "runner" for key in RUNNER_STATUS_KEYS}}
    assert owners == expected
