"""Entry point of the operator process: `kmeans-partition operator ...` calls `run_operator`."""

from __future__ import annotations

import logging
from typing import Optional, Sequence

log = logging.getLogger("kmeans_partition.operator")


def watch_scope(namespaces: Optional[Sequence[str]], all_namespaces: bool) -> dict:
    """kopf.run's scope arguments; one of the two must be given, not both."""
    names = [ns for ns in namespaces or [] if ns]
    if names and all_namespaces:
        raise ValueError("give --namespace or --all-namespaces, not both")
    if not names and not all_namespaces:
        raise ValueError("give --namespace NS (repeatable) or --all-namespaces")
    return {"namespaces": names, "clusterwide": bool(all_namespaces)}


def run_operator(
    namespaces: Optional[list[str]] = None,
    all_namespaces: bool = False,
    liveness_endpoint: Optional[str] = None,
    standalone: bool = True,
    verbose: bool = False,
) -> None:
    """Run kopf with the KMeansPartition handlers until stopped (SIGTERM/SIGINT).

    Logs are JSON lines (each with the object reference under ``object``).
    `liveness_endpoint` (e.g. ``http://0.0.0.0:8080/healthz``) serves kopf's health
    probe; `standalone` skips kopf peering (one replica, Recreate strategy)."""
    import kopf

    scope = watch_scope(namespaces, all_namespaces)
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON)
    import kmeans_partition.operator.handlers  # noqa: F401  (registers the handlers)

    log.info("starting operator: %s, liveness=%s", scope, liveness_endpoint)
    kopf.run(standalone=standalone, liveness_endpoint=liveness_endpoint, **scope)
