"""In memory or out of core: decided on the client before anything is loaded.

The data's size once loaded is estimated from the parquet footers (`read.plan_partitions`: the
embedding as float32 rows plus the id/metadata columns' uncompressed bytes; JSONL: a fraction of
the file size) and compared with the workers' memory limits (``memory_limit`` of each worker in
``scheduler_info()``; 0 means no limit). ``auto`` keeps the data in memory when it takes at most
`IN_MEMORY_FRACTION` of the summed limits, else goes out of core (`disk_partition`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from .errors import InputError

log = logging.getLogger("kmeans_partition")

#: Partitions are planned to at most `partition_target` estimated bytes, in both modes (unless one
#: row group is larger, or small workers out of core need less), so that both modes cut the data
#: alike and give bit-identical results; the target depends on the data and k only.
PARTITION_BYTES = 32 << 20  # the smallest target
#: Each Lloyd step returns k x d float64 partial sums per partition (8 k d bytes, 80 MB at k=10,000,
#: d=1024): partitions of at least this many times k rows keep them small next to the rows
#: (16 k rows of d float32 = 8x the partials) and the partition count sane at large k.
ROWS_PER_CLUSTER = 16
PARTITION_BYTES_MAX = 2 << 30
#: ``auto``: in memory when the data take at most this share of the workers' summed memory limits
#: (the rest: the worker process itself, Lloyd scratch, the rows in flight to their write groups).
IN_MEMORY_FRACTION = 0.5
#: Out of core: a worker's running tasks together map at most this share of its memory limit.
MAPPED_FRACTION = 0.25


@dataclass
class MemoryPlan:
    """The mode and the numbers it was chosen from (recorded in the manifest and the status)."""

    requested: str  # auto | in_memory | out_of_core
    mode: str  # in_memory | out_of_core
    data_bytes: int  # estimated bytes of the loaded data (all partitions)
    memory_limit_bytes: Optional[int]  # the workers' limits summed; None when any is unlimited
    smallest_worker_limit_bytes: Optional[int]
    partition_bytes: int  # the planned partitions' size cap
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def worker_limits(client) -> list[tuple[int, int]]:
    """(memory limit in bytes or 0 for none, threads) of each worker."""
    workers = client.scheduler_info().get("workers", {})
    return [(int(w.get("memory_limit") or 0), int(w.get("nthreads") or 1)) for w in workers.values()]


def _gb(n: Optional[float]) -> str:
    return "unlimited" if not n else f"{n / 1e9:.3g} GB"


def partition_target(n_clusters: int, data_bytes: int, n_rows: Optional[int]) -> int:
    """Bytes per planned partition: `PARTITION_BYTES`, or `ROWS_PER_CLUSTER` x k rows when that is
    more (at most `PARTITION_BYTES_MAX`); rows' size from the estimate (`n_rows` None: JSONL)."""
    if not n_rows:
        return PARTITION_BYTES
    per_row = data_bytes / n_rows
    return int(min(PARTITION_BYTES_MAX, max(PARTITION_BYTES, ROWS_PER_CLUSTER * n_clusters * per_row)))


def choose(requested: str, data_bytes: int, limits: list[tuple[int, int]],
           target_bytes: int = PARTITION_BYTES) -> MemoryPlan:
    """Pick the mode for `data_bytes` on workers with `limits` ((bytes, threads) each);
    partitions of `target_bytes` (`partition_target`), less out of core on small workers."""
    limited = bool(limits) and all(limit > 0 for limit, _ in limits)
    total = sum(limit for limit, _ in limits) if limited else None
    smallest = min(limit for limit, _ in limits) if limited else None
    budget = target_bytes
    if requested == "auto":
        if not limited:
            mode, reason = "in_memory", "the workers have no memory limit"
        elif data_bytes <= IN_MEMORY_FRACTION * total:
            mode = "in_memory"
            reason = (f"data {_gb(data_bytes)} <= {IN_MEMORY_FRACTION:g} x the workers' memory limits "
                      f"({_gb(total)})")
        else:
            mode = "out_of_core"
            reason = (f"data {_gb(data_bytes)} > {IN_MEMORY_FRACTION:g} x the workers' memory limits "
                      f"({_gb(total)})")
    else:
        mode, reason = requested, "asked for"
    if mode == "out_of_core" and limited:
        per_task = min(MAPPED_FRACTION * limit / max(1, threads) for limit, threads in limits)
        budget = int(min(budget, per_task))
    return MemoryPlan(requested, mode, int(data_bytes), total, smallest, max(1, budget), reason)


def check_row_groups(refs, plan: MemoryPlan, limits: list[tuple[int, int]]) -> None:
    """A row group is never split between partitions: refuse one no worker can hold, before loading.

    In memory, a partition may take at most `IN_MEMORY_FRACTION` of the smallest worker's memory
    limit; out of core, at most `MAPPED_FRACTION` / its threads.
    """
    if plan.smallest_worker_limit_bytes is None:
        return
    if plan.mode == "out_of_core":
        room = min(MAPPED_FRACTION * limit / max(1, threads) for limit, threads in limits)
        share = f"{MAPPED_FRACTION:g} / threads per worker when out of core"
    else:
        room = IN_MEMORY_FRACTION * plan.smallest_worker_limit_bytes
        share = f"{IN_MEMORY_FRACTION:g} in memory"
    for ref in refs:
        if ref.largest_group is None:
            continue
        index, rows, nbytes = ref.largest_group
        if nbytes > room:
            raise InputError(
                f"row group {index} holds {rows} rows, about {_gb(nbytes)} once loaded, more than one "
                f"worker can hold: memory limit {_gb(plan.smallest_worker_limit_bytes)}, of which a "
                f"partition may take {_gb(room)} ({share}); a row group is never split: rewrite the file "
                f"with smaller row groups (pyarrow.parquet.write_table(..., row_group_size=N)) or give "
                f"the workers more memory",
                source=ref.path,
            )


