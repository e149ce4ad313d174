"""Validate manifests against a CRD offline, as the API server would (test support only).

`to_json_schema` turns an ``openAPIV3Schema`` into plain JSON Schema (draft 7) and adds
what the API server does beyond the OpenAPI subset `jsonschema` understands:
- ``nullable: true`` also allows null;
- ``x-kubernetes-int-or-string`` allows an integer or a string;
- unknown fields are errors (kubectl's default ``--validate=strict``), except under
  ``x-kubernetes-preserve-unknown-fields: true``;
- OpenAPI v3.0's boolean ``exclusiveMinimum``/``exclusiveMaximum`` become draft-7 bounds.
At the root, `apiVersion`, `kind` and `metadata` are always allowed, declared or not;
`metadata` is ObjectMeta, validated by the API server itself, and checked only as an
object. CEL rules (``x-kubernetes-validations``) are evaluated by `cel_failures`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

import celpy
import jsonschema
import yaml
from celpy.adapter import json_to_cel

from kmeans_partition.operator.crd import build_crd

ROOT_FIELDS = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}


def load_crd(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def version_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of one version of `crd`."""
    for item in crd["spec"]["versions"]:
        if item["name"] == version:
            return item["schema"]["openAPIV3Schema"]
    raise KeyError(f"CRD {crd['metadata']['name']} has no version {version}")


def to_json_schema(node: Any) -> Any:
    """An openAPIV3Schema -> plain JSON Schema (see the module docstring)."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = to_json_schema(value)
        elif not key.startswith("x-kubernetes-") and key != "nullable":
            out[key] = copy.deepcopy(value)
    for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if out.get(key) is True:
            out[key] = out.pop(bound)  # JSON Schema draft 7: the bound itself
        elif out.get(key) is False:
            del out[key]
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        out["type"] = [*(out["type"] if isinstance(out["type"], list) else [out["type"]]), "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if node.get("type") == "object" and "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)  # mirrors the API server's strict field validation
    return out


def validate_resource(manifest: dict[str, Any], crd: Optional[dict[str, Any]] = None) -> list[str]:
    """Schema errors of a manifest for `crd`'s first version (default: the generated
    KMeansPartition CRD), as ``<dotted.path>: <message>``; empty when valid. No CEL here."""
    crd = crd or build_crd()
    schema = to_json_schema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    for field, node in ROOT_FIELDS.items():  # the API server allows these whether declared or not
        schema.setdefault("properties", {}).setdefault(field, node)
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path)))
    ]


def cel_failures(openapi_schema: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """Messages of the CEL rules (x-kubernetes-validations) the manifest breaks on create.

    Evaluated with cel-python (the API server uses cel-go; same language). On
    create there is no old object, so transition rules see oldSelf == self.
    """
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
