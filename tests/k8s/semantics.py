"""Pure helpers for the Kubernetes emulator: URL paths, selectors, patches, metadata.

No I/O and no kmock state here; `emulator` calls these.
"""

from __future__ import annotations

import copy
import datetime
import re
from typing import Any, Callable, Optional

import jsonpatch
import jsonpointer
from kmock._internal import dicts, parsing

# Top-level keys a main-resource write never touches through `generation`.
_NON_SPEC_KEYS = {"metadata", "apiVersion", "kind"}


# (group/version, plural): (kind, namespaced, has status subresource)
BUILTIN_RESOURCES = {
    ("v1", "namespaces"): ("Namespace", False, True),
    ("v1", "configmaps"): ("ConfigMap", True, False),
    ("v1", "secrets"): ("Secret", True, False),
    ("v1", "pods"): ("Pod", True, True),
    ("v1", "services"): ("Service", True, True),
    ("v1", "serviceaccounts"): ("ServiceAccount", True, False),
    ("v1", "events"): ("Event", True, False),
    ("batch/v1", "jobs"): ("Job", True, True),
    ("networking.k8s.io/v1", "networkpolicies"): ("NetworkPolicy", True, False),
    ("rbac.authorization.k8s.io/v1", "roles"): ("Role", True, False),
    ("rbac.authorization.k8s.io/v1", "rolebindings"): ("RoleBinding", True, False),
    ("rbac.authorization.k8s.io/v1", "clusterroles"): ("ClusterRole", False, False),
    ("rbac.authorization.k8s.io/v1", "clusterrolebindings"): ("ClusterRoleBinding", False, False),
    ("apiextensions.k8s.io/v1", "customresourcedefinitions"): ("CustomResourceDefinition", False, True),
}


