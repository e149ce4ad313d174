"""Lost workers: tell a lost future (its worker died, its inputs gone) from a failed task.

Dask recomputes a lost result by itself while the task's inputs can be rebuilt. It cannot when an
input was scattered data or a task result that was already released and forgotten: the chain of
Lloyd steps (each step takes the previous step's bounds) and the k-means|| rounds end in such
inputs, so their futures come back cancelled. The fit then rebuilds what was lost from what the
client holds (`fit.DaskKMeans`); a task that raised an error is never retried here.
"""

from __future__ import annotations

import logging
import warnings
from concurrent.futures import CancelledError

import numpy as np
from distributed import Client, Future
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


def lost_cause(future: Future) -> str:
    """Why a lost future is lost, for the log: its status, or its error."""
    return repr(future.exception()) if future.status == "error" else future.status


def is_lost_error(err: BaseException) -> bool:
    return isinstance(err, LOST_ERRORS)


def note(what: str, attempt: int, detail: str = "") -> None:
    """Log one recovery; raise after `MAX_RECOVERIES` (naming the last loss: `detail`)."""
    if attempt >= MAX_RECOVERIES:
        last = f"; the last: {detail}" if detail else ""
        raise RuntimeError(f"{what}: results lost {attempt} times (workers keep dying); giving up{last}")
    log.warning("lost worker during %s: rebuilding (attempt %d)%s", what, attempt + 1, f": {detail}" if detail else "")


def _same(value):
    return value


def recomputable(client: Client, value: np.ndarray) -> Future:
    """A future of `value` (a small array all tasks read, e.g. the centroids) that Dask can compute
    again on any worker: a task holding `value` in its spec.

    Scattered data is lost for good once every worker holding it died, and so is every task that
    depends on it (cancelled: a broadcast reaches only the workers present at the time, not the
    ones the nanny restarts). A task's result is recomputed from its spec instead.
    """
    with warnings.catch_warnings():  # k x d float32: large at big k, once per run
        warnings.filterwarnings("ignore", message=".*[Ll]arge graph.*")
        return client.submit(_same, value, pure=False)
