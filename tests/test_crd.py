"""The CRD: generated from the spec model, structural, and validating manifests."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from kmeans_partition.operator import crd as crd_module
from kmeans_partition.spec import (
    API_GROUP, API_VERSION, KIND, PLURAL, QUANTITY_PATTERN, SHORT_NAME, parse_resource_spec,
)

from k8s.crd_validation import validate_resource

ROOT = Path(__file__).resolve().parents[1]
CRD_FILE = ROOT / "crds" / crd_module.CRD_FILENAME

GOOD = {
    "apiVersion": f"{API_GROUP}/{API_VERSION}",
    "kind": KIND,
    "metadata": {"name": "docs", "namespace": "default"},
    "spec": {
        "nClusters": 16,
        "idField": "id",
        "embeddingField": "embedding",
        "inputPath": ["s3://bucket/in/"],
        "outputPath": "s3://bucket/out/",
        "cluster": {
            "workers": 2,
            "gpusPerWorker": 1,
            "resources": {"worker": {"limits": {"memory": "8Gi", "cpu": 4}}},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "env": [{"name": "X", "value": "1"}],
        },
        "engine": "raft",
        "storage": {"secretRef": {"name": "s3-creds"}, "options": {"endpoint_url": "http://minio:9000"}},
        "ttlSecondsAfterFinished": None,
        "cleanupPolicy": "OnSuccess",
    },
}


def _openapi(crd: dict) -> dict:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _with(path: str, value) -> dict:
    manifest = copy.deepcopy(GOOD)
    node = manifest
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return manifest


def test_committed_crd_matches_the_model():
    assert CRD_FILE.exists(), f"{CRD_FILE} missing: run python -m kmeans_partition.operator.crd"
    assert CRD_FILE.read_text(encoding="utf-8") == crd_module.render_crd(), (
        "crds/ drifted from spec.py/status.py: regenerate with python -m kmeans_partition.operator.crd"
    )


def test_write_crd_round_trips(tmp_path):
    written = crd_module.write_crd(tmp_path / "crd.yaml")
    assert yaml.safe_load(written.read_text()) == crd_module.build_crd()


def test_module_cli_help_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        crd_module.main(["--help"])
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
    crd_module.main([str(tmp_path / "out.yaml")])
    assert (tmp_path / "out.yaml").read_text(encoding="utf-8") == crd_module.render_crd()


def test_names_scope_and_version():
    crd = crd_module.build_crd()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{PLURAL}.{API_GROUP}"
    assert spec["group"] == API_GROUP and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == KIND and spec["names"]["plural"] == PLURAL
    assert spec["names"]["shortNames"] == [SHORT_NAME]
    (version,) = spec["versions"]
    assert version["name"] == API_VERSION and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert columns["Status"]["jsonPath"] == ".status.phase"
    assert columns["Workers"]["jsonPath"] == ".spec.cluster.workers"
    assert [n for n, c in columns.items() if c.get("priority") == 1] == ["Output", "Job", "Engine"]
    assert columns["Engine"]["jsonPath"] == ".status.result.engine.chosen"
    assert list(columns)[:5] == ["Status", "Iteration", "Inertia", "Workers", "Age"]


def _walk(node: dict, path: str):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural():
    schema = _openapi(crd_module.build_crd())
    for path, node in _walk(schema, "<root>"):
        typed = node.get("type") or node.get("x-kubernetes-int-or-string") or node.get(
            "x-kubernetes-preserve-unknown-fields"
        )
        assert typed, f"{path} has no type"
        for forbidden in ("$ref", "$defs", "title", "oneOf", "allOf", "not"):
            assert forbidden not in node, f"{path} has {forbidden}"
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), f"{path}: anyOf only allowed for int-or-string"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("additionalProperties") is not False, path
        for exclusive in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(exclusive, False), bool), f"{path}: OpenAPI v3.0 {exclusive} is a boolean"
        if "default" in node:
            assert node["default"] is not None, path


def test_schema_bounds_and_rules():
    spec = _openapi(crd_module.build_crd())["properties"]["spec"]
    props = spec["properties"]
    assert props["nClusters"]["minimum"] == 1
    assert props["cluster"]["properties"]["gpusPerWorker"]["minimum"] == 0
    assert props["cluster"]["properties"]["gpusPerWorker"]["maximum"] == 16
    assert props["cluster"]["properties"]["workers"]["maximum"] == 1000
    assert props["cluster"]["properties"]["tls"] == {"type": "boolean", "default": True,
                                                     "description": props["cluster"]["properties"]["tls"]["description"]}
    assert props["engine"]["enum"] == ["auto", "dask", "raft"]
    assert props["cleanupPolicy"]["enum"] == ["Always", "OnSuccess", "Never"]
    assert props["inputPath"]["type"] == "array" and props["inputPath"]["minItems"] == 1
    assert set(spec["required"]) == {"nClusters", "idField", "embeddingField", "inputPath", "outputPath"}
    rules = {r["rule"]: r["message"] for r in spec["x-kubernetes-validations"]}
    assert "delete and recreate" in rules["self == oldSelf"]
    assert any("raft" in rule and "gpusPerWorker" in rule for rule in rules)
    assert any("outputPath" in rule and "inputPath" in rule for rule in rules)


def test_good_manifest_validates_and_parses():
    assert validate_resource(GOOD) == []
    parsed = parse_resource_spec(GOOD["spec"])
    assert parsed.cluster.gpus_per_worker == 1 and parsed.input_paths == ["s3://bucket/in/"]


@pytest.mark.parametrize(
    "path,value,expect",
    [
        ("spec.nClusters", 0, "spec.nClusters"),
        ("spec.oversamplingFactor", 0, "spec.oversamplingFactor"),
        ("spec.cluster.gpusPerWorker", -1, "spec.cluster.gpusPerWorker"),
        ("spec.engine", "faiss", "spec.engine"),
        ("spec.cleanupPolicy", "Sometimes", "spec.cleanupPolicy"),
        ("spec.inputPath", [], "spec.inputPath"),
        ("spec.inputPath", "s3://bucket/in/", "spec.inputPath"),
        ("spec.storage.secretRef", {}, "spec.storage.secretRef"),
        ("spec.cluster.resources.worker.limits", {"memory": ["8Gi"]}, "spec.cluster.resources.worker.limits.memory"),
        ("spec.unknownField", 1, "spec"),
        ("spec.cluster.resources.worker.limits", {"memory": "8 GB"}, "spec.cluster.resources.worker.limits.memory"),
        ("spec.cluster.resources.runner.requests", {"cpu": "two"}, "spec.cluster.resources.runner.requests.cpu"),
        ("spec.schedulerAddress", "tcp://elsewhere:8786", "spec"),
        ("spec.storageOptions", {"anon": True}, "spec"),
        ("spec.cluster.workers", 1001, "spec.cluster.workers"),  # universal maxima (spec.py MAX_*)
        ("spec.cluster.gpusPerWorker", 17, "spec.cluster.gpusPerWorker"),
        ("spec.cluster.readyTimeoutSeconds", 86401, "spec.cluster.readyTimeoutSeconds"),
        ("spec.cluster.tls", "yes", "spec.cluster.tls"),
    ],
)
def test_bad_manifests_are_rejected(path, value, expect):
    errors = validate_resource(_with(path, value))
    assert errors, f"{path}={value!r} accepted"
    assert any(err.startswith(f"{expect}:") for err in errors), errors


def test_missing_required_field_is_rejected():
    manifest = copy.deepcopy(GOOD)
    del manifest["spec"]["outputPath"]
    assert any("outputPath" in err for err in validate_resource(manifest))


def _rule_verdicts(old_spec, new_spec) -> dict[str, bool]:
    """Evaluate every CEL rule of spec with cel-python (the API server uses cel-go; same language)."""
    import celpy
    from celpy.adapter import json_to_cel

    env = celpy.Environment()
    spec = _openapi(crd_module.build_crd())["properties"]["spec"]
    activation = {"self": json_to_cel(new_spec), "oldSelf": json_to_cel(old_spec)}
    return {
        r["message"]: bool(env.program(env.compile(r["rule"])).evaluate(activation))
        for r in spec["x-kubernetes-validations"]
    }


def _failing_rules(old_spec, new_spec) -> list[str]:
    return [message for message, ok in _rule_verdicts(old_spec, new_spec).items() if not ok]


def test_cel_rules_accept_the_good_spec():
    assert _failing_rules(GOOD["spec"], GOOD["spec"]) == []


@pytest.mark.parametrize(
    "change,expect",
    [
        ({"nClusters": 8}, "immutable"),
        ({"engine": "raft", "cluster": {"gpusPerWorker": 0}}, "raft"),
        ({"engine": "raft", "cluster": {}}, "raft"),
        ({"outputPath": "s3://bucket/in/"}, "outputPath must differ"),
        ({"outputPath": "s3://bucket/in"}, "outputPath must differ"),
        ({"outputPath": "s3://bucket/in/out"}, "outputPath must differ"),  # output inside an input
        ({"outputPath": "s3://bucket/in/deep/out/"}, "outputPath must differ"),
        ({"outputPath": "s3://bucket"}, "outputPath must differ"),  # an input inside the output
        ({"inputPath": ["s3://other/", "s3://bucket/out/part/"]}, "outputPath must differ"),
        ({"outputPath": "s3://bkt/out*"}, "glob characters"),
        ({"outputPath": "s3://bkt/run[1]"}, "glob characters"),
        ({"outputPath": "s3://bkt/{a,b}"}, "glob characters"),
        ({"outputPath": "s3://bkt/out?"}, "glob characters"),
        ({"outputPath": "/data/out"}, "remote URIs"),
        ({"outputPath": "file:///data/out"}, "remote URIs"),
        ({"inputPath": ["s3://bucket/in/", "local:///data/in"]}, "remote URIs"),
        ({"inputPath": ["memory://in"]}, "remote URIs"),
        ({"outputPath": "s3://user:pass@bucket/out"}, "credentials"),
        ({"inputPath": ["https://user:token@host/in/data.parquet"]}, "credentials"),
    ],
)
def test_cel_rules_reject(change, expect):
    new_spec = {**GOOD["spec"], **change}
    old_spec = GOOD["spec"] if expect == "immutable" else new_spec
    failing = _failing_rules(old_spec, new_spec)
    assert len(failing) == 1 and expect in failing[0], failing


@pytest.mark.parametrize("input_path, output_path", [
    (["s3://bucket/in"], "s3://bucket/input-clusters/"),  # a shared prefix, not a shared directory
    (["s3://bucket/in/"], "s3://bucket/out"),
    (["gs://data/a", "gs://data/b/"], "gs://data/ab"),
    (["simplecache::s3://bucket/in/"], "abfs://container@account.dfs.core.windows.net/out"),  # no password
])
def test_cel_allows_sibling_paths(input_path, output_path):
    spec = {**GOOD["spec"], "inputPath": input_path, "outputPath": output_path}
    assert _failing_rules(spec, spec) == []


def test_cel_allows_cpu_engines_without_gpus():
    spec = {**GOOD["spec"], "engine": "dask", "cluster": {"gpusPerWorker": 0}}
    assert _failing_rules(spec, spec) == []


def test_resource_schema_does_not_offer_runner_only_fields():
    props = _openapi(crd_module.build_crd())["properties"]["spec"]["properties"]
    assert "schedulerAddress" not in props and "storageOptions" not in props
    assert "storage" in props and "options" in props["storage"]["properties"]


def test_quantities_carry_the_kubernetes_pattern():
    resources = _openapi(crd_module.build_crd())["properties"]["spec"]["properties"]["cluster"]["properties"][
        "resources"]["properties"]
    for part in ("scheduler", "worker", "runner"):
        for kind in ("requests", "limits"):
            node = resources[part]["properties"][kind]["additionalProperties"]
            assert node["x-kubernetes-int-or-string"] is True and node["pattern"] == QUANTITY_PATTERN
    assert validate_resource(_with("spec.cluster.resources.worker.limits", {"memory": "8Gi", "cpu": 2})) == []
