"""`KMeansStage`: the whole job, read -> normalise -> fit -> assign -> write.

The signature follows NeMo Curator's ``KMeansStage`` field for field, plus
``storage_options``, ``overwrite`` and ``scheduler_address``.
"""

from __future__ import annotations

import logging
import time
from operator import getitem
from typing import Optional, Union

import numpy as np
from distributed import Client, as_completed

from . import kmeans as km
from . import memory_mode, restrictions
from .checkpoint import fit_checkpointed, resumed_plan
from .cluster import dask_client
from .engine import RaftParams, choose_engine, fit_raft, parse_engine
from .fit import DaskKMeans
from .guard import OutputGuard
from .manifest import RunResult, manifest_data, write_centroids, write_manifest
from .output import REPORT, clear_previous, open_output
from .partition import count_duplicates, hash_buckets, load_partition, partition_stats, unify_column_types
from .progress import Progress
from .recovery import is_lost_error, note, recomputable
from .read import discover_files, plan_partitions, plan_record
from ..spec import DEFAULT_ENGINE, Engine, JobSpec, SpecError, parse_job_spec
from .stage_support import check_shapes, placement, wait_or_raise
from .summary import MergeInOrder
from .write import (
    COSINE_COLUMN,
    L2_COLUMN,
    MARGIN_COLUMN,
    SECOND_CENTROID_COLUMN,
    WRITE_TASK_BYTES,
    OutputColumns,
    assign_partition,
    plan_writes,
    rows_per_write_task,
    split_partition,
    summary_of,
    write_group,
)
from .write_tasks import GroupWriter

log = logging.getLogger("kmeans_partition")


class KMeansStage:
    """Cluster embeddings with k-means and write them partitioned by centroid."""

    def __init__(
        self,
        n_clusters: int,
        id_field: str,
        embedding_field: str,
        input_path: Union[str, list[str]],
        output_path: str,
        metadata_fields: Optional[list[str]] = None,
        verbose: bool = False,
        embedding_dim: Optional[int] = None,
        input_filetype: str = "parquet",
        max_iter: int = 300,
        tol: float = 1e-4,
        random_state: int = 42,
        init: str = "k-means||",
        oversampling_factor: float = 2.0,
        max_samples_per_batch: int = 32768,
        storage_options: Optional[dict] = None,
        overwrite: bool = False,
        scheduler_address: Optional[str] = None,
        write_second_centroid: bool = False,
        report: bool = True,
        distance_precision: str = "float32",
        checkpoint_seconds: float = 60.0,
        checkpoint_iterations: int = 0,
        memory_mode: str = "auto",
    ):
        fields = dict(locals())
        fields.pop("self")
        fields["storage_options"] = storage_options or {}
        self.spec = parse_job_spec(fields)
        check_field_names(self.spec)

    def run(
        self,
        progress: Optional[Progress] = None,
        client: Optional[Client] = None,
        engine: Union[Engine, str] = DEFAULT_ENGINE,
    ) -> dict:
        """Run the job; returns the result summary (also in `_manifest.json`).

        ``engine``: ``auto`` (default) | ``dask`` | ``raft`` (see `kmeans_partition.runner.engine`).
        """
        engine = parse_engine(engine)
        progress = progress or Progress()
        if self.spec.verbose:
            logging.getLogger("kmeans_partition").setLevel(logging.DEBUG)
        guard = OutputGuard.prepare(self.spec)  # lease + what may be replaced: before any work and cluster
        try:
            if client is not None:
                return _Run(self.spec, client, progress, engine, guard).execute(guard.replace)
            with dask_client(self.spec.scheduler_address) as own_client:
                return _Run(self.spec, own_client, progress, engine, guard).execute(guard.replace)
        finally:
            guard.close()


def check_field_names(spec: JobSpec) -> None:
    """Output columns must be distinct: id, embedding, metadata, the distances (and margin columns)."""
    seen = {spec.id_field: "id_field"}
    if spec.embedding_field in seen:
        raise SpecError("embedding_field", f"{spec.embedding_field!r} is also the id_field")
    seen[spec.embedding_field] = "embedding_field"
    for name in spec.metadata_fields or []:
        if name in seen:
            raise SpecError("metadata_fields", f"{name!r} is already the {seen[name]}")
    extra = (SECOND_CENTROID_COLUMN, MARGIN_COLUMN) if spec.write_second_centroid else ()
    for name in (L2_COLUMN, COSINE_COLUMN, *extra):
        if name in seen or name in (spec.metadata_fields or []):
            raise SpecError("metadata_fields", f"{name!r} is an output column of this job")


