"""Fitting k-means on Dask: initialisation (k-means|| or random) and Lloyd iterations.

Partitions stay on the workers as futures. Every pass over them (a k-means|| pass, a
Lloyd step) is one task per worker group, its partitions in index order
(`group_tasks.py`). A Lloyd task reduces its partitions' partials as far as its share
of a fixed binary tree by partition index goes; the rest of the tree is combined on
the workers (`tree_reduce.py`), so results do not depend on the number of workers and
only the k x d total comes to the client. Results lost with a worker are rebuilt from
what the client holds (`recovery.py`).
"""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
from distributed import Client, Future, as_completed, wait

from . import backend as be
from . import kmeans as km
from . import seeding
from .group_tasks import PerGroup, _each, _each_reduced, _lloyd_steps, worker_groups
from .lloyd import LloydReduction, partial_bytes
from .partition import Partition
from .recovery import is_lost, is_lost_error, note
from .tree_reduce import add_arrays, combine_partials, finish_tree, local_nodes, node_of

if TYPE_CHECKING:  # the client's; workers unpickling this module's tasks need not load the status models
    from .progress import Progress

#: Sampling rounds of k-means|| (Spark MLlib's default; each round is one pass).
KMEANS_PARALLEL_ROUNDS = 2


@dataclass
class FitResult:
    centroids: np.ndarray  # (k, d) float32
    n_iter: int
    converged: bool
    inertia_history: list[float] = field(default_factory=list)
    n_reseeded: int = 0
    rows_computed: int = 0  # rows given the full distance computation, summed over iterations
    history: list[dict] = field(default_factory=list)  # per iteration, see `DaskKMeans.lloyd`
    timings: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------- worker tasks


def _rows(part: Partition, local: np.ndarray) -> np.ndarray:
    """Rows ``local`` (host indices) of the partition, as NumPy."""
    return np.ascontiguousarray(be.to_host(be.take_rows(part.x, be.like(np.asarray(local, np.int64), part.xa))))


#: Dask priority of the tasks that reduce a Lloyd step's results (the steps have 0).
REDUCE_PRIORITY = 1


# ---------------------------------------------------------------- client side


