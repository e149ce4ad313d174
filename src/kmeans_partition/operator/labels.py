"""One label scheme for every child, and deterministic child names.

The same labels select a resource's children (list/delete) and route a child's
watch events back to its parent; the parent's exact name also travels in an
annotation and in the child's ownerReference (label values are limited to 63
characters, resource names are not).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Mapping, Optional

from kmeans_partition.spec import API_GROUP, API_VERSION, KIND

MANAGED_BY = "kmeans-partition-operator"
APP_NAME = "kmeans-partition"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
PARENT_LABEL = f"{API_GROUP}/name"
PARENT_ANNOTATION = f"{API_GROUP}/parent"

COMPONENT_DASK = "dask-cluster"
COMPONENT_RUNNER = "runner"
COMPONENT_CONFIG = "config"
COMPONENT_RBAC = "runner-rbac"
COMPONENT_NETWORK = "network-policy"
COMPONENT_TLS = "dask-tls"

# Labels the dask-kubernetes operator puts on every pod of a DaskCluster (and its
# scheduler Service selects on): the cluster's name and scheduler/worker.
DASK_CLUSTER_NAME_LABEL = "dask.org/cluster-name"
DASK_COMPONENT_LABEL = "dask.org/component"

# Service names are DNS-1035 labels (<= 63); the dask operator adds "-scheduler".
_MAX_LABEL = 63
_SCHEDULER_SUFFIX = "-scheduler"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def label_value(name: str) -> str:
    """`name` as a valid label value (<= 63 chars; hashed suffix when shortened)."""
    if len(name) <= _MAX_LABEL:
        return name
    return f"{name[: _MAX_LABEL - 9].rstrip('-._')}-{_digest(name)}"


def dns_label(name: str, suffix: str, limit: int = _MAX_LABEL) -> str:
    """`<name>-<suffix>` as a DNS-1035 label of at most `limit` chars, deterministic.

    Dots become dashes, a leading digit gets a ``k`` prefix, and a name that had to
    change or be shortened gets a hash of the original so two names never collide."""
    base = re.sub(r"[^a-z0-9-]", "-", name.lower())
    changed = base != name
    if not base[:1].isalpha():
        base, changed = f"k{base}", True
    tail = f"-{suffix}"
    if changed or len(base) + len(tail) > limit:
        room = limit - len(tail) - 9
        base = f"{base[:room].rstrip('-')}-{_digest(name)}"
    return f"{base}{tail}"


def dask_cluster_name(name: str) -> str:
    return dns_label(name, "dask", _MAX_LABEL - len(_SCHEDULER_SUFFIX))


def scheduler_service_name(name: str) -> str:
    """The Service the dask-kubernetes operator creates for the DaskCluster's scheduler."""
    return f"{dask_cluster_name(name)}{_SCHEDULER_SUFFIX}"


def network_policy_name(name: str) -> str:
    """The NetworkPolicy guarding the DaskCluster's pods (named after the DaskCluster)."""
    return dask_cluster_name(name)


def tls_secret_name(name: str) -> str:
    """The Secret holding the Dask cluster's CA certificate and TLS key pair."""
    return dns_label(name, "dask-tls")


def job_name(name: str) -> str:
    return dns_label(name, "runner")


def config_map_name(name: str) -> str:
    return dns_label(name, "spec")


def runner_account_name(name: str) -> str:
    """ServiceAccount, Role and RoleBinding of the runner pod."""
    return dns_label(name, "runner")


def selector_labels(name: str) -> dict[str, str]:
    """Labels every child of resource `name` carries; a label selector for them."""
    return {MANAGED_BY_LABEL: MANAGED_BY, PARENT_LABEL: label_value(name)}


def child_labels(name: str, component: str) -> dict[str, str]:
    return {
        **selector_labels(name),
        NAME_LABEL: APP_NAME,
        INSTANCE_LABEL: label_value(name),
        COMPONENT_LABEL: component,
    }


def child_metadata(name: str, namespace: str, uid: str, child: str, component: str) -> dict[str, Any]:
    """metadata of a child: name, namespace, labels, parent annotation, controller ownerReference."""
    return {
        "name": child,
        "namespace": namespace,
        "labels": child_labels(name, component),
        "annotations": {PARENT_ANNOTATION: name},
        "ownerReferences": [owner_reference(name, uid)],
    }


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def parent_name(child: Mapping[str, Any]) -> Optional[str]:
    """The KMeansPartition that owns `child` (ownerReference, else the annotation), or None."""
    meta = child.get("metadata") or {}
    if (meta.get("labels") or {}).get(MANAGED_BY_LABEL) != MANAGED_BY:
        return None
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(f"{API_GROUP}/"):
            return ref.get("name")
    return (meta.get("annotations") or {}).get(PARENT_ANNOTATION)
