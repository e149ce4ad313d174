"""Lost workers: tell a lost future (its worker died, its inputs gone) from a failed task.

Dask recomputes a lost result by itself while the task's inputs can be rebuilt. It cannot when an
input was scattered data or a task result that was already released and forgotten: the chain of
Lloyd steps (each step takes the previous step's bounds) and the k-means|| rounds end in such
inputs, so their futures come back cancelled. The fit then rebuilds what was lost from what the
client holds (`fit.DaskKMeans`); a task that raised an error is never retried here.
"""

from __future__ import annotations

import logging
from concurrent.futures import CancelledError

from distributed import Future
from distributed.scheduler import KilledWorker

log = logging.getLogger("kmeans_partition")

#: How often one phase (a Lloyd step, the init, the write) may be rebuilt before the run fails.
MAX_RECOVERIES = 8
#: Exceptions that mean "the result is gone", not "the task failed".
LOST_ERRORS = (CancelledError, KilledWorker)


def is_lost(future: Future) -> bool:
    """True when the future's result is gone with a worker (cancelled, lost or killed worker)."""
    if future.status in ("cancelled", "lost"):
        return True
    if future.status == "error":
        return isinstance(future.exception(), LOST_ERRORS)
    return False


def is_lost_error(err: BaseException) -> bool:
    return isinstance(err, LOST_ERRORS)


def note(what: str, attempt: int, detail: str = "") -> None:
    """Log one recovery; raise after `MAX_RECOVERIES`."""
    if attempt >= MAX_RECOVERIES:
        raise RuntimeError(f"{what}: results lost {attempt} times (workers keep dying); giving up")
    log.warning("lost worker during %s: rebuilding (attempt %d)%s", what, attempt + 1, f": {detail}" if detail else "")
