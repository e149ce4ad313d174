"""An in-memory stand-in for `kmeans_partition.operator.kube_api.KubeApi` (unit tests of reconcile)."""

from __future__ import annotations

import copy
import itertools
from typing import Any, Mapping, Optional

import json

from kmeans_partition.operator.kube_api import Conflict, NotFound, Rejected
from kmeans_partition.spec import API_GROUP, API_VERSION, KIND


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class FakeApi:
    """Objects keyed by (kind, namespace, name); counts every create call."""

    def __init__(self, unserved_kinds: tuple[str, ...] = (), reject_create: Optional[dict[str, tuple]] = None,
                 lose_create_race: tuple[str, ...] = (), namespaced_rbac: bool = False):
        """`reject_create`: kind -> (status, reason, message) answered to every create of that kind.
        `lose_create_race`: kinds whose first create finds the name taken (409) by an object that
        appeared after the caller's get (created by this operator's other pass; same owner).
        `namespaced_rbac`: a cluster-wide list (namespace None) is forbidden (403)."""
        self.namespaced_rbac = namespaced_rbac
        self.list_calls: list[tuple[str, Optional[str]]] = []
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.create_calls: list[str] = []
        self.unserved = set(unserved_kinds)
        self.reject_create = dict(reject_create or {})
        self.lose_create_race = set(lose_create_race)
        self._uids = itertools.count(1)

    def _check_served(self, kind: str) -> None:
        if kind in self.unserved:
            raise NotFound(404, "Not Found", f"{kind} is not served")

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Optional[dict]:
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def list(self, api_version: str, kind: str, namespace: Optional[str], labels: Mapping[str, str]) -> list[dict]:
        """Namespace None: every namespace (403 with `namespaced_rbac`)."""
        self.list_calls.append((kind, namespace))
        if namespace is None and self.namespaced_rbac:
            raise Rejected(403, "Forbidden", json.dumps({"kind": "Status", "reason": "Forbidden"}))
        return [
            copy.deepcopy(obj)
            for (k, ns, _), obj in self.objects.items()
            if k == kind and namespace in (None, ns) and labels.items() <= (obj["metadata"].get("labels") or {}).items()
        ]

    def create(self, manifest: Mapping[str, Any]) -> dict:
        self._check_served(manifest["kind"])
        meta = manifest["metadata"]
        key = (manifest["kind"], meta["namespace"], meta["name"])
        self.create_calls.append(f"{key[0]}/{key[2]}")
        if manifest["kind"] in self.reject_create:
            status, reason, message = self.reject_create[manifest["kind"]]
            raise Rejected(status, reason, json.dumps({"kind": "Status", "reason": reason, "message": message}))
        if manifest["kind"] in self.lose_create_race and key not in self.objects:
            self.lose_create_race.discard(manifest["kind"])
            self.objects[key] = {**copy.deepcopy(dict(manifest)), "status": {}}
            self.objects[key]["metadata"]["uid"] = f"uid-{next(self._uids)}"
        if key in self.objects:
            raise Conflict(409, "AlreadyExists", str(key))
        obj = copy.deepcopy(dict(manifest))
        obj["metadata"].setdefault("uid", f"uid-{next(self._uids)}")
        self.objects[key] = obj
        return copy.deepcopy(obj)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        self._check_served(kind)
        return self.objects.pop((kind, namespace, name), None) is not None

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: Mapping) -> dict:
        key = (kind, namespace, name)
        if key not in self.objects:
            raise NotFound(404, "Not Found", str(key))
        obj = self.objects[key]
        obj["status"] = merge_patch(obj.get("status") or {}, copy.deepcopy(dict(status)))
        return copy.deepcopy(obj)

    # helpers for tests -------------------------------------------------------
    def add_resource(self, name: str, spec: dict, namespace: str = "default", uid: str = "kmp-uid",
                     created: str = "2030-01-01T00:00:00Z") -> dict:
        body = {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": KIND,
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "generation": 1,
                         "creationTimestamp": created},
            "spec": copy.deepcopy(spec),
        }
        self.objects[(KIND, namespace, name)] = body
        return copy.deepcopy(body)

    def resource(self, name: str, namespace: str = "default") -> dict:
        return self.get("", KIND, namespace, name)

    def set_status(self, kind: str, name: str, status: dict, namespace: str = "default") -> None:
        self.objects[(kind, namespace, name)]["status"] = copy.deepcopy(status)

    def kinds(self) -> list[str]:
        return sorted(f"{k}/{n}" for k, _, n in self.objects if k != KIND)
