"""metav1.Condition bookkeeping and the printer `phase` (pure functions)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable, Optional

DASK_CLUSTER_READY = "DaskClusterReady"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
CONDITION_TYPES = (DASK_CLUSTER_READY, RUNNING, SUCCEEDED, FAILED)

PENDING = "Pending"
TERMINAL_PHASES = (SUCCEEDED, FAILED)


def utc_now() -> str:
    """RFC 3339 timestamp, seconds precision, as Kubernetes writes them."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def seconds_between(start: str, end: str) -> float:
    """Seconds from RFC 3339 timestamp `start` to `end` (as `utc_now` writes them)."""
    def parse(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    return (parse(end) - parse(start)).total_seconds()


def find(conditions: Iterable[dict[str, Any]], type_: str) -> Optional[dict[str, Any]]:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: Iterable[dict[str, Any]], type_: str) -> bool:
    found = find(conditions, type_)
    return bool(found) and found.get("status") == "True"


def set_condition(
    conditions: Optional[list[dict[str, Any]]],
    type_: str,
    status: bool | str,
    reason: str,
    message: str = "",
    *,
    generation: Optional[int] = None,
    now: Optional[str] = None,
) -> list[dict[str, Any]]:
    """A new list with condition `type_` set; lastTransitionTime changes only when status flips."""
    status_text = status if isinstance(status, str) else ("True" if status else "False")
    previous = find(conditions or [], type_)
    flipped = previous is None or previous.get("status") != status_text
    entry = {
        "type": type_,
        "status": status_text,
        "reason": reason,
        "message": message,
        "lastTransitionTime": (now or utc_now()) if flipped else previous.get("lastTransitionTime") or now or utc_now(),
    }
    if generation is not None:
        entry["observedGeneration"] = generation
    out = [dict(c) for c in conditions or [] if c.get("type") != type_]
    out.append(entry)
    order = {name: index for index, name in enumerate(CONDITION_TYPES)}
    return sorted(out, key=lambda c: order.get(c.get("type"), len(order)))


def transitions(
    before: Iterable[dict[str, Any]], after: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Conditions in `after` whose status differs from `before` (new ones included)."""
    out = []
    for condition in after or []:
        old = find(before or [], condition["type"])
        if old is None or old.get("status") != condition.get("status"):
            out.append(condition)
    return out


def derive_phase(conditions: Iterable[dict[str, Any]]) -> str:
    """Failed > Succeeded > Running > Pending."""
    for type_, phase in ((FAILED, FAILED), (SUCCEEDED, SUCCEEDED), (RUNNING, RUNNING)):
        if is_true(conditions, type_):
            return phase
    return PENDING
