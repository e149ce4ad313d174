"""GPU fields of the resource: cluster.gpu and distancePrecision, in the model, the CRD schema and its CEL."""

from __future__ import annotations

import copy
import re

import pytest

from k8s.crd_validation import validate_resource
from kmeans_partition.operator import crd as crd_module
from kmeans_partition.spec import (
    API_GROUP, API_VERSION, DEVICE_MEMORY_PATTERN, KIND, SpecError, parse_job_spec, parse_resource_spec,
)

SPEC = {
    "nClusters": 16, "idField": "id", "embeddingField": "embedding",
    "inputPath": ["s3://bucket/in/"], "outputPath": "s3://bucket/out/",
    "cluster": {"workers": 2, "gpusPerWorker": 2, "gpu": {"rmmPoolSize": "40Gi", "deviceMemoryLimit": "0.8"}},
    "distancePrecision": "tf32",
}


def _manifest(spec: dict) -> dict:
    return {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "metadata": {"name": "g"}, "spec": spec}


def _failing_rules(spec: dict) -> list[str]:
    """CEL rules of spec that fail for `spec` (cel-python; the API server runs cel-go, same language)."""
    import celpy
    from celpy.adapter import json_to_cel

    env = celpy.Environment()
    rules = crd_module.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "x-kubernetes-validations"]
    activation = {"self": json_to_cel(spec), "oldSelf": json_to_cel(spec)}
    return [r["message"] for r in rules if not bool(env.program(env.compile(r["rule"])).evaluate(activation))]


def test_defaults():
    spec = parse_resource_spec({k: v for k, v in SPEC.items() if k not in ("cluster", "distancePrecision")})
    gpu = spec.cluster.gpu
    assert (gpu.rmm_async, gpu.rmm_pool_size, gpu.device_memory_limit, gpu.shm_size) == (True, None, "0.8", "1Gi")
    assert spec.distance_precision == "float32" and spec.job_spec().distance_precision == "float32"


def test_the_runner_gets_the_precision():
    assert parse_resource_spec(SPEC).job_spec().distance_precision == "tf32"
    with pytest.raises(SpecError, match="distance_precision"):
        parse_job_spec({"n_clusters": 2, "id_field": "i", "embedding_field": "e", "input_path": "a",
                        "output_path": "b", "distance_precision": "bf16"})


def test_the_crd_accepts_the_gpu_fields_and_cel_passes():
    assert validate_resource(_manifest(SPEC)) == []
    assert _failing_rules(SPEC) == []


@pytest.mark.parametrize("field, value", [
    ("deviceMemoryLimit", "40 GB"), ("deviceMemoryLimit", "1.5"), ("rmmPoolSize", "40GB"), ("rmmPoolSize", "-1"),
    ("rmmAsync", "maybe"), ("shmSize", "1 Gi"),
])
def test_bad_gpu_values_are_refused_by_schema_and_model(field, value):
    spec = copy.deepcopy(SPEC)
    spec["cluster"]["gpu"][field] = value
    errors = validate_resource(_manifest(spec))
    assert any(err.startswith(f"spec.cluster.gpu.{field}:") for err in errors), errors
    with pytest.raises(SpecError, match=f"cluster.gpu.{field}"):
        parse_resource_spec(spec)


@pytest.mark.parametrize("value, ok", [
    ("0.8", True), ("1.0", True), (".25", True), ("0", True), ("40Gi", True), ("1.5Gi", True), ("40G", True),
    ("123456789", True), ("1.5", False), ("2.0", False), ("40GB", False), ("40m", False), ("", False)])
def test_device_memory_pattern(value, ok):
    assert bool(re.fullmatch(DEVICE_MEMORY_PATTERN, value)) is ok


def test_tf32_needs_gpu_workers():
    cpu = {**SPEC, "cluster": {"workers": 2}}
    (failing,) = _failing_rules(cpu)
    assert "distancePrecision tf32 only changes GPU workers" in failing
    assert _failing_rules({**cpu, "distancePrecision": "float32"}) == []
    assert _failing_rules({k: v for k, v in cpu.items() if k != "distancePrecision"}) == []


def test_the_schema_documents_the_fields():
    props = crd_module.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]
    gpu = props["cluster"]["properties"]["gpu"]
    assert gpu["default"] == {} and set(gpu["properties"]) == {"rmmAsync", "rmmPoolSize", "deviceMemoryLimit", "shmSize"}
    assert gpu["properties"]["deviceMemoryLimit"]["pattern"] == DEVICE_MEMORY_PATTERN
    assert props["distancePrecision"]["enum"] == ["float32", "tf32"] and props["distancePrecision"]["default"] == "float32"
    assert "TF32" in props["distancePrecision"]["description"]