class PatchError(ValueError):
    """A patch could not be applied; `status` is the HTTP code the API server answers."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason = status, reason


def normalise_path(path: str) -> str:
    """Drop trailing and doubled slashes: `/apis/` -> `/apis`, `/` stays `/`."""
    return "/" + "/".join(part for part in path.split("/") if part)


def parse_path(path: str) -> parsing.ParsedPath:
    """Like kmock's parser, plus the cluster-scoped `namespaces` resource itself.

    `/api/v1/namespaces`, `/api/v1/namespaces/NAME` and `/api/v1/namespaces/NAME/status`
    address Namespace objects; longer paths address namespaced resources.
    """
    parts = [part for part in path.split("/") if part]
    if parts[:3] == ["api", "v1", "namespaces"] and (
        len(parts) <= 4 or (len(parts) == 5 and parts[4] in ("status", "finalize"))
    ):
        return parsing.ParsedPath(
            group="",
            version="v1",
            plural="namespaces",
            name=parts[3] if len(parts) > 3 else None,
            subresource=parts[4] if len(parts) > 4 else None,
        )
    return parsing.parse_path(path)


def now_timestamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_SELECTOR_TERM = re.compile(
    r"\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9_.-]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*(?:,|$)"
)


def parse_label_selector(text: Optional[str]) -> Callable[[dict], bool]:
    """A predicate over a labels dict for `a=b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`."""
    checks: list[Callable[[dict], bool]] = []
    position, text = 0, (text or "").strip()
    while position < len(text):
        match = _SELECTOR_TERM.match(text, position)
        if not match or match.end() == position:
            raise ValueError(f"unable to parse label selector {text!r} at {position}")
        position = match.end()
        key, op, value = match["key"], match["op"], match["value"]
        if match["setop"]:
            options = {item.strip() for item in match["values"].split(",") if item.strip()}
            if match["setop"] == "in":
                checks.append(lambda labels, k=key, o=options: labels.get(k) in o)
            else:
                checks.append(lambda labels, k=key, o=options: labels.get(k) not in o)
        elif op in ("=", "=="):
            checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif op == "!=":
            checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif match["neg"]:
            checks.append(lambda labels, k=key: k not in labels)
        else:
            checks.append(lambda labels, k=key: k in labels)
    return lambda labels: all(check(labels or {}) for check in checks)


def parse_field_selector(text: Optional[str]) -> Callable[[dict], bool]:
    """A predicate over an object for `metadata.name=x,status.phase!=y` (dotted paths)."""
    checks: list[Callable[[dict], bool]] = []
    for term in filter(None, (item.strip() for item in (text or "").split(","))):
        match = re.fullmatch(r"([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)", term)
        if not match:
            raise ValueError(f"unable to parse field selector {term!r}")
        field, op, value = match.groups()

        def lookup(obj: dict, keys: list[str] = field.split(".")) -> Any:
            for key in keys:
                obj = obj.get(key) if isinstance(obj, dict) else None
            return "" if obj is None else str(obj)

        if op == "!=":
            checks.append(lambda obj, f=lookup, v=value: f(obj) != v)
        else:
            checks.append(lambda obj, f=lookup, v=value: f(obj) == v)
    return lambda obj: all(check(obj) for check in checks)


def apply_patch(current: dict, patch: Any, content_type: str) -> dict:
    """Apply a PATCH body by its content type; failures raise `PatchError` (422/415/400).

    Strategic merge patches are applied as JSON merge patches (lists are replaced,
    not merged by key): enough for status and metadata patches in tests.
    """
    content_type = (content_type or "").split(";")[0].strip()
    if content_type == "application/json-patch+json":
        if not isinstance(patch, list):
            raise PatchError(400, "BadRequest", "a JSON patch must be a list of operations")
        try:
            return jsonpatch.apply_patch(copy.deepcopy(current), patch)
        except jsonpatch.JsonPatchTestFailed as err:
            raise PatchError(422, "Invalid", f"the server rejected our request: test failed: {err}")
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as err:
            raise PatchError(422, "Invalid", f"the server rejected our request: {err}")
    if content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
        if not isinstance(patch, dict):
            raise PatchError(400, "BadRequest", "a merge patch must be a JSON object")
        try:
            return dict(dicts.merge_patch_dict(current, patch))
        except ValueError as err:
            raise PatchError(422, "Invalid", str(err))
    raise PatchError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}")


def spec_changed(old: dict, new: dict, status_is_subresource: bool) -> bool:
    """Whether `generation` bumps: anything but metadata (and status, when separate) changed."""
    ignored = _NON_SPEC_KEYS | ({"status"} if status_is_subresource else set())
    keys = (set(old) | set(new)) - ignored
    return any(old.get(key) != new.get(key) for key in keys)


def without_volatile_metadata(obj: dict) -> dict:
    """The object minus server-bumped fields, to tell a real change from a no-op write."""
    clone = copy.deepcopy(obj)
    clone.get("metadata", {}).pop("resourceVersion", None)
    clone.get("metadata", {}).pop("generation", None)
    return clone


def owner_uids(obj: dict) -> set[str]:
    return {ref.get("uid") for ref in obj.get("metadata", {}).get("ownerReferences") or [] if ref.get("uid")}


def crd_served_resources(crd: dict) -> list[tuple[tuple[str, str, str], dict[str, Any]]]:
    """((group, version, plural), discovery info) for each served version of a CRD."""
    spec, names = crd.get("spec", {}), crd.get("spec", {}).get("names", {})
    return [
        ((spec["group"], version["name"], names["plural"]), {
            "kind": names["kind"], "namespaced": spec.get("scope", "Namespaced") == "Namespaced",
            "status": "status" in (version.get("subresources") or {}), "singular": names.get("singular"),
            "shortnames": set(names.get("shortNames") or []), "categories": set(names.get("categories") or []),
        })
        for version in spec.get("versions", []) if version.get("served", True)
    ]


def crd_status(crd: dict) -> dict:
    """What the API server reports once a CRD's names are accepted and it is established."""
    spec = crd.get("spec", {})
    return {
        "acceptedNames": spec.get("names", {}),
        "storedVersions": [v["name"] for v in spec.get("versions", []) if v.get("storage")],
        "conditions": [
            {"type": kind, "status": "True", "reason": reason, "lastTransitionTime": now_timestamp()}
            for kind, reason in (("NamesAccepted", "NoConflicts"), ("Established", "InitialNamesAccepted"))
        ],
    }


def merge_write(old: dict, new: dict, status_is_subresource: bool, subresource: Optional[str]) -> dict:
    """Keep server-owned fields; split status from the main resource when it is a subresource."""
    if subresource == "status":
        result = copy.deepcopy(old)
        if new.get("status") is None:
            result.pop("status", None)
        else:
            result["status"] = new["status"]
        return result
    if status_is_subresource:
        new.pop("status", None)
        if "status" in old:
            new["status"] = old["status"]
    meta = new.setdefault("metadata", {})
    for key in ("uid", "creationTimestamp", "name", "namespace", "generation",
                "deletionTimestamp", "deletionGracePeriodSeconds"):
        meta.pop(key, None)
        if key in old["metadata"]:
            meta[key] = old["metadata"][key]
    meta["resourceVersion"] = old["metadata"]["resourceVersion"]
    return new