class _Run:
    """One execution of a spec on a client; each method is one stage of the data flow."""

    def __init__(self, spec: JobSpec, client: Client, progress: Progress, engine: Engine = DEFAULT_ENGINE,
                 guard: Optional[OutputGuard] = None):
        self.spec = spec
        self.client = client
        self.progress = progress
        self.engine = engine
        self.guard = guard  # None: no lease, no checkpoint (tests of single stages)
        self.checkpoint = self.resume = None
        self.out = open_output(spec.output_path, spec.storage_options)
        self.timings: dict[str, float] = {}
        self.sources: list = []  # (partition index, PartitionRef, options) of each kept partition

    def reload_partition(self, i: int):
        """Kept partition i submitted again (read from its source), after it was lost with a worker."""
        index, ref, options = self.sources[i]
        out_of_core = self.memory.mode == "out_of_core"
        return self.client.submit(load_partition, index, ref, options, out_of_core, pure=False)

    def execute(self, replace: list[str]) -> dict:
        """``replace``: the previous output's entries that `overwrite` will delete."""
        spec = self.spec
        started = time.perf_counter()
        restrictions.register(self.client)  # tasks placed on workers must outlive those workers
        files = discover_files(spec.input_paths, spec.input_filetype, spec.storage_options)
        self.checkpoint, self.resume = self.guard.checkpoint(files) if self.guard else (None, None)
        refs = self.plan(files)
        parts, stats = self.read(refs)
        column_schema = unify_column_types(stats, spec.id_field)  # before any work, like check_shapes
        duplicates = self.count_duplicate_ids(parts)
        n_rows = sum(s.n_rows for s in stats)
        dim = stats[0].dim
        if spec.n_clusters > n_rows:
            raise SpecError("n_clusters", f"{spec.n_clusters} is more than the {n_rows} input rows")
        tol_abs = km.tolerance(
            np.sum([s.feature_sum for s in stats], axis=0),
            np.sum([s.feature_sq_sum for s in stats], axis=0),
            n_rows,
            spec.tol,
        )
        fitted, choice = self.fit(parts, stats, dim, tol_abs)
        self.timings.update(fitted.timings)
        n_duplicates = self.duplicate_count(duplicates, parts)  # before `write` releases the partitions
        self.guard.clear_previous() if self.guard else clear_previous(self.out, replace)
        counts, inertia, files_written, summary = self.write(parts, fitted.centroids, column_schema)
        write_centroids(self.out, fitted.centroids)
        self.timings["total"] = time.perf_counter() - started
        result = RunResult(
            output_path=spec.output_path,
            manifest_path=self.out.url("_manifest.json"),
            centroids_path=self.out.url("kmeans_centroids.npy"),
            n_rows=n_rows,
            n_clusters=spec.n_clusters,
            embedding_dim=dim,
            n_iter=fitted.n_iter,
            inertia=inertia,
            converged=fitted.converged,
            rows_per_centroid=[int(c) for c in counts],
            files=files_written,
            input_files=files,
            n_duplicate_ids=n_duplicates,
            n_reseeded=fitted.n_reseeded,
            engine=choice.to_dict(),
            timings=self.timings,
            iterations=fitted.history,
            tol_abs=tol_abs,  # both engines stop on it (raft: `engine.RaftParams`)
            summary=summary.to_dict(),
            memory_mode=self.memory.to_dict(),
        )
        if spec.report:
            result.report_path = self.write_report(manifest_data(spec, result))
        if self.guard:
            self.guard.commit()
        write_manifest(self.out, spec, result)
        if self.guard:
            self.guard.committed()
        self.progress.result(result.to_dict())
        return result.to_dict()

    def plan(self, files: list[str]):
        """Partitions of about a million rows and at most `memory_mode.partition_target` bytes (less
        out of core on small workers); smaller (by row groups) when that leaves workers idle. Picks
        the memory mode (`self.memory`) from the footers' sizes and the workers' memory limits."""
        spec = self.spec
        columns = (spec.id_field, *(spec.metadata_fields or []))
        plan_args = dict(embedding_field=spec.embedding_field, columns=columns)
        refs = plan_partitions(files, spec.input_filetype, spec.storage_options,
                               target_bytes=memory_mode.PARTITION_BYTES, **plan_args)
        limits = memory_mode.worker_limits(self.client)
        data_bytes = sum(ref.nbytes or 0 for ref in refs)
        sizes = [ref.num_rows for ref in refs]
        n_rows = None if None in sizes else sum(sizes)
        target = memory_mode.partition_target(spec.n_clusters, data_bytes, n_rows)
        self.memory = memory_mode.choose(spec.memory_mode, data_bytes, limits, target)
        target_bytes = self.memory.partition_bytes
        resumed = resumed_plan(self.resume, files, spec, plan_args)  # the resumed run's partitions
        if resumed is None and target_bytes != memory_mode.PARTITION_BYTES:
            refs = plan_partitions(files, spec.input_filetype, spec.storage_options,
                                   target_bytes=target_bytes, **plan_args)
        wanted = 2 * max(1, len(limits))
        sizes = [ref.num_rows for ref in refs]
        if resumed is None and len(refs) < wanted and None not in sizes and sum(sizes) > 0:
            target = max(1, -(-sum(sizes) // wanted))
            refs = plan_partitions(files, spec.input_filetype, spec.storage_options, target_rows=target,
                                   target_bytes=target_bytes, **plan_args)
        refs = resumed or refs
        if self.checkpoint is not None:
            self.checkpoint.state.partitions = plan_record(refs)
        memory_mode.check_row_groups(refs, self.memory, limits)
        memory_mode.log_plan(self.memory, len(refs))
        return refs

    def read(self, refs):
        """Load and normalise every partition on the workers; check shapes on the client."""
        spec = self.spec
        started = time.perf_counter()
        self.progress.stage("reading", files_total=len(refs))
        options = dict(
            id_field=spec.id_field,
            embedding_field=spec.embedding_field,
            metadata_fields=spec.metadata_fields,
            filetype=spec.input_filetype,
            storage_options=spec.storage_options,
            embedding_dim=spec.embedding_dim,
        )
        out_of_core = self.memory.mode == "out_of_core"
        where = memory_mode.spread(refs, self.client.scheduler_info().get("workers", {}))
        parts = [
            self.client.submit(load_partition, i, ref, options, out_of_core, pure=False, **w)
            for i, (ref, w) in enumerate(zip(refs, where))
        ]
        stat_futures = [self.client.submit(partition_stats, p, pure=False) for p in parts]
        stats = [None] * len(refs)
        index_of = {f.key: i for i, f in enumerate(stat_futures)}
        try:
            for future in as_completed(stat_futures):
                stat = future.result()
                stats[index_of[future.key]] = stat
                self.progress.file_read(stat.n_rows)
        except BaseException:
            self.client.cancel(parts + stat_futures)
            raise
        check_shapes(stats, spec)
        keep = [i for i, s in enumerate(stats) if s.n_rows > 0]
        self.sources = [(i, refs[i], options) for i in keep]
        parts, stats = [parts[i] for i in keep], [stats[i] for i in keep]
        self.placement = placement(self.client, parts)
        self.timings["read"] = time.perf_counter() - started
        return parts, stats

    def fit(self, parts, stats, dim: int, tol_abs: float):
        """(centroids from the chosen engine, the `EngineChoice`); ours reports every iteration."""
        spec = self.spec
        rows = [s.n_rows for s in stats]
        choice = choose_engine(self.engine, self.client, spec.distance_precision)
        if choice.chosen == Engine.raft:
            self.progress.stage("fitting", max_iter=spec.max_iter)
            return fit_raft(self.client, parts, rows, dim, RaftParams.from_spec(spec, tol_abs)), choice
        model = DaskKMeans(
            self.client, parts, rows, spec.n_clusters, spec.max_samples_per_batch, spec.random_state, self.progress,
            reload=self.reload_partition,
            placement=self.placement,
        )
        return fit_checkpointed(model, spec, tol_abs, self.checkpoint, self.resume), choice

    def count_duplicate_ids(self, parts, n_buckets: int = 16) -> list:
        """Futures of per-bucket duplicate-id counts: id hashes never leave the workers whole."""
        buckets = [self.client.submit(hash_buckets, p, n_buckets, pure=False) for p in parts]
        return [
            self.client.submit(
                count_duplicates, *[self.client.submit(getitem, b, i, pure=False) for b in buckets], pure=False
            )
            for i in range(n_buckets)
        ]

    def duplicate_count(self, duplicates: list, parts: list) -> int:
        """The duplicate-id count; counted again if its futures were lost with a worker."""
        try:
            return sum(self.client.gather(duplicates))
        except Exception as err:
            if not is_lost_error(err):
                raise
            note("the duplicate-id count", 0, repr(err))
            return sum(self.client.gather(self.count_duplicate_ids(parts)))

    def write(self, parts, centroids: np.ndarray, column_schema):
        """Assign where the partitions live, move rows to their write group in memory, write each file once.

        Takes `parts` over: the list is emptied, so each partition is released once its rows are split.
        """
        spec = self.spec
        started = time.perf_counter()
        self.progress.stage("assigning", partitions_total=len(parts))
        c_future = recomputable(self.client, centroids)  # not scattered: must survive every holder's death
        batch = spec.max_samples_per_batch
        assigned = [
            self.client.submit(assign_partition, p, c_future, batch, spec.write_second_centroid, pure=False, **where)
            for p, where in zip(parts, self.placement)
        ]
        summary_futures = [self.client.submit(summary_of, a, pure=False) for a in assigned]
        for _ in as_completed(summary_futures):
            self.progress.partition_assigned()
        summaries = self.client.gather(summary_futures)
        stats = MergeInOrder(len(summaries))  # margins and distances, added in partition order
        for i, summary in enumerate(summaries):
            stats.add(i, summary.stats)
            summary.stats = None  # k-sized arrays: keep only the running total
        counts = np.stack([s.counts for s in summaries])
        n_threads = sum(self.client.nthreads().values())
        task_bytes = memory_mode.write_task_bytes(self.memory, WRITE_TASK_BYTES, len(self.client.nthreads()))
        plan = plan_writes(counts, rows_per_write_task(int(counts.sum()), centroids.shape[1], n_threads, task_bytes))
        columns = OutputColumns(spec.id_field, spec.embedding_field, column_schema)
        out_of_core = self.memory.mode == "out_of_core"
        if out_of_core:  # the rows in flight to their write groups go to disk early
            self.client.run(memory_mode.spill_earlier)
        try:
            splits = [
                self.client.submit(split_partition, p, a, plan.partition_bounds(i), columns, True, pure=False, **where)
                for i, (p, a, where) in enumerate(zip(parts, assigned, self.placement))
            ]
            parts.clear()  # a partition and its assignment are dropped once split
            del assigned
            groups = [plan.group_pieces(g) for g in range(plan.n_groups)]
            taken = [[] for _ in groups]
            # partition-major: a split's list (spilled out of core) is read back once for all its pieces; one
            # `map`, not a submit per piece (952 pieces at 2M x 128: the assign took 1.6x as long)
            order = sorted((p, g) for g, (present, _) in enumerate(groups) for p in present)
            futures = self.client.map(getitem, [splits[p] for p, _ in order], [g for _, g in order], pure=False)
            for (_, g), future in zip(order, futures):
                taken[g].append(future)
            pieces = [(futures, rows) for futures, (_, rows) in zip(taken, groups)]
            # each split's list goes once its pieces are taken (the pieces are the same tables); only
            del splits, taken, futures  # `pieces` refers to them: a group's pieces go once it is written
            wait_or_raise([f for futures, _ in pieces for f in futures])
            self.timings["assign"] = time.perf_counter() - started
            started = time.perf_counter()
            self.progress.stage("writing", centroids_total=sum(f.last for f in plan.files))

            def rebuild(groups: list[int]) -> dict[int, list]:
                """The pieces of `groups` again, each partition read once more, after pieces were lost."""
                present = {g: plan.group_pieces(g)[0] for g in groups}
                splits = {}
                for p in sorted({p for ps in present.values() for p in ps}):
                    part = self.reload_partition(p)
                    a = self.client.submit(assign_partition, part, c_future, batch, spec.write_second_centroid, pure=False)
                    splits[p] = self.client.submit(split_partition, part, a, plan.partition_bounds(p), columns, True,
                                                   pure=False)
                return {g: [self.client.submit(getitem, splits[p], g, pure=False) for p in ps] for g, ps in present.items()}

            writer = GroupWriter(self.client, self.out, spec.storage_options, self.progress, task=write_group)
            window = memory_mode.write_window(self.memory, sum(self.client.nthreads().values()))
            written = writer.write(plan, pieces, rebuild, window)
        finally:
            if out_of_core:  # a shared cluster's workers get their thresholds back
                self.client.run(memory_mode.restore_spill)
        self.timings["write"] = time.perf_counter() - started
        files = [{"centroid": c, "path": p, "rows": r} for c, p, r in sorted(written)]
        inertia = float(sum(s.inertia for s in summaries))
        return counts.sum(axis=0), inertia, files, stats.result()

    def write_report(self, manifest: dict) -> Optional[str]:
        """report.html beside the manifest (before it: the manifest stays last); None if it failed."""
        from .report_html import write_html_report

        started = time.perf_counter()
        try:
            url = write_html_report(manifest, self.out.url(REPORT), self.spec.storage_options)
        except Exception as err:  # a report is a convenience: never fail the job over it
            logging.getLogger("kmeans_partition").warning("could not write %s: %s", REPORT, err)
            url = None
        self.timings["report"] = time.perf_counter() - started
        return url
