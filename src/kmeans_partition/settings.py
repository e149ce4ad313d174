"""Every environment variable the project reads: name, default, reader and meaning.

One `Setting` per variable in `SETTINGS`; the typed accessors below read
``os.environ`` at call time (so tests can monkeypatch it). An empty value counts
as unset. The operator passes the runner's variables to it through the Job's env,
built from the same declarations (`Setting.env`).

``python -m kmeans_partition.settings`` prints the Markdown table that
docs/operator.md carries; ``tests/test_settings.py`` fails when the two differ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Generic, Mapping, Optional, TypeVar

T = TypeVar("T")
Environ = Optional[Mapping[str, str]]


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One environment variable."""

    name: str
    default: T
    read_by: str  # "operator" or "runner"
    meaning: str
    parse: Callable[[str], T]
    expects: str = "a string"

    def get(self, environ: Environ = None) -> T:
        """The parsed value, or the default when unset or empty."""
        raw = (os.environ if environ is None else environ).get(self.name)
        if not raw:
            return self.default
        try:
            return self.parse(raw)
        except ValueError:
            raise ValueError(f"{self.name} must be {self.expects}, got {raw!r}") from None

    def env(self, value: Any) -> dict[str, str]:
        """A container `env` entry setting this variable to `value`."""
        return {"name": self.name, "value": str(value)}


def _seconds(raw: str) -> float:
    return float(raw)


