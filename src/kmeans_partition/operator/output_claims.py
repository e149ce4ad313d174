"""One active resource per output location: which other KMeansPartition holds an `outputPath`.

Paths are compared normalised (scheme lower-cased and aliases folded: s3a/s3n -> s3, gcs -> gs,
az/abfss -> abfs; fsspec cache chains dropped; repeated and trailing slashes dropped), and
overlap when equal or one lies inside the other on a ``/`` boundary. Two paths naming
different explicit ``storage.options.endpoint_url`` values are different stores; when either
leaves it unset (credentials env may set it) they are taken as the same store.

Another resource holds the path when it is *active* (not Succeeded/Failed, not being deleted)
and either has started (``status.daskCluster`` set: its children exist) or is older (by
creationTimestamp, then namespace/name). The age rule decides between two new resources the
same way in both passes, so they cannot both start; a started one keeps the path whatever its age.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Optional

from kmeans_partition.spec import SpecError, parse_resource_spec

REASON = "OutputPathInUse"
TERMINAL_PHASES = ("Succeeded", "Failed")
SCHEME_ALIASES = {"s3a": "s3", "s3n": "s3", "gcs": "gs", "az": "abfs", "abfss": "abfs"}
_CHAIN = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*::)+")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def normalise(path: str) -> str:
    """`path` in the form used for comparison (see module docstring)."""
    path = _CHAIN.sub("", path.strip())
    match = _SCHEME.match(path)
    scheme, rest = (match.group(1).lower(), path[match.end():]) if match else ("", path)
    scheme = SCHEME_ALIASES.get(scheme, scheme)
    rest = re.sub(r"/{2,}", "/", rest).rstrip("/")
    return f"{scheme}://{rest}" if scheme else rest


def overlaps(a: str, b: str) -> bool:
    """Equal, or one inside the other (normalised, on '/' boundaries)."""
    a, b = normalise(a), normalise(b)
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _endpoint(spec) -> Optional[str]:
    value = (spec.storage.options or {}).get("endpoint_url")
    return str(value).rstrip("/").lower() if value else None


def _same_store(a, b) -> bool:
    ea, eb = _endpoint(a), _endpoint(b)
    return ea is None or eb is None or ea == eb


def _active(body: Mapping[str, Any]) -> bool:
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    return not meta.get("deletionTimestamp") and status.get("phase") not in TERMINAL_PHASES


def _age_key(body: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = body.get("metadata") or {}
    return meta.get("creationTimestamp") or "", meta.get("namespace") or "", meta.get("name") or ""


def holder(body: Mapping[str, Any], spec, others: Iterable[Mapping[str, Any]]) -> Optional[tuple[str, str]]:
    """(namespace/name, its outputPath) of a resource that holds an output overlapping `body`'s, or None."""
    uid = (body.get("metadata") or {}).get("uid")
    for other in sorted(others, key=_age_key):
        meta = other.get("metadata") or {}
        if meta.get("uid") == uid or not _active(other):
            continue
        started = bool((other.get("status") or {}).get("daskCluster"))
        if not started and _age_key(other) >= _age_key(body):
            continue
        try:
            other_spec = parse_resource_spec(dict(other.get("spec") or {}))
        except SpecError:
            continue  # it fails InvalidSpec and never starts
        if overlaps(spec.output_path, other_spec.output_path) and _same_store(spec, other_spec):
            return f"{meta.get('namespace')}/{meta.get('name')}", other_spec.output_path
    return None


def in_use_message(spec, held_by: tuple[str, str]) -> str:
    name, path = held_by
    return (f"outputPath: {spec.output_path} overlaps the outputPath {path} of KMeansPartition {name}, which "
            "is active: one writer per output. Re-create this resource once that one has finished, or choose "
            "another outputPath")