class DaskKMeans:
    """Fits k-means over partitions held as futures on a Dask cluster."""

    def __init__(
        self,
        client: Client,
        parts: list[Future],
        rows_per_part: list[int],
        n_clusters: int,
        batch: int,
        random_state: int,
        progress: Optional[Progress] = None,
        bounds: bool = True,
        reload: Optional[Callable[[int], Future]] = None,
        placement: Optional[list[dict]] = None,
    ):
        self.client = client
        # Per partition, submit options that keep its tasks on the worker holding it (`stage.placement`).
        if placement is None:  # where the partitions are, once computed
            from .stage_support import placement as held_by

            wait(parts)
            placement = held_by(client, parts)
        self.placement = placement
        self.groups = worker_groups(placement)  # one task per worker group and pass
        # the tree nodes each group's reduction leaves for `finish_tree` (fixed with the groups)
        self.group_nodes = [local_nodes(len(parts), indices) for indices, _ in self.groups]
        self.parts = parts
        self.rows = np.asarray(rows_per_part, dtype=np.int64)
        self.k = n_clusters
        self.batch = batch
        self.random_state = random_state
        if progress is None:
            from .progress import Progress

            progress = Progress()
        self.progress = progress
        self.bounds = bounds  # skip rows whose label cannot change (bounds.py); False: full steps
        self.init_details: dict = {}  # k-means||: candidates, trials, seconds per phase (for benchmarks)
        self.reload = reload  # partition index -> a new future of it (read again), for lost partitions
        self.recoveries: list[str] = []  # what was rebuilt after a lost worker (for benchmarks, logs)

    def _recover_parts(self) -> None:
        """Submit again (read from the source) the partitions Dask cannot recompute by itself.

        Updates `self.parts` in place (the caller's list), so later stages use the new futures.
        """
        for i, part in enumerate(self.parts):
            if is_lost(part):
                if self.reload is None:
                    raise RuntimeError(f"partition {i} was lost with its worker and cannot be read again")
                self.parts[i] = self.reload(i)

    def _retrying(self, what: str, func, *args):
        """`func(*args)`, started again from the beginning when its results are lost with a worker."""
        for attempt in itertools.count():
            try:
                return func(*args)
            except Exception as err:
                if not is_lost_error(err):
                    raise
                note(what, attempt, repr(err))
                self.recoveries.append(what)
                self._recover_parts()

    # -- helpers
    def _scatter(self, array: np.ndarray) -> Future:
        return self.client.scatter(array, broadcast=True, hash=False)

    def _by_group(self, func, *columns, **common) -> PerGroup:
        """``func`` over every partition, one task per worker group (`_each`); a column is a list
        with an entry per partition or a `PerGroup` (the group's earlier results)."""
        out = PerGroup()
        for g, (indices, where) in enumerate(self.groups):
            cols = [c[g] if isinstance(c, PerGroup) else [c[i] for i in indices] for c in columns]
            out.append(self.client.submit(_each, func, *cols, pure=False, key=f"{func.__name__}-{uuid.uuid4().hex}",
                                          **where, **common))
        return out

    def _left_nodes(self, results: list[Future]) -> dict:
        """The tree nodes each group's `_each_reduced`-like result leaves for `finish_tree`, picked
        out on its worker (only they travel, not the rest of the result)."""
        return {node: self.client.submit(node_of, r, node, pure=False, priority=REDUCE_PRIORITY, **where)
                for r, (_, where), nodes in zip(results, self.groups, self.group_nodes) for node in nodes}

    def _gathered(self, grouped: PerGroup) -> list:
        """The results of `_by_group` tasks, an entry per partition in partition order."""
        out: list = [None] * len(self.parts)
        for (indices, _), values in zip(self.groups, self.client.gather(list(grouped))):
            for i, value in zip(indices, values):
                out[i] = value
        return out

    def fetch_rows(self, global_rows: np.ndarray) -> np.ndarray:
        """Rows by global index (sorted order of partitions), gathered in index order."""
        global_rows = np.asarray(global_rows, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(self.rows)])
        owner = np.searchsorted(starts, global_rows, side="right") - 1
        out = np.empty((len(global_rows), 0), dtype=np.float32)
        pieces = {}
        for p in np.unique(owner):
            mask = owner == p
            pieces[p] = (mask, self.client.submit(_rows, self.parts[p], global_rows[mask] - starts[p], pure=False,
                                                  **self.placement[p]))
        gathered = self.client.gather({p: f for p, (_, f) in pieces.items()})
        for p, (mask, _) in pieces.items():
            if out.shape[1] == 0:
                out = np.empty((len(global_rows), gathered[p].shape[1]), dtype=np.float32)
            out[mask] = gathered[p]
        return out

    # -- initialisation
    def init_random(self) -> np.ndarray:
        """``n_clusters`` distinct rows drawn uniformly with ``random_state``."""
        return self._retrying("random init", self._init_random)

    def _init_random(self) -> np.ndarray:
        rng = np.random.default_rng(self.random_state)
        chosen = rng.choice(int(self.rows.sum()), size=self.k, replace=False)
        return self.fetch_rows(chosen)

    def init_kmeans_parallel(self, oversampling_factor: float) -> np.ndarray:
        """k-means|| (below), from its start again if a worker is lost: same seeds, same result."""
        return self._retrying("k-means|| init", self._init_kmeans_parallel, oversampling_factor)

    def _init_kmeans_parallel(self, oversampling_factor: float) -> np.ndarray:
        """k-means|| : oversample by squared distance, then weighted k-means++ on the candidates.

        Each round's pass finds every row's nearest among ~``oversampling_factor x k`` new
        candidates (about ``oversampling_factor`` Lloyd iterations of GEMM); the reduction costs
        well under one (`km.weighted_kmeans_pp`, `km.local_trials`).
        """
        started = time.perf_counter()
        rng = np.random.default_rng(self.random_state)
        n_total = int(self.rows.sum())
        candidates = [self.fetch_rows(rng.integers(n_total, size=1))]
        first = self._scatter(candidates[0])
        none = [None] * len(self.parts)
        states = self._by_group(seeding.nearest_candidate, self.parts, none, none, cands=first, offset=0,
                                batch=self.batch)
        expected = oversampling_factor * self.k
        n_cands = 1
        for round_no in range(KMEANS_PARALLEL_ROUNDS):
            phi = sum(self._gathered(self._by_group(seeding.state_cost, states)))
            seeds = [[self.random_state, round_no, p] for p in range(len(self.parts))]
            samples = self._gathered(self._by_group(seeding.oversample, self.parts, states, seeds, phi=phi,
                                                    expected=expected))
            new = np.concatenate([rows for rows, _ in samples])
            if len(new) == 0:
                break
            firsts = n_cands + np.cumsum([0] + [len(rows) for rows, _ in samples[:-1]])
            own = [(local, int(first)) for (_, local), first in zip(samples, firsts)]
            new_f = self._scatter(new)
            states = self._by_group(seeding.nearest_candidate, self.parts, states, own, cands=new_f, offset=n_cands,
                                    batch=self.batch)
            candidates.append(new)
            n_cands += len(new)
        points = np.concatenate(candidates)
        n = len(self.parts)
        counts = [self.client.submit(_each_reduced, seeding.candidate_weights, add_arrays, indices, n, state, m=n_cands,
                                     pure=False, **where) for (indices, where), state in zip(self.groups, states)]
        weights = self.client.gather(finish_tree(self.client, n, self._left_nodes(counts), add_arrays,
                                                 node_bytes=8 * n_cands))  # summed there
        if n_cands < self.k:  # too few candidates (tiny or highly duplicated data): top up uniformly
            extra = rng.choice(n_total, size=min(self.k, n_total), replace=False)
            points = np.concatenate([points, self.fetch_rows(extra)])
            weights = np.concatenate([weights, np.ones(len(extra))])
        sampled = time.perf_counter()
        # On a worker, on its device (a GPU's on dask-cuda workers); the client stays light.
        seed = [self.random_state, KMEANS_PARALLEL_ROUNDS]
        points_f = self.client.scatter(points, hash=False)  # tens of MB at large k: not inside the task graph
        reduced = self.client.submit(seeding.reduce_on_worker, points_f, weights, self.k, seed, n_total, pure=False)
        centroids = reduced.result()
        self.init_details = {
            "candidates": len(points), "trials": km.local_trials(self.k, len(points), n_total),
            "sampling_s": sampled - started, "reduction_s": time.perf_counter() - sampled,
        }
        return centroids

    # -- Lloyd
    def step_all(self, centroids: np.ndarray, held: Optional[list] = None, drift=None):
        """One Lloyd step of every partition from ``centroids``: (update, futures of each worker
        group's bounds). ``held``: per group, the last step's (None: first step).

        Each worker group's task reduces its partitions' partials as far as its share of the fixed
        tree goes; the rest of the tree is combined on the workers and only the total comes here.
        When results are lost with a worker, every group's step is redone from ``centroids``
        without pruning (a group's surviving bounds still count its changed labels).
        """
        n, bounds = len(self.parts), list(held or [None] * len(self.groups))
        c_f = self._scatter(centroids)
        for attempt in itertools.count():
            results = [
                self.client.submit(_lloyd_steps, [self.parts[i] for i in indices], last, c_f, drift, self.batch,
                                   indices, n, self.k, pure=False, **where)
                for (indices, where), last in zip(self.groups, bounds)
            ]
            held = [self.client.submit(itemgetter(1), r, pure=False, priority=REDUCE_PRIORITY, **where)
                    for r, (_, where) in zip(results, self.groups)]
            total = finish_tree(self.client, n, self._left_nodes(results), combine_partials, priority=REDUCE_PRIORITY,
                                node_bytes=partial_bytes(*centroids.shape), keep=self.k)
            del results
            for _ in as_completed([total]):  # finished, failed or cancelled (`wait` raises on the latter)
                pass
            if not is_lost(total):
                break
            note("a Lloyd step", attempt, f"groups {[g for (g, _), h in zip(self.groups, held) if is_lost(h)]} lost")
            self.recoveries.append("lloyd")
            self._recover_parts()
            if is_lost(c_f):  # the broadcast centroids went with the worker too
                c_f = self._scatter(centroids)
            bounds, drift = [None if last is None or is_lost(last) else last for last in bounds], None
        reduction = LloydReduction(1)
        reduction.add(0, self.client.gather(total))
        return reduction.finish(centroids), held

    def lloyd(self, centroids: np.ndarray, max_iter: int, tol_abs: float,
              resume: Optional[tuple[FitResult, list]] = None, on_iteration=None) -> FitResult:
        """scikit-learn's Lloyd loop: stop on unchanged labels or shift <= tol_abs.

        ``resume``: (the result so far, the last step's bounds per worker group, `step_all`) to
        continue from (checkpoint.py); ``on_iteration(result, previous centroids)`` after each iteration."""
        bounds: Optional[list] = None
        drift = None
        result = FitResult(centroids=centroids.astype(np.float32), n_iter=0, converged=False)
        if resume is not None:
            result, bounds = resume
            if result.converged:
                return result
        for iteration in range(result.n_iter + 1, max_iter + 1):
            started = time.perf_counter()
            previous = result.centroids
            update, bounds = self.step_all(result.centroids, bounds, drift)
            drift = update.drift if self.bounds else None
            result.centroids = update.centroids
            result.n_iter = iteration
            result.n_reseeded += update.n_reseeded
            result.rows_computed += update.n_recomputed
            result.inertia_history.append(update.inertia)
            result.history.append({
                "iteration": iteration,
                "inertia": float(update.inertia),
                "centroid_shift": float(update.shift_sq),  # summed squared shift, compared with tol
                "rows_computed": int(update.n_recomputed),
                "seconds": time.perf_counter() - started,
            })
            self.progress.iteration(
                iteration, update.inertia, update.shift_sq, update.n_recomputed / max(int(self.rows.sum()), 1)
            )
            result.converged = update.n_changed == 0 or update.shift_sq <= tol_abs
            if on_iteration is not None:
                on_iteration(result, previous)
            if result.converged:
                break
        return result


def fit(
    model: DaskKMeans,
    init: str,
    oversampling_factor: float,
    max_iter: int,
    tol_abs: float,
    initial_centroids: Optional[np.ndarray] = None,
    resume: Optional[tuple[FitResult, list]] = None,
    on_iteration=None,
) -> FitResult:
    """Initialise (unless centroids are given or a fit is resumed) and run Lloyd; timings per phase."""
    started = time.perf_counter()
    model.progress.stage("initialising")
    if resume is not None:
        centroids = resume[0].centroids
    elif initial_centroids is not None:
        centroids = np.asarray(initial_centroids, dtype=np.float32)
    elif init == "random":
        centroids = model.init_random()
    else:
        centroids = model.init_kmeans_parallel(oversampling_factor)
    init_seconds = time.perf_counter() - started
    model.progress.stage("fitting", max_iter=max_iter)
    result = model.lloyd(centroids, max_iter, tol_abs, resume, on_iteration)
    result.timings = {"init": init_seconds, "fit": time.perf_counter() - started - init_seconds}
    return result