def _positive_seconds(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError(raw)
    return value


def _names(raw: str) -> tuple[str, ...]:
    """``a,b,c`` -> ('a', 'b', 'c') (blanks dropped)."""
    names = tuple(item.strip() for item in raw.split(",") if item.strip())
    if not names:
        raise ValueError(raw)
    return names


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(raw)
    return lowered in ("true", "1", "yes")


def _count(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(raw)
    return value


def _label(raw: str) -> tuple[str, Optional[str]]:
    """``key=value`` -> (key, value); ``key`` -> (key, None): the label must exist, any value."""
    key, sep, value = raw.strip().partition("=")
    if not key.strip() or "," in raw:
        raise ValueError(raw)
    return key.strip(), (value.strip() if sep else None)


def _labels(raw: str) -> dict[str, str]:
    """``key=value[,key=value...]`` -> a label dict (a NetworkPolicy pod selector)."""
    labels = {}
    for item in raw.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key.strip():
            raise ValueError(item)
        labels[key.strip()] = value.strip()
    return labels


DEFAULT_IMAGE: Setting[str] = Setting(
    "KMP_DEFAULT_IMAGE", "kmeans-partition:0.1.0", "operator",
    "Image of the Dask and runner pods when a resource leaves `cluster.image` empty (the chart sets it).", str,
)
RECONCILE_INTERVAL: Setting[float] = Setting(
    "KMP_RECONCILE_INTERVAL", 30.0, "operator",
    "Seconds between timer passes over each resource (read when the handlers are imported).",
    _seconds, "a number of seconds",
)
RESOURCE_NAME: Setting[Optional[str]] = Setting(
    "KMP_NAME", None, "runner",
    "Name of the KMeansPartition whose `status` the runner patches (set by the operator); unset: no status.", str,
)
RESOURCE_NAMESPACE: Setting[Optional[str]] = Setting(
    "KMP_NAMESPACE", None, "runner", "Namespace of that KMeansPartition (set by the operator).", str,
)
TERMINATION_MESSAGE_PATH: Setting[Optional[str]] = Setting(
    "KMP_TERMINATION_MESSAGE_PATH", None, "runner",
    "File the runner writes its failure message to (the operator sets `/dev/termination-log`).", str,
)
CONNECT_TIMEOUT: Setting[float] = Setting(
    "KMP_CONNECT_TIMEOUT", 60.0, "runner",
    "Seconds the runner keeps trying to reach a remote scheduler and its workers (the operator sets 600).",
    _seconds, "a number of seconds",
)
SCHEDULER_ADDRESS: Setting[Optional[str]] = Setting(
    "DASK_SCHEDULER_ADDRESS", None, "runner",
    "Dask scheduler the runner uses when the spec names none (the operator sets its DaskCluster's, "
    "`tls://` unless `cluster.tls: false`, on the runner and, with TLS, on workers; else the "
    "dask-kubernetes operator sets a `tcp://` one on workers); unset: a LocalCluster.", str,
)
OWNER_UID: Setting[Optional[str]] = Setting(
    "KMP_OWNER_UID", None, "runner",
    "uid of the KMeansPartition the runner works for (set by the operator): recorded as the owner of the "
    "output's lease and checkpoint, so a retry of the same resource may resume or clear its own partial "
    "output; unset (the CLI): only `overwrite` replaces a partial output.", str,
)
EXPECTED_WORKERS: Setting[Optional[int]] = Setting(
    "KMP_EXPECTED_WORKERS", None, "runner",
    "Dask workers the runner waits for before planning partitions (the operator sets `cluster.workers` "
    "x max(1, `cluster.gpusPerWorker`)); unset: one.", _count, "a whole number",
)
WORKERS_TIMEOUT: Setting[float] = Setting(
    "KMP_WORKERS_TIMEOUT", 300.0, "runner",
    "Seconds the runner waits for `KMP_EXPECTED_WORKERS` workers; then it goes on with those present "
    "(at least one) and logs a warning saying how many.", _seconds, "a number of seconds",
)
LEASE_SECONDS: Setting[float] = Setting(
    "KMP_LEASE_SECONDS", 120.0, "runner",
    "Lifetime of the output lease (`_lease.json`); the runner renews it every third of that. An expired "
    "lease (its holder died) may be taken over.", _positive_seconds, "a positive number of seconds",
)

DASK_OPERATOR_POD_LABELS: Setting[dict[str, str]] = Setting(
    "KMP_DASK_OPERATOR_POD_LABELS", {"app.kubernetes.io/name": "dask-kubernetes-operator"}, "operator",
    "Labels of the dask-kubernetes operator's pods, which each resource's NetworkPolicy lets reach its "
    "Dask cluster (the dask-kubernetes-operator chart's default).",
    _labels, "key=value[,key=value...]",
)
DASK_OPERATOR_NAMESPACE: Setting[Optional[str]] = Setting(
    "KMP_DASK_OPERATOR_NAMESPACE", None, "operator",
    "Namespace of the dask-kubernetes operator, for that NetworkPolicy rule; unset: any namespace.", str,
)

# Operator policy (operator/policy.py): checked before a resource's first child is created;
# a violation ends the resource Failed (reason PolicyViolation). Unset: no restriction.
POLICY_ALLOWED_IMAGE_PREFIXES: Setting[Optional[tuple[str, ...]]] = Setting(
    "KMP_POLICY_ALLOWED_IMAGE_PREFIXES", None, "operator",
    "Image prefixes `cluster.image` must start with (e.g. `registry.example/ml/`; a prefix matches up to "
    "a `/`, `:` or `@`); the operator's default image is always allowed. Unset: any image.",
    _names, "a comma-separated list",
)
POLICY_MAX_WORKERS: Setting[Optional[int]] = Setting(
    "KMP_POLICY_MAX_WORKERS", None, "operator",
    "Most `cluster.workers` a resource may ask for (the CRD's own limit is 1000). Unset: no further limit.",
    _count, "a non-negative integer",
)
POLICY_MAX_GPUS: Setting[Optional[int]] = Setting(
    "KMP_POLICY_MAX_GPUS", None, "operator",
    "Most GPUs per resource (`cluster.workers` x `cluster.gpusPerWorker`); 0 forbids GPU workers. Unset: no limit.",
    _count, "a non-negative integer",
)
POLICY_ALLOWED_PRIORITY_CLASSES: Setting[Optional[tuple[str, ...]]] = Setting(
    "KMP_POLICY_ALLOWED_PRIORITY_CLASSES", None, "operator",
    "PriorityClasses `cluster.priorityClassName` may name (leaving it unset is always allowed). Unset: any.",
    _names, "a comma-separated list",
)
POLICY_ALLOW_TOLERATIONS: Setting[bool] = Setting(
    "KMP_POLICY_ALLOW_TOLERATIONS", True, "operator",
    "Whether a resource may set `cluster.tolerations`.", _bool, "true or false",
)
POLICY_ALLOW_AFFINITY: Setting[bool] = Setting(
    "KMP_POLICY_ALLOW_AFFINITY", True, "operator",
    "Whether a resource may set `cluster.affinity`.", _bool, "true or false",
)
POLICY_SECRET_LABEL: Setting[Optional[tuple[str, Optional[str]]]] = Setting(
    "KMP_POLICY_SECRET_LABEL", None, "operator",
    "Label (`key=value`, or `key` for any value) the Secret named by `storage.secretRef` must carry; the "
    "operator reads that Secret (RBAC: get secrets). Unset: any Secret of the namespace.",
    _label, "key=value or key",
)
POLICY_REQUIRE_TLS: Setting[bool] = Setting(
    "KMP_POLICY_REQUIRE_TLS", False, "operator",
    "Whether resources must keep `cluster.tls: true` (mutual TLS in the Dask cluster).", _bool, "true or false",
)
POLICY_SETTINGS = (
    POLICY_ALLOWED_IMAGE_PREFIXES, POLICY_MAX_WORKERS, POLICY_MAX_GPUS, POLICY_ALLOWED_PRIORITY_CLASSES,
    POLICY_ALLOW_TOLERATIONS, POLICY_ALLOW_AFFINITY, POLICY_SECRET_LABEL, POLICY_REQUIRE_TLS,
)

SETTINGS: tuple[Setting[Any], ...] = (
    DEFAULT_IMAGE, RECONCILE_INTERVAL, RESOURCE_NAME, RESOURCE_NAMESPACE, TERMINATION_MESSAGE_PATH,
    CONNECT_TIMEOUT, SCHEDULER_ADDRESS, OWNER_UID, EXPECTED_WORKERS, WORKERS_TIMEOUT, LEASE_SECONDS,
    DASK_OPERATOR_POD_LABELS, DASK_OPERATOR_NAMESPACE, *POLICY_SETTINGS,
)


def default_image(environ: Environ = None) -> str:
    return DEFAULT_IMAGE.get(environ)


def reconcile_interval(environ: Environ = None) -> float:
    return RECONCILE_INTERVAL.get(environ)


def resource_name(environ: Environ = None) -> Optional[str]:
    return RESOURCE_NAME.get(environ)


def resource_namespace(environ: Environ = None) -> Optional[str]:
    return RESOURCE_NAMESPACE.get(environ)


def termination_message_path(environ: Environ = None) -> Optional[str]:
    return TERMINATION_MESSAGE_PATH.get(environ)


def connect_timeout(environ: Environ = None) -> float:
    return CONNECT_TIMEOUT.get(environ)


def scheduler_address(environ: Environ = None) -> Optional[str]:
    return SCHEDULER_ADDRESS.get(environ)


def owner_uid(environ: Environ = None) -> Optional[str]:
    return OWNER_UID.get(environ)


def expected_workers(environ: Environ = None) -> Optional[int]:
    return EXPECTED_WORKERS.get(environ)


def workers_timeout(environ: Environ = None) -> float:
    return WORKERS_TIMEOUT.get(environ)


def lease_seconds(environ: Environ = None) -> float:
    return LEASE_SECONDS.get(environ)


def dask_operator_pod_labels(environ: Environ = None) -> dict[str, str]:
    return DASK_OPERATOR_POD_LABELS.get(environ)


def dask_operator_namespace(environ: Environ = None) -> Optional[str]:
    return DASK_OPERATOR_NAMESPACE.get(environ)


def _shown(default: Any) -> str:
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, dict):
        return "`" + ",".join(f"{key}={value}" for key, value in default.items()) + "`"
    return f"`{default:g}`" if isinstance(default, float) else f"`{default}`"


def markdown_table() -> str:
    """The table of docs/operator.md's Environment section."""
    rows = ["| variable | read by | default | meaning |", "| --- | --- | --- | --- |"]
    for setting in SETTINGS:
        rows.append(f"| `{setting.name}` | {setting.read_by} | {_shown(setting.default)} | {setting.meaning} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
