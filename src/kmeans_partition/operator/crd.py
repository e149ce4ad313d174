"""The KMeansPartition CustomResourceDefinition, generated from the spec model.

`build_crd()` turns pydantic's JSON schema of `KMeansPartitionSpec` (camelCase
aliases) into a Kubernetes *structural* ``openAPIV3Schema``: ``$ref`` inlined,
``title``/``$defs`` dropped, ``anyOf [X, null]`` -> ``X`` + ``nullable: true``,
``anyOf [string, integer]`` (resource quantities) -> ``x-kubernetes-int-or-string``,
free-form objects -> ``x-kubernetes-preserve-unknown-fields``, ``additionalProperties:
false`` dropped (the API server prunes unknown fields), model defaults kept and
nested objects defaulted to ``{}`` so their own defaults materialise.

``inputPath`` is ``str | list[str]`` in the model, but a structural schema needs one
type per node and CEL cannot see an untyped (preserve-unknown-fields) node, so the
output-differs-from-input rule would be impossible. The CRD therefore declares
``inputPath`` as a **non-empty array of strings** (a single path is a one-item
list); the model still accepts a plain string for the local CLI and spec files.

``schedulerAddress`` and ``storageOptions`` (runner fields of `JobSpec`) are left out
of the schema, so the API server prunes them: a spec address would make the runner
ignore the operator's DaskCluster (the runner prefers it over env
``DASK_SCHEDULER_ADDRESS``), and credentials must come only from
``storage.secretRef`` (non-secret options go in ``storage.options``). The model
rejects both as well (``InvalidSpec``), for manifests that reach the operator another way.

Resource quantities (``int-or-string``) carry the Kubernetes quantity ``pattern``
(checked by the API server against string values only), so ``memory: 8 GB`` is refused.

CRD-only bounds (``maxLength``/``maxItems`` on paths) keep the CEL rules' estimated
cost under the API server's budget. CEL rules on ``spec``: immutable after creation,
``engine: raft`` and ``distancePrecision: tf32`` need ``cluster.gpusPerWorker >= 1``, ``outputPath``
neither equal to, inside, nor containing any ``inputPath`` (prefix tests on '/' boundaries; globs in
inputs are left to the runner's own check), no glob character in ``outputPath``,
remote URIs only, no ``user:pass@`` in a path. ``storage.options`` is free-form here
(the allowlist of non-secret keys is the model's, so a violation ends ``InvalidSpec``).

The status schema is generated the same way from `KMeansPartitionStatus`
(``kmeans_partition.status``), without defaults (status is written, never defaulted)
and without ``nullable`` (a null in a status merge patch removes the key). Printer
columns and the status subresource are declared here.

``python -m kmeans_partition.operator.crd [PATH]`` writes the YAML file (default
``crds/<plural>.<group>.yaml``); ``tests/test_crd.py`` fails when it drifts.
"""

from __future__ import annotations

import copy
import argparse
from pathlib import Path
from typing import Any, Optional

import yaml

from kmeans_partition.spec import (
    API_GROUP, API_VERSION, GLOB_CHARACTERS, KIND, LOCAL_URI_PATTERN, PLURAL, REMOTE_URI_PATTERN, SHORT_NAME,
    Engine, KMeansPartitionSpec,
)
from kmeans_partition.status import KMeansPartitionStatus

CRD_NAME = f"{PLURAL}.{API_GROUP}"
CRD_FILENAME = f"{CRD_NAME}.yaml"
MAX_PATH_LENGTH = 4096
MAX_INPUT_PATHS = 1000

_DROP_KEYS = {"title", "$defs"}
# JobSpec fields the resource must not offer (the model rejects them too).
RESOURCE_ONLY_OMITTED = ("schedulerAddress", "storageOptions")

def _slashed(path: str) -> str:
    """CEL: `path` with exactly one trailing '/' added when it has none."""
    return f"({path}.endsWith('/') ? {path} : {path} + '/')"


def _remote(path: str) -> str:
    """CEL: `path` is a remote URI (not file://, local://, memory://, nor a plain path)."""
    return f"({path}.matches('{REMOTE_URI_PATTERN}') && !{path}.matches('{LOCAL_URI_PATTERN}'))"


def _password_in(path: str) -> str:
    """CEL: `path` carries ``user:pass@`` in its authority."""
    return f"{path}.matches('^[^/?#]*://[^/?#@]*:[^/?#@]*@')"


