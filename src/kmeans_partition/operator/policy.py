"""Operator policy: what a resource may ask for, checked before its first child is created.

The settings (``KMP_POLICY_*``, settings.py; Helm ``policy.*``) say which images, how many
workers and GPUs, which PriorityClasses, whether tolerations/affinity, which Secrets
(by label) and whether TLS may be turned off. `violations` is pure; `secret_label_problem`
reads the ``storage.secretRef`` Secret. Each problem names the field and the rule, and ends
the resource ``Failed`` with reason ``PolicyViolation`` (reconcile.py via admission.py).
A Secret that does not exist yet is not a violation: the resource waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from kmeans_partition import settings as S
from kmeans_partition.operator import tls as TLS
from kmeans_partition.spec import KMeansPartitionSpec

REASON = "PolicyViolation"
IMAGE_BOUNDARIES = "/:@"


@dataclass(frozen=True)
class Policy:
    """The operator's policy settings; the defaults restrict nothing."""

    allowed_image_prefixes: Optional[tuple[str, ...]] = None
    max_workers: Optional[int] = None
    max_gpus: Optional[int] = None
    allowed_priority_classes: Optional[tuple[str, ...]] = None
    allow_tolerations: bool = True
    allow_affinity: bool = True
    secret_label: Optional[tuple[str, Optional[str]]] = None
    require_tls: bool = False

    @classmethod
    def from_settings(cls, environ: Optional[Mapping[str, str]] = None) -> "Policy":
        """The policy from the KMP_POLICY_* variables; a malformed one raises ValueError naming it."""
        return cls(
            allowed_image_prefixes=S.POLICY_ALLOWED_IMAGE_PREFIXES.get(environ),
            max_workers=S.POLICY_MAX_WORKERS.get(environ),
            max_gpus=S.POLICY_MAX_GPUS.get(environ),
            allowed_priority_classes=S.POLICY_ALLOWED_PRIORITY_CLASSES.get(environ),
            allow_tolerations=S.POLICY_ALLOW_TOLERATIONS.get(environ),
            allow_affinity=S.POLICY_ALLOW_AFFINITY.get(environ),
            secret_label=S.POLICY_SECRET_LABEL.get(environ),
            require_tls=S.POLICY_REQUIRE_TLS.get(environ),
        )


def image_allowed(image: str, prefixes: tuple[str, ...]) -> bool:
    """`image` starts with a prefix that ends at a path, tag or digest boundary
    (``registry.example/ml`` allows ``registry.example/ml/kmp:1``, not ``registry.example/ml-evil/x``)."""
    for prefix in prefixes:
        if image == prefix:
            return True
        if image.startswith(prefix) and (prefix[-1] in IMAGE_BOUNDARIES or image[len(prefix)] in IMAGE_BOUNDARIES):
            return True
    return False


def _listed(values: tuple[str, ...]) -> str:
    return ", ".join(values)


def violations(spec: KMeansPartitionSpec, policy: Policy) -> list[str]:
    """Every way `spec` breaks `policy` (or the operator's own TLS settings), each naming the field."""
    cluster = spec.cluster
    found = []
    if cluster.image and policy.allowed_image_prefixes is not None \
            and not image_allowed(cluster.image, policy.allowed_image_prefixes):
        found.append(f"cluster.image: {cluster.image!r} does not start with an allowed prefix "
                     f"({_listed(policy.allowed_image_prefixes)}; KMP_POLICY_ALLOWED_IMAGE_PREFIXES)")
    if policy.max_workers is not None and cluster.workers > policy.max_workers:
        found.append(f"cluster.workers: {cluster.workers} is more than the {policy.max_workers} allowed per "
                     "resource (KMP_POLICY_MAX_WORKERS)")
    gpus = cluster.workers * cluster.gpus_per_worker
    if policy.max_gpus is not None and gpus > policy.max_gpus:
        found.append(f"cluster.gpusPerWorker: {cluster.workers} workers x {cluster.gpus_per_worker} GPUs = {gpus} "
                     f"GPUs is more than the {policy.max_gpus} allowed per resource (KMP_POLICY_MAX_GPUS)")
    if cluster.priority_class_name and policy.allowed_priority_classes is not None \
            and cluster.priority_class_name not in policy.allowed_priority_classes:
        found.append(f"cluster.priorityClassName: {cluster.priority_class_name!r} is not an allowed PriorityClass "
                     f"({_listed(policy.allowed_priority_classes)}; KMP_POLICY_ALLOWED_PRIORITY_CLASSES)")
    if cluster.tolerations and not policy.allow_tolerations:
        found.append("cluster.tolerations: not allowed by this operator (KMP_POLICY_ALLOW_TOLERATIONS=false)")
    if cluster.affinity and not policy.allow_affinity:
        found.append("cluster.affinity: not allowed by this operator (KMP_POLICY_ALLOW_AFFINITY=false)")
    if not cluster.tls and policy.require_tls:
        found.append("cluster.tls: false is not allowed: this operator requires mutual TLS in the Dask cluster "
                     "(KMP_POLICY_REQUIRE_TLS=true)")
    for index, var in enumerate(cluster.env):
        if cluster.tls and var.name in TLS.TLS_ENV_NAMES:
            found.append(f"cluster.env[{index}].name: {var.name} is set by the operator for the cluster's TLS")
    return found


def _label_rule(label: tuple[str, Optional[str]]) -> str:
    key, value = label
    return f"{key}={value}" if value is not None else key


def secret_label_problem(secret: Optional[Mapping[str, Any]], name: str, namespace: str,
                         policy: Policy) -> Optional[str]:
    """The violation when the storage Secret lacks the required label, else None (None too when the
    policy requires no label). `secret` is None when it does not exist: not decided here."""
    if policy.secret_label is None or secret is None:
        return None
    key, value = policy.secret_label
    labels = (secret.get("metadata") or {}).get("labels") or {}
    if key in labels and (value is None or labels[key] == value):
        return None
    return (f"storage.secretRef: Secret {namespace}/{name} lacks the label {_label_rule(policy.secret_label)} "
            "that this operator requires of storage Secrets (KMP_POLICY_SECRET_LABEL)")