#: Write groups hold at most this share of a worker's part of the data: while a group is written,
#: its pieces from other workers are copies next to the data (the in-flight memory of the write).
WRITE_GROUP_SHARE = 1 / 8
#: ... and at least this many bytes (fewer, larger tasks on small data).
WRITE_GROUP_MIN_BYTES = 32 << 20


def write_task_bytes(plan: MemoryPlan, default: int, n_workers: int = 1) -> int:
    """Bytes of rows one write task gathers: `WRITE_GROUP_SHARE` of a worker's data, within
    [`WRITE_GROUP_MIN_BYTES`, ``default``]; out of core, also at most half a partition's budget
    (the task holds its rows and the parquet writer's encoded copy)."""
    share = int(plan.data_bytes * WRITE_GROUP_SHARE / max(1, n_workers))
    task = max(WRITE_GROUP_MIN_BYTES, min(default, share))
    return min(task, plan.partition_bytes // 2) if plan.mode == "out_of_core" else task


def write_window(plan: MemoryPlan, threads: int) -> int:
    """Write tasks in flight: one per worker thread (both modes; a group's remote pieces are
    copies, so each more task in flight costs a group's bytes on its worker)."""
    return max(1, threads)


#: Out of core: the share of its memory limit at which a worker starts spilling the rows in flight
#: to their write groups (Dask's ``distributed.worker.memory.target`` / ``spill``, 0.6 / 0.7 by
#: default), so that a write task and the transfers feeding it find room.
SPILL_TARGET, SPILL_AT = 0.3, 0.4


#: Where `spill_earlier` keeps a worker's own thresholds for `restore_spill` (a shared cluster's
#: workers get theirs back after the write).
_SAVED = "_kmeans_partition_spill_settings"


def _buffers(dask_worker) -> list:
    data = getattr(dask_worker, "data", None)
    return [b for b in (data, getattr(data, "fast", None)) if isinstance(getattr(b, "n", None), (int, float))]


def spill_earlier(dask_worker) -> None:
    """On a worker (`Client.run`): lower its spill thresholds to `SPILL_TARGET` / `SPILL_AT`
    (its own are kept for `restore_spill`)."""
    manager = getattr(dask_worker, "memory_manager", None)
    if manager is None or not manager.memory_limit:
        return
    if not hasattr(dask_worker, _SAVED):
        setattr(dask_worker, _SAVED, (manager.memory_target_fraction, manager.memory_spill_fraction,
                                      [b.n for b in _buffers(dask_worker)]))
    if manager.memory_target_fraction:
        manager.memory_target_fraction = min(manager.memory_target_fraction, SPILL_TARGET)
    if manager.memory_spill_fraction:
        manager.memory_spill_fraction = min(manager.memory_spill_fraction, SPILL_AT)
    if manager.memory_target_fraction:
        target = int(manager.memory_limit * manager.memory_target_fraction)  # the spill buffer's size
        for buffer in _buffers(dask_worker):
            buffer.n = target


def restore_spill(dask_worker) -> None:
    """On a worker (`Client.run`): the thresholds it had before `spill_earlier`."""
    saved = getattr(dask_worker, _SAVED, None)
    if saved is None:
        return
    target, spill, sizes = saved
    manager = dask_worker.memory_manager
    manager.memory_target_fraction, manager.memory_spill_fraction = target, spill
    for buffer, n in zip(_buffers(dask_worker), sizes):
        buffer.n = n
    delattr(dask_worker, _SAVED)


def spread(refs, workers: dict) -> list[dict]:
    """Submit options placing the partitions to read (`refs`, with estimated ``nbytes``) on the
    workers (``scheduler_info()["workers"]``) in contiguous runs of partition indexes, each worker's
    run about its share of the bytes by threads: a partition goes to the worker whose share covers
    the partition's middle byte.

    Contiguous, because the reductions combine partitions (0, 1), (2, 3), ...: neighbours on one
    worker combine without moving their k x d partial sums between workers (alternating placement
    moved every one, and the received buffers fragmented the workers' heaps: +46 MiB a worker over
    five Lloyd steps at k=1000, 500k x 384). Balanced, because left to Dask the faster worker takes
    more partitions (seen: 0.1 GiB more on one of 2 workers) and the most loaded one sets the peak
    memory. Loose (``allow_other_workers``): a worker that leaves does not block the read.
    """
    if not workers or any(ref.nbytes is None for ref in refs):
        return [{} for _ in refs]
    addresses = sorted(workers)
    threads = np.array([max(1, int(workers[a].get("nthreads") or 1)) for a in addresses], dtype=np.float64)
    total = float(sum(ref.nbytes for ref in refs))
    ends = np.cumsum(threads) / threads.sum() * total  # where each worker's share of the bytes ends
    out, before = [], 0.0
    for ref in refs:
        middle = before + ref.nbytes / 2
        index = min(int(np.searchsorted(ends, middle, side="right")), len(addresses) - 1)
        out.append({"workers": [addresses[index]], "allow_other_workers": True})
        before += ref.nbytes
    return out


def log_plan(plan: MemoryPlan, n_partitions: int) -> None:
    log.info(
        "memory mode %s (%s: %s): data ~%s, workers' memory limits %s, %d partitions of <= %s",
        plan.mode, plan.requested, plan.reason, _gb(plan.data_bytes), _gb(plan.memory_limit_bytes),
        n_partitions, _gb(plan.partition_bytes),
    )
