"""`kmeans-partition render`: every child the operator would create for one resource, as YAML.

Like ``helm template``, for reviews and GitOps previews. The children come from
`builders.build_children`, the same function the reconcile creates them from. A
resource has no uid before the API server stores it, so the ownerReferences (and the runner's
``KMP_OWNER_UID``) carry `PLACEHOLDER_UID`: the output is a preview, not something to apply. The TLS Secret shows
placeholders where the operator puts the key material it generates for each resource when it
creates the Secret (a comment above it says so): render never prints a private key.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import yaml

from kmeans_partition.operator import builders as B
from kmeans_partition.operator import tls as TLS
from kmeans_partition.spec import SpecError, parse_resource_spec

PLACEHOLDER_UID = "<uid-of-the-KMeansPartition>"
DEFAULT_NAMESPACE = "default"
TLS_COMMENT = (
    "# The operator generates this resource's CA and certificate when it creates this Secret (once;\n"
    "# the CA's private key is not kept). The values below are placeholders: render prints no keys.\n"
)


def render_children(
    resource: Mapping[str, Any],
    namespace: Optional[str] = None,
    name: Optional[str] = None,
    default_image: Optional[str] = None,
) -> list[dict[str, Any]]:
    """The children of `resource` (a KMeansPartition manifest) in creation order.

    `name` defaults to metadata.name; `namespace` to metadata.namespace, else ``default``."""
    meta = resource.get("metadata") or {}
    name = name or meta.get("name")
    if not name:
        raise SpecError("metadata.name", "the manifest has no metadata.name; set it or pass --name")
    namespace = namespace or meta.get("namespace") or DEFAULT_NAMESPACE
    spec = parse_resource_spec(dict(resource.get("spec") or {}))
    children = B.build_children(name, namespace, PLACEHOLDER_UID, spec, default_image)
    return [TLS.with_placeholders(child) for child in children]


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's spec.yaml) as readable ``|`` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def to_yaml(children: list[dict[str, Any]]) -> str:
    """YAML documents, each starting with ``---`` (the TLS Secret's with `TLS_COMMENT` after it)."""
    out = []
    for child in children:
        comment = TLS_COMMENT if child.get("kind") == "Secret" and child.get("type") == TLS.SECRET_TYPE else ""
        out.append("---\n" + comment + yaml.dump(child, Dumper=_BlockDumper, sort_keys=False))
    return "".join(out)
