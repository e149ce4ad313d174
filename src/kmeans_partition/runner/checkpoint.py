"""Checkpoint and resume of the fit: ``<output>/_checkpoint/``.

During Lloyd the runner saves, every ``checkpoint_iterations`` iterations or at the first
iteration ending ``checkpoint_seconds`` after the last save, and once after the fit:

- ``_checkpoint/centroids-NNNNNN.npy``: (2, k, d) float32, the centroids before and after
  iteration NNNNNN (written first, under a new name);
- ``_checkpoint/state.json`` (written last, replacing the previous one: a local rename or a
  single S3 PUT): the iteration, the .npy's name, the iteration history and counters, the
  spec hash, the input listing's hash, the owner (resource uid, run id) and the partitions
  (a resumed run reads the same ones: partial sums are added in partition order).

A run whose spec hash (every field that can change the result: `RESULT_FIELDS` excluded
the runtime ones) and input listing (each file's path, size and etag/mtime as fsspec lists
them) equal the state's resumes: it redoes the saved iteration from the centroids before it
(without bounds: the labels are exact either way, so the centroids are bit-identical, which is
checked) to get the labels for the next step's "labels unchanged" test, then continues. The
checkpoint is deleted after the manifest is committed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .fit import DaskKMeans, FitResult, fit
from .output import OutputLocation, is_local
from .read import replan

log = logging.getLogger("kmeans_partition")

FOLDER = "_checkpoint"
STATE = "state.json"
FORMAT = 1
#: JobSpec fields that do not change the fit's result (never hashed).
RUNTIME_FIELDS = frozenset({
    "verbose", "overwrite", "scheduler_address", "storage_options", "report", "output_path",
    "checkpoint_seconds", "checkpoint_iterations",
})


def spec_hash(spec) -> str:
    """sha256 of the spec's result-changing fields (JSON, sorted keys)."""
    data = spec.model_dump(mode="json", exclude=set(RUNTIME_FIELDS))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def input_listing(files: list[str], storage_options: dict) -> list[dict[str, Any]]:
    """Path, size and etag (or mtime) of each input file, as fsspec's `info` gives them."""
    from fsspec.core import url_to_fs

    listing = []
    for url in files:
        fs, path = url_to_fs(url, **storage_options)
        info = fs.info(path)
        version = info.get("ETag") or info.get("etag") or info.get("generation") or info.get("mtime")
        listing.append({"path": url, "size": info.get("size"), "version": str(version)})
    return listing