_GLOB_LIST = "[" + ", ".join(f"'{char}'" for char in GLOB_CHARACTERS) + "]"

SPEC_RULES = [
    {
        "rule": "self == oldSelf",
        "message": "spec is immutable: delete and recreate the KMeansPartition to re-run it",
    },
    {
        "rule": f"!has(self.engine) || self.engine != '{Engine.raft.value}' || "
        "(has(self.cluster) && has(self.cluster.gpusPerWorker) && self.cluster.gpusPerWorker >= 1)",
        "message": "engine raft (cuML multi-GPU) needs GPU workers: set cluster.gpusPerWorker >= 1",
        "fieldPath": ".engine",
    },
    {
        "rule": "!has(self.distancePrecision) || self.distancePrecision != 'tf32' || "
        "(has(self.cluster) && has(self.cluster.gpusPerWorker) && self.cluster.gpusPerWorker >= 1)",
        "message": "distancePrecision tf32 only changes GPU workers: set cluster.gpusPerWorker >= 1 or use float32",
        "fieldPath": ".distancePrecision",
    },
    {
        # Both paths with one trailing '/', then a prefix test either way: equal paths, the
        # output inside an input and an input inside the output all fail; 's3://b/in' vs
        # 's3://b/input' does not (the '/' boundary).
        "rule": "!self.inputPath.exists(p, "
        f"{_slashed('p')}.startsWith({_slashed('self.outputPath')}) || "
        f"{_slashed('self.outputPath')}.startsWith({_slashed('p')}))",
        "message": "outputPath must differ from every inputPath and neither may contain the other",
        "fieldPath": ".outputPath",
    },
    {
        "rule": f"!{_GLOB_LIST}.exists(c, self.outputPath.contains(c))",
        "message": "outputPath may not contain glob characters (* ? [ ] { }): overwrite deletes from one exact location",
        "fieldPath": ".outputPath",
    },
    {
        "rule": f"{_remote('self.outputPath')} && self.inputPath.all(p, {_remote('p')})",
        "message": "outputPath and every inputPath must be remote URIs (e.g. s3://bucket/path): the pods share no "
        "filesystem",
        "fieldPath": ".outputPath",
    },
    {
        "rule": f"!{_password_in('self.outputPath')} && !self.inputPath.exists(p, {_password_in('p')})",
        "message": "paths may not carry credentials (user:pass@): use storage.secretRef",
        "fieldPath": ".outputPath",
    },
]

INPUT_PATH_SCHEMA = {
    "type": "array",
    "description": "Files, directories or globs to read; remote fsspec URIs (s3://, gs://, abfs://, ...). "
    "Always a list in the resource (one item for a single path).",
    "minItems": 1,
    "maxItems": MAX_INPUT_PATHS,
    "items": {"type": "string", "minLength": 1, "maxLength": MAX_PATH_LENGTH},
}


