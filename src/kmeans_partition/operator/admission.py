"""Whether a resource may start: the operator's checks before its first child is created.

In order: the operator policy (policy.py; ``PolicyViolation``), one active resource per
output location (output_claims.py; ``OutputPathInUse``), and, when the policy requires a
label on storage Secrets, that Secret's label (``PolicyViolation``; a Secret that does not
exist yet makes the resource wait, ``WaitingForSecret``, up to ``cluster.readyTimeoutSeconds``).

Other resources are listed cluster-wide when the operator may (cluster-wide RBAC); when the
API server forbids that (namespaced RBAC) only the resource's own namespace is listed. These
lists happen only while a resource has not started (usually its first pass).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from kmeans_partition.operator import output_claims as O
from kmeans_partition.operator import policy as P
from kmeans_partition.operator.kube_api import Rejected
from kmeans_partition.spec import API_GROUP, API_VERSION, KIND, KMeansPartitionSpec

log = logging.getLogger("kmeans_partition.operator")

RESOURCE_API_VERSION = f"{API_GROUP}/{API_VERSION}"
WAITING_FOR_SECRET = "WaitingForSecret"


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str
    final: bool  # True: the resource fails; False: it waits and is checked again next pass


def other_resources(api: Any, namespace: str) -> list[dict]:
    """Every KMeansPartition the operator may list: cluster-wide, else in `namespace`."""
    try:
        return api.list(RESOURCE_API_VERSION, KIND, None, {})
    except Rejected as err:
        log.debug("listing %s cluster-wide is not allowed (HTTP %s): comparing output paths within %s",
                  KIND, err.status, namespace)
    return api.list(RESOURCE_API_VERSION, KIND, namespace, {})


def admit(api: Any, body: Mapping[str, Any], spec: KMeansPartitionSpec, policy: P.Policy) -> Optional[Refusal]:
    """None when resource `body` may create its children, else why not."""
    problems = P.violations(spec, policy)
    if problems:
        return Refusal(P.REASON, "; ".join(problems), final=True)
    namespace = body["metadata"]["namespace"]
    held_by = O.holder(body, spec, other_resources(api, namespace))
    if held_by:
        return Refusal(O.REASON, O.in_use_message(spec, held_by), final=True)
    ref = spec.storage.secret_ref
    if policy.secret_label is not None and ref is not None:
        secret = api.get("v1", "Secret", namespace, ref.name)
        if secret is None:
            return Refusal(WAITING_FOR_SECRET, f"storage.secretRef: Secret {namespace}/{ref.name} does not exist "
                           "(yet); the operator checks its label before creating anything", final=False)
        problem = P.secret_label_problem(secret, ref.name, namespace, policy)
        if problem:
            return Refusal(P.REASON, problem, final=True)
    return None
