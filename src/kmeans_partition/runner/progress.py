"""Progress reporting: one `Progress` object fans snapshots out to sinks.

Sinks are the terminal (tqdm bars and log lines), and in a cluster the
KMeansPartition resource's ``status.progress`` / ``status.result``
(`kmeans_partition.runner.k8s_status`). The job itself only calls `Progress`.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from kmeans_partition.status import ProgressStatus, wire

log = logging.getLogger("kmeans_partition")


@dataclass
class ProgressSnapshot:
    """What a sink sees; field names map to camelCase in the resource status."""

    stage: str = "pending"
    iteration: int = 0
    max_iter: int = 0
    inertia: Optional[float] = None
    centroid_shift: Optional[float] = None
    rows_computed: Optional[float] = None  # fraction of rows the last iteration computed (bounds skip the rest)
    rows_read: int = 0
    rows_written: int = 0
    files_total: int = 0
    files_read: int = 0
    centroids_total: int = 0
    centroids_written: int = 0
    partitions_total: int = 0
    partitions_assigned: int = 0

    def to_model(self) -> ProgressStatus:
        """The resource's `status.progress` (the file and partition counts stay on the terminal)."""
        return ProgressStatus(
            stage=self.stage,
            iteration=self.iteration,
            max_iter=self.max_iter,
            inertia=self.inertia,
            centroid_shift=self.centroid_shift,
            rows_read=self.rows_read,
            rows_written=self.rows_written,
        )

    def to_status(self) -> dict[str, Any]:
        """`status.progress` as patched: camelCase keys, no Nones."""
        return wire(self.to_model())


class ProgressSink(Protocol):
    def on_progress(self, snapshot: ProgressSnapshot, event: str) -> None:
        """Called after every change; `event` names what changed (stage/iteration/rows...)."""

    def on_result(self, result: dict[str, Any]) -> None:
        """Called once with the run's summary (`RunResult.to_dict()`)."""

    def close(self) -> None:
        """Release terminals, connections."""


@dataclass
class Progress:
    """Tracks the job's progress and forwards each change to every sink."""

    sinks: list[ProgressSink] = field(default_factory=list)
    snapshot: ProgressSnapshot = field(default_factory=ProgressSnapshot)

    def _emit(self, event: str) -> None:
        for sink in self.sinks:
            try:
                sink.on_progress(self.snapshot, event)
            except Exception as err:  # a broken status sink must never fail the job
                log.warning("progress sink %s failed: %s", type(sink).__name__, err)

    def stage(self, name: str, **totals: int) -> None:
        self.snapshot.stage = name
        for key, value in totals.items():
            setattr(self.snapshot, key, value)
        self._emit("stage")

    def file_read(self, rows: int) -> None:
        self.snapshot.files_read += 1
        self.snapshot.rows_read += rows
        self._emit("rows_read")

    def iteration(self, iteration: int, inertia: float, shift: float, rows_computed: Optional[float] = None) -> None:
        self.snapshot.iteration = iteration
        self.snapshot.inertia = float(inertia)
        self.snapshot.centroid_shift = float(shift)
        self.snapshot.rows_computed = rows_computed
        self._emit("iteration")

    def partition_assigned(self) -> None:
        self.snapshot.partitions_assigned += 1
        self._emit("assigned")

    def centroids_written(self, count: int, rows: int) -> None:
        self.snapshot.centroids_written += count
        self.snapshot.rows_written += rows
        self._emit("rows_written")

    def result(self, result: dict[str, Any]) -> None:
        self.snapshot.stage = "done"
        self._emit("stage")
        for sink in self.sinks:
            try:
                sink.on_result(result)
            except Exception as err:
                log.warning("progress sink %s failed on result: %s", type(sink).__name__, err)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


class TerminalSink:
    """tqdm bars for reading, assigning/writing; one log line per iteration."""

    def __init__(self, stream=None):
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self._stream = stream or sys.stderr
        self._bar = None
        self._bar_stage = None
        self._started = time.perf_counter()

    def _open_bar(self, stage: str, total: int, unit: str) -> None:
        self._close_bar()
        self._bar = self._tqdm(
            total=total, desc=stage, unit=unit, file=self._stream, leave=True, mininterval=0.5
        )
        self._bar_stage = stage

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_progress(self, snap: ProgressSnapshot, event: str) -> None:
        if event == "stage":
            if snap.stage == "reading":
                self._open_bar("reading", snap.files_total, "partition")
            elif snap.stage == "fitting":
                self._open_bar("fitting", snap.max_iter, "iter")
            elif snap.stage == "assigning":
                self._open_bar("assigning", snap.partitions_total, "partition")
            elif snap.stage == "writing":
                self._open_bar("writing", snap.centroids_total, "centroid")
            else:
                self._close_bar()
                print(f"[{time.perf_counter() - self._started:7.1f}s] {snap.stage}", file=self._stream)
        elif self._bar is not None:
            if event == "rows_read":
                self._bar.n = snap.files_read
                self._bar.set_postfix(rows=f"{snap.rows_read:,}", refresh=False)
            elif event == "iteration":
                self._bar.n = snap.iteration
                postfix = {"inertia": f"{snap.inertia:.6g}", "shift": f"{snap.centroid_shift:.3g}"}
                if snap.rows_computed is not None:
                    postfix["computed"] = f"{snap.rows_computed:.0%}"
                self._bar.set_postfix(postfix, refresh=False)
            elif event == "assigned":
                self._bar.n = snap.partitions_assigned
            elif event == "rows_written":
                self._bar.n = snap.centroids_written
                self._bar.set_postfix(rows=f"{snap.rows_written:,}", refresh=False)
            self._bar.update(0)  # redraws at most every `mininterval` seconds

    def on_result(self, result: dict[str, Any]) -> None:
        self._close_bar()
        sizes = result.get("rows_per_centroid") or [0]
        lines = [
            f"done: {result['n_rows']} rows -> {result['n_clusters']} centroids in {result['output_path']}",
            f"  iterations {result['n_iter']} (converged: {result['converged']}), inertia {result['inertia']:.6g}",
            f"  rows per centroid: min {min(sizes)}, max {max(sizes)}, empty {sum(1 for s in sizes if s == 0)}",
            *_report_lines(result),
            "  seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in result.get("timings", {}).items()),
        ]
        print("\n".join(lines), file=self._stream)

    def close(self) -> None:
        self._close_bar()


def _report_lines(result: dict[str, Any]) -> list[str]:
    """Imbalance, boundary share and where report.html is (`kmeans-partition report` has the rest)."""
    from .summary import headline

    numbers = headline(result)
    lines = []
    if "boundary_share" in numbers:
        lines.append(
            f"  pairwise cost {numbers['imbalance']:.2f}x that of equal clusters; {numbers['boundary_share']:.2%} "
            f"of rows within margin {numbers['boundary_margin']:g} of another centroid"
        )
    if result.get("report_path"):
        lines.append(f"  report: {result['report_path']}")
    return lines
