"""Validate manifests against a CRD's openAPIV3Schema offline, as kubectl would.

`jsonschema` understands the OpenAPI subset Kubernetes uses; this module adds
what the API server does beyond it:
- `nullable: true` also allows null;
- unknown fields are errors (kubectl's default `--validate=strict` field
  validation), except under `x-kubernetes-preserve-unknown-fields: true`;
- `metadata` is ObjectMeta: only `name`, `namespace`, `labels`, `annotations`
  (and a few more) are checked loosely here.
CEL rules (`x-kubernetes-validations`) are not evaluated.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml


def load_crd(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def version_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    for item in crd["spec"]["versions"]:
        if item["name"] == version:
            return item["schema"]["openAPIV3Schema"]
    raise KeyError(f"CRD {crd['metadata']['name']} has no version {version}")


def _strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _strict(value) for key, value in node.items()}
    if node.get("nullable") is True and "type" in node:
        node["type"] = [node["type"], "null"]
    closed = (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    )
    if closed:
        node["additionalProperties"] = False
    return node


def strict_validator(openapi_schema: dict[str, Any]) -> jsonschema.Draft7Validator:
    schema = _strict(copy.deepcopy(openapi_schema))
    properties = schema.setdefault("properties", {})
    properties["metadata"] = {"type": "object"}  # ObjectMeta is validated by the API server itself
    return jsonschema.Draft7Validator(schema)


def errors_of(validator: jsonschema.Draft7Validator, manifest: dict[str, Any]) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(manifest)
    ]


def cel_failures(openapi_schema: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """Messages of the CEL rules (x-kubernetes-validations) the manifest breaks on create.

    Evaluated with cel-python (the API server uses cel-go; same language). On
    create there is no old object, so transition rules see oldSelf == self.
    """
    import celpy
    from celpy.adapter import json_to_cel

    env = celpy.Environment()
    failures: list[str] = []

    def visit(schema: dict[str, Any], value: Any, path: str) -> None:
        for rule in schema.get("x-kubernetes-validations", []):
            activation = {"self": json_to_cel(value), "oldSelf": json_to_cel(value)}
            if not bool(env.program(env.compile(rule["rule"])).evaluate(activation)):
                failures.append(f"{path}: {rule.get('message', rule['rule'])}")
        if isinstance(value, dict):
            for key, child in schema.get("properties", {}).items():
                if key in value:
                    visit(child, value[key], f"{path}.{key}" if path else key)
        elif isinstance(value, list) and "items" in schema:
            for index, item in enumerate(value):
                visit(schema["items"], item, f"{path}[{index}]")

    visit(openapi_schema, manifest, "")
    return failures
