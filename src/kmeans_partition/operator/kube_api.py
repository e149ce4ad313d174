"""A small synchronous Kubernetes API facade over the official client.

Raw REST calls (``ApiClient.call_api``) on paths built from apiVersion/kind, so
one code path serves built-in kinds, DaskClusters and our own resource, and the
answer is parsed from the body whatever status code the server used. NotFound
and Conflict become exceptions callers treat as normal outcomes; Rejected (400,
403, 422) marks requests that retrying cannot fix.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping, Optional

from kmeans_partition.k8s_http import load_api_client, raw_request
from kmeans_partition.spec import KIND, PLURAL

log = logging.getLogger("kmeans_partition.operator")

PLURALS = {
    "ConfigMap": "configmaps",
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "DaskCluster": "daskclusters",
    "NetworkPolicy": "networkpolicies",
    "Job": "jobs",
    "Pod": "pods",
    "Secret": "secrets",
    "Event": "events",
    KIND: PLURAL,
}
REQUEST_TIMEOUT = (5, 30)  # connect, read (seconds)


class ApiError(Exception):
    def __init__(self, status: int, reason: str, body: str = ""):
        self.status, self.reason = status, reason
        self.message = _status_message(body)
        super().__init__(f"HTTP {status} {reason}: {body[:500]}")


def _status_message(body: str) -> str:
    """`message` of a metav1.Status body, else the body itself (shortened)."""
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else body[:500]


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    """409: AlreadyExists on create, or a resourceVersion conflict."""


class Rejected(ApiError):
    """400/403/422: the server refused the request itself (bad object, forbidden, invalid);
    retrying the same request cannot succeed."""


ERRORS_BY_STATUS = {400: Rejected, 403: Rejected, 404: NotFound, 409: Conflict, 422: Rejected}


def resource_path(api_version: str, kind: str, namespace: Optional[str], name: Optional[str] = None,
                  subresource: Optional[str] = None) -> str:
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [root]
    if namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(PLURALS[kind])
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


class KubeApi:
    """get / list / create / delete / patch_status against one API server."""

    def __init__(self, api_client: Any = None):
        self._client = api_client or load_api_client()

    def request(self, method: str, path: str, body: Any = None, query: Optional[list] = None,
                content_type: str = "application/json") -> dict[str, Any]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        status, raw = raw_request(self._client, method, path, query=query, headers=headers, body=body,
                                  timeout=REQUEST_TIMEOUT)
        if not 200 <= status < 300:
            error = ERRORS_BY_STATUS.get(status, ApiError)
            text = raw.decode(errors="replace")
            try:
                reason = json.loads(text).get("reason", "")
            except (ValueError, AttributeError):
                reason = ""
            raise error(status, reason, text)
        return json.loads(raw) if raw else {}

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Optional[dict[str, Any]]:
        try:
            return self.request("GET", resource_path(api_version, kind, namespace, name))
        except NotFound:
            return None

    def list(self, api_version: str, kind: str, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Objects whose labels include `labels` (filtered here too, should the server ignore the selector)."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        try:
            answer = self.request("GET", resource_path(api_version, kind, namespace), query=[("labelSelector", selector)])
        except NotFound:
            return []
        items = answer.get("items") or []
        return [i for i in items if labels.items() <= ((i.get("metadata") or {}).get("labels") or {}).items()]

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        path = resource_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"))
        return self.request("POST", path, body=dict(manifest))

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete with background propagation; False when it was already gone."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        try:
            self.request("DELETE", resource_path(api_version, kind, namespace, name), body=body)
            return True
        except NotFound:
            return False

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str,
                     status: Mapping[str, Any]) -> dict[str, Any]:
        """JSON merge patch of `status` on the status subresource (other status keys untouched)."""
        path = resource_path(api_version, kind, namespace, name, "status")
        return self.request("PATCH", path, body={"status": dict(status)}, content_type="application/merge-patch+json")