def listing_hash(listing: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()


@dataclass
class State:
    """``state.json``: what a resumed run needs besides the centroids."""

    owner_uid: Optional[str]
    run_id: str
    spec_hash: str
    inputs_hash: str
    n_inputs: int
    iteration: int = 0
    centroids_file: Optional[str] = None
    converged: bool = False
    finished: bool = False  # saved after the fit: a resumed run skips the fit
    n_reseeded: int = 0
    rows_computed: int = 0
    inertia_history: list[float] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    saved_at: float = 0.0
    #: The partitions (`read.plan_record`): a resumed run reads the same ones, whatever its workers.
    partitions: Optional[list] = None
    format: int = FORMAT


class Checkpoint:
    """Reads and writes one output's ``_checkpoint/``; `__call__` is the Lloyd callback."""

    def __init__(self, out: OutputLocation, every_s: float, every_iter: int, state: State):
        self.out = out
        self.every_s = every_s
        self.every_iter = every_iter
        self.state = state
        self.last_save = time.monotonic()
        self.last_iteration = 0
        self.saves = 0
        self.save_seconds = 0.0

    def path(self, *name: str) -> str:
        return self.out.path(FOLDER, *name)

    # -- reading
    @staticmethod
    def read_state(out: OutputLocation) -> Optional[State]:
        path = out.path(FOLDER, STATE)
        try:
            raw = out.fs.cat_file(path)
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
            return State(**data) if data.get("format") == FORMAT else None
        except (ValueError, TypeError):
            log.warning("ignoring an unreadable checkpoint state %s", path)
            return None

    def load_centroids(self, state: State) -> np.ndarray:
        """(2, k, d) float32: before and after iteration ``state.iteration``."""
        return np.load(io.BytesIO(self.out.fs.cat_file(self.path(state.centroids_file))))

    # -- writing
    def _write(self, path: str, data: bytes) -> None:
        if is_local(self.out.fs):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{self.state.run_id}.tmp"
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        else:
            self.out.fs.pipe_file(path, data)  # one PUT: readers see the old or the new object

    def save(self, result: FitResult, previous: np.ndarray, finished: bool = False) -> None:
        started = time.perf_counter()
        state, old = self.state, self.state.centroids_file
        name = f"centroids-{result.n_iter:06d}{'-final' if finished else ''}.npy"
        buffer = io.BytesIO()
        np.save(buffer, np.stack([np.asarray(previous, np.float32), np.asarray(result.centroids, np.float32)]))
        self._write(self.path(name), buffer.getvalue())
        state.iteration, state.centroids_file = result.n_iter, name
        state.converged, state.finished = result.converged, finished
        state.n_reseeded, state.rows_computed = result.n_reseeded, result.rows_computed
        state.inertia_history = [float(v) for v in result.inertia_history]
        state.history = [dict(item) for item in result.history]
        state.saved_at = time.time()
        self._write(self.path(STATE), json.dumps(state.__dict__, sort_keys=True).encode())
        if old and old != name:
            try:
                self.out.fs.rm_file(self.path(old))
            except FileNotFoundError:
                pass
        self.saves += 1
        self.save_seconds += time.perf_counter() - started
        self.last_save, self.last_iteration = time.monotonic(), result.n_iter

    def __call__(self, result: FitResult, previous: np.ndarray) -> None:
        """After each Lloyd iteration: save when N iterations or T seconds have passed."""
        if result.converged:
            return  # the save after the fit follows
        by_iter = self.every_iter > 0 and result.n_iter - self.last_iteration >= self.every_iter
        by_time = self.every_s > 0 and time.monotonic() - self.last_save >= self.every_s
        if by_iter or by_time:
            self.save(result, previous)

    def delete(self) -> None:
        """After the manifest commit: remove the files this run's checkpoint consists of."""
        names = [STATE] + ([self.state.centroids_file] if self.state.centroids_file else [])
        for name in names:
            try:
                self.out.fs.rm_file(self.path(name))
            except FileNotFoundError:
                pass
        if is_local(self.out.fs):
            try:
                os.rmdir(self.path())
            except OSError:
                pass


def clear_stale(out: OutputLocation) -> None:
    """Delete a checkpoint folder's files of this tool's names (a checkpoint of another spec/input)."""
    import re

    pattern = re.compile(r"^(state\.json|centroids-\d{6}(-final)?\.npy)(\.[0-9a-f]+\.tmp)?$")
    folder = out.path(FOLDER)
    if not out.fs.exists(folder):
        return
    names = [p for p in out.fs.find(folder) if pattern.match(os.path.basename(p))]
    if names:
        out.fs.rm(names)
    if is_local(out.fs):
        try:
            os.rmdir(folder)
        except OSError:
            pass


def resume_fit(model: DaskKMeans, checkpoint: Checkpoint, state: State) -> tuple[FitResult, list]:
    """The `DaskKMeans.lloyd` resume argument from a saved state: (result so far, last step).

    Redoes iteration ``state.iteration`` from the centroids before it, without bounds, so the
    next step can tell whether labels changed; its centroids must equal the saved ones bit for
    bit (a warning says when not, and the saved ones are used)."""
    pair = checkpoint.load_centroids(state)
    result = FitResult(
        centroids=pair[1], n_iter=state.iteration, converged=state.converged,
        inertia_history=list(state.inertia_history), n_reseeded=state.n_reseeded,
        rows_computed=state.rows_computed, history=[dict(item) for item in state.history],
    )
    if state.finished or state.converged:
        return result, None
    update, held = model.step_all(pair[0])
    redone = update.centroids
    if not np.array_equal(redone, pair[1]):
        log.warning("iteration %d redone from the checkpoint gave other centroids (max difference %g); "
                    "going on from the saved ones", state.iteration, float(np.max(np.abs(redone - pair[1]))))
    return result, held


def fit_checkpointed(model: DaskKMeans, spec, tol_abs: float, checkpoint: Optional[Checkpoint],
                     saved: Optional[State]) -> FitResult:
    """`fit` saving checkpoints (and resuming from ``saved``); one save after the fit, so that a
    retry after a failed write skips the fit. Without a checkpoint: plain `fit`."""
    if checkpoint is None:
        return fit(model, spec.init, spec.oversampling_factor, spec.max_iter, tol_abs)
    resume = None if saved is None else resume_fit(model, checkpoint, saved)
    fitted = fit(model, spec.init, spec.oversampling_factor, spec.max_iter, tol_abs, None, resume, checkpoint)
    checkpoint.save(fitted, fitted.centroids, finished=True)
    fitted.timings["checkpoint"] = checkpoint.save_seconds
    return fitted


def resumed_plan(saved: Optional[State], files: list[str], spec, plan_args: dict):
    """The partitions of the run ``saved`` comes from (None: plan afresh). Partial sums are added
    in partition order, so another partitioning (planned from the workers present) would change
    the last bits of the centroids."""
    record = saved.partitions if saved is not None else None
    refs = replan(files, spec.input_filetype, spec.storage_options, record, **plan_args) if record else None
    if record and refs is None:
        log.warning("the checkpoint's partitions do not fit the input's row groups: planning afresh")
    return refs