def _without_nullable(node: Any) -> Any:
    """Drop ``nullable`` everywhere: in ``status`` a null only ever means "remove this key"
    (JSON merge patch), and a null stored under a non-nullable field is pruned anyway."""
    if isinstance(node, list):
        return [_without_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {key: _without_nullable(value) for key, value in node.items() if key != "nullable"}


def status_schema() -> dict[str, Any]:
    """`status`, from `KMeansPartitionStatus`: no defaults, nothing nullable, only
    metav1.Condition's own fields required (each writer patches part of it)."""
    raw = KMeansPartitionStatus.model_json_schema(by_alias=True)
    return _without_nullable(to_structural(raw, raw.get("$defs", {})))


def _resolve_ref(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" not in node:
        return node
    target = defs[node["$ref"].rsplit("/", 1)[-1]]
    merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return _resolve_ref(merged, defs)


def _collapse_any_of(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    variants = [_resolve_ref(v, defs) for v in node["anyOf"]]
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    non_null = [v for v in variants if v.get("type") != "null"]
    nullable = len(non_null) < len(variants)
    types = sorted(v.get("type", "") for v in non_null)
    if len(non_null) == 1:
        out = {**non_null[0], **rest}
    elif types == ["integer", "string"]:
        out = {**rest, "x-kubernetes-int-or-string": True}
        pattern = next((v["pattern"] for v in non_null if v.get("type") == "string" and "pattern" in v), None)
        if pattern:  # quantities: the API server checks a pattern against string values only
            out["pattern"] = pattern
    else:
        raise ValueError(f"cannot express anyOf {types} in a structural schema: {node}")
    if nullable:
        out["nullable"] = True
    return out


def to_structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One pydantic JSON-schema node -> one structural OpenAPI v3 node."""
    node = _resolve_ref(node, defs)
    if "anyOf" in node:
        node = _collapse_any_of(node, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS or (key == "default" and value is None):
            continue
        if key == "properties":
            out[key] = {name: to_structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = to_structural(value, defs)
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound], out[key] = value, True  # OpenAPI v3.0: a boolean beside minimum/maximum
        elif key == "additionalProperties":
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, dict):
                out[key] = to_structural(value, defs)
            # False: structural schemas prune unknown fields instead
        else:
            out[key] = copy.deepcopy(value)
    if not out.get("type") and not out.get("x-kubernetes-int-or-string"):
        if not out.get("x-kubernetes-preserve-unknown-fields"):
            out["x-kubernetes-preserve-unknown-fields"] = True  # Any
    if out.get("type") == "object" and "properties" in out:
        for sub in out["properties"].values():
            defaultable = not sub.get("nullable") and not sub.get("required") and "default" not in sub
            if sub.get("type") == "object" and "properties" in sub and defaultable:
                sub["default"] = {}
    return out


def spec_schema() -> dict[str, Any]:
    """`spec` of the resource, from `KMeansPartitionSpec`."""
    raw = KMeansPartitionSpec.model_json_schema(by_alias=True)
    for field in RESOURCE_ONLY_OMITTED:  # see module docstring
        del raw["properties"][field]
    raw["properties"]["inputPath"] = copy.deepcopy(INPUT_PATH_SCHEMA)  # see module docstring
    schema = to_structural(raw, raw.get("$defs", {}))
    schema["properties"]["outputPath"]["maxLength"] = MAX_PATH_LENGTH
    schema["description"] = "The k-means job and how to run it (see docs/operator.md)."
    schema["x-kubernetes-validations"] = copy.deepcopy(SPEC_RULES)
    return schema


def printer_columns() -> list[dict[str, Any]]:
    return [
        {"name": "Status", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Iteration", "type": "integer", "jsonPath": ".status.progress.iteration"},
        {"name": "Inertia", "type": "number", "jsonPath": ".status.progress.inertia"},
        {"name": "Workers", "type": "integer", "jsonPath": ".spec.cluster.workers"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Output", "type": "string", "jsonPath": ".spec.outputPath", "priority": 1},
        {"name": "Job", "type": "string", "jsonPath": ".status.job", "priority": 1},
        {"name": "Engine", "type": "string", "jsonPath": ".status.result.engine.chosen", "priority": 1},
    ]


def open_api_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": status_schema(),
        },
    }


def build_crd() -> dict[str, Any]:
    """The full CustomResourceDefinition (apiextensions.k8s.io/v1)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "kmeans-partition", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": [SHORT_NAME],
                "categories": ["all"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": printer_columns(),
                    "schema": {"openAPIV3Schema": open_api_schema()},
                }
            ],
        },
    }


def _ordered(node: Any) -> Any:
    """`type` and `description` first in every schema node, for a readable YAML."""
    if isinstance(node, list):
        return [_ordered(item) for item in node]
    if not isinstance(node, dict):
        return node
    front = [key for key in ("name", "type", "description") if key in node]
    return {key: _ordered(node[key]) for key in [*front, *(k for k in node if k not in front)]}


def render_crd() -> str:
    header = (
        "# Generated from kmeans_partition.spec and kmeans_partition.status by kmeans_partition.operator.crd; "
        "do not edit.\n"
    )
    return header + yaml.safe_dump(_ordered(build_crd()), sort_keys=False, default_flow_style=False, width=1000)


def write_crd(path: Optional[Path] = None) -> Path:
    """Write the CRD YAML (default: crds/<plural>.<group>.yaml under the current directory)."""
    target = Path(path) if path else Path("crds") / CRD_FILENAME
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_crd(), encoding="utf-8")
    return target


def main(argv: Optional[list[str]] = None) -> None:
    """`python -m kmeans_partition.operator.crd [PATH]`: write the CRD (default crds/<name>.yaml)."""
    parser = argparse.ArgumentParser(prog="python -m kmeans_partition.operator.crd", description=main.__doc__)
    parser.add_argument("path", nargs="?", type=Path, help=f"where to write (default crds/{CRD_FILENAME})")
    print(write_crd(parser.parse_args(argv).path))


if __name__ == "__main__":
    main()
