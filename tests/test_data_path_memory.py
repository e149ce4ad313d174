"""The write path's memory kernels: rows gathered without whole-partition copies, partitions released
in their split, write groups sized by the data per worker, reads spread over workers (no Dask)."""

import os
import pickle
import sys

import numpy as np
import pyarrow as pa
import pytest

from kmeans_partition.runner import memory_mode
from kmeans_partition.runner.disk_partition import MappedPartition
from kmeans_partition.runner.partition import Partition, partition_stats
from kmeans_partition.runner.read import PartitionRef
from kmeans_partition.runner.worker_memory import release_freed
from kmeans_partition.runner.backend import take_rows as gather_rows
from kmeans_partition.runner.write import OutputColumns, assign_partition, plan_writes, split_partition
from dask_support import blobs


def make_partition(x, first_id=0):
    ids = pa.array([f"doc-{first_id + i}" for i in range(len(x))])
    meta = pa.table({"text": [f"text {first_id + i}" for i in range(len(x))]})
    return Partition.from_normalised(0, "mem://0", first_id, ids, x, meta)


def test_take_rows_equals_take_on_strided_views_and_memmaps(tmp_path):
    rng = np.random.default_rng(3)
    xa = rng.standard_normal((500, 17)).astype(np.float32)
    rows = rng.permutation(500)[:123]
    expected = np.take(np.ascontiguousarray(xa[:, :-1]), rows, axis=0)
    got = gather_rows(xa[:, :-1], rows)
    assert got.flags.c_contiguous and np.array_equal(got, expected)
    np.save(tmp_path / "x.npy", xa)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert np.array_equal(np.asarray(gather_rows(mapped[:, :-1], rows)), expected)


@pytest.mark.parametrize("release", [False, True])
def test_split_is_a_stable_sort_by_label_cut_at_the_bounds(release):
    x = blobs(400, 6, 4, seed=9)
    part = make_partition(x)
    ids, text = part.ids.to_pylist(), part.metadata.column("text").to_pylist()
    xs = np.array(part.x)
    columns = OutputColumns("id", "embedding", partition_stats(part).column_schema)
    assignment = assign_partition(part, x[[0, 100, 200, 300]], 64)
    plan = plan_writes(assignment.summary.counts[None], max_rows=70)
    bounds = plan.partition_bounds(0)
    pieces = split_partition(part, assignment, bounds, columns, release=release)
    assert plan.n_groups > 3 and [p.num_rows for p in pieces] == list(np.diff(bounds))
    order = np.argsort(assignment.labels, kind="stable")  # the NumPy reference
    table = pa.concat_tables(pieces)
    assert table.column("id").to_pylist() == [ids[i] for i in order]
    assert table.column("text").to_pylist() == [text[i] for i in order]
    embeddings = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert np.array_equal(embeddings, xs[order])
    assert np.array_equal(table.column("l2_dist_to_cent").to_numpy(), assignment.l2[order])
    assert (part.xa is None) == release and (part.ids is None) == release
    if release:
        assert part.__sizeof__() == 0  # Dask may still size it until the scheduler drops it


def test_the_split_drops_the_threads_score_scratch():
    """The fit's and the assignment's score blocks (8-16 MB a thread) are not kept through the write."""
    from kmeans_partition.runner import backend as be

    x = blobs(300, 5, 3, seed=4)
    part = make_partition(x)
    assignment = assign_partition(part, x[[0, 100, 200]], 64)
    kept = be.scratch(np, x, (64, 3))  # a thread's score block, as the fit and the assignment leave it
    assert vars(be._SCRATCH)
    plan = plan_writes(assignment.summary.counts[None], max_rows=100)
    columns = OutputColumns("id", "embedding", partition_stats(part).column_schema)
    split_partition(part, assignment, plan.partition_bounds(0), columns)
    assert not vars(be._SCRATCH)
    assert not np.shares_memory(be.scratch(np, x, (64, 3)), kept)  # a fresh buffer when asked again


def test_a_released_mapped_partition_removes_its_file_and_refuses_use(tmp_path):
    x = blobs(50, 4, 2, seed=2)
    xa = np.hstack([x, np.ones((50, 1), np.float32)])
    path = str(tmp_path / "part.npy")
    np.save(path, xa)
    part = MappedPartition(0, "mem://0", 0, pa.array(range(50)), path, np.ones(50, np.float32), pa.table({}))
    assert np.array_equal(np.asarray(part.x), x)
    part.release()
    assert not os.path.exists(path) and part.__sizeof__() == 0
    with pytest.raises(RuntimeError, match="released"):
        part.xa
    copy = pickle.loads(pickle.dumps(part))  # Dask may still spill it (seen under a memory limit)
    assert (copy.index, copy.source, copy.__sizeof__()) == (0, "mem://0", 0)
    with pytest.raises(RuntimeError, match="released"):
        copy.xa


def test_the_fits_first_step_drops_a_larger_score_block_left_by_the_init():
    """k-means|| leaves a 16 MB block per thread at k=1000 (~2k candidates); the fit needs 8 MB.
    Its first step drops the larger one (and the next steps keep the fit's); the reduction on its
    worker drops the sampling's block before it starts."""
    from kmeans_partition.runner import backend as be
    from kmeans_partition.runner import group_tasks, seeding

    x = blobs(3000, 6, 4, seed=5)
    part = make_partition(x)
    be.drop_scratch()
    big = be.scratch(np, x, (2048, 2000))  # what the sampling passes leave
    group_tasks._lloyd_step(part, None, x[[0, 1000, 2000, 2500]], None, 1 << 20)
    fit_block = vars(be._SCRATCH)["block_np"]
    assert fit_block.size == 3000 * 4 and not np.shares_memory(fit_block, big)  # (rows, k)
    group_tasks._lloyd_step(part, None, x[[0, 1000, 2000, 2500]], None, 1 << 20)
    assert vars(be._SCRATCH)["block_np"] is fit_block  # kept once it fits
    be.scratch(np, x, (2048, 2000))
    seeding.reduce_on_worker(x[:50].astype(np.float32), np.ones(50), 4, [0, 1], 3000)
    assert "block_np" not in vars(be._SCRATCH) or vars(be._SCRATCH)["block_np"].size < 2048 * 2000


def ref(nbytes):
    return PartitionRef("f.parquet", [0], 0, 10, nbytes=nbytes)


def test_spread_places_contiguous_runs_by_bytes_per_thread():
    refs = [ref(n) for n in (50, 30, 30, 20, 20, 20, 10)]
    where = memory_mode.spread(refs, {"b": {"nthreads": 1}, "a": {"nthreads": 1}})
    assert all(w["allow_other_workers"] is True and len(w["workers"]) == 1 for w in where)
    owners = [w["workers"][0] for w in where]
    assert owners == ["a", "a", "b", "b", "b", "b", "b"]  # neighbours together: (0, 1), (2, 3) ... combine locally
    load = {o: sum(r.nbytes for r, w in zip(refs, owners) if w == o) for o in "ab"}
    assert abs(load["a"] - load["b"]) <= 50  # within the largest partition
    where = memory_mode.spread([ref(10)] * 9, {"a": {"nthreads": 2}, "b": {"nthreads": 1}})
    assert [w["workers"][0] for w in where] == ["a"] * 6 + ["b"] * 3
    three = [w["workers"][0] for w in memory_mode.spread([ref(10)] * 8, {w: {"nthreads": 1} for w in "abc"})]
    assert three == sorted(three) and {three.count(w) for w in "abc"} <= {2, 3}
    assert memory_mode.spread([ref(None)], {"a": {"nthreads": 1}}) == [{}]  # JSONL: left to Dask


def test_write_groups_are_sized_by_the_data_per_worker():
    plan = memory_mode.choose("in_memory", 8 << 30, [(0, 1)] * 4)
    assert memory_mode.write_task_bytes(plan, 256 << 20, 4) == 256 << 20  # 2 GiB a worker: capped
    plan = memory_mode.choose("in_memory", 1 << 30, [(0, 1)] * 2)
    assert memory_mode.write_task_bytes(plan, 256 << 20, 2) == (1 << 30) // 2 // 8
    plan = memory_mode.choose("in_memory", 10 << 20, [(0, 1)] * 2)
    assert memory_mode.write_task_bytes(plan, 256 << 20, 2) == memory_mode.WRITE_GROUP_MIN_BYTES
    plan = memory_mode.choose("out_of_core", 1 << 30, [(400 << 20, 1)] * 2)
    assert memory_mode.write_task_bytes(plan, 256 << 20, 2) == plan.partition_bytes // 2
    assert memory_mode.write_window(plan, 3) == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_freed_trims_glibc():
    import ctypes.util

    if "libc.so" not in (ctypes.util.find_library("c") or ""):
        pytest.skip("not glibc")
    assert release_freed() is True


@pytest.mark.parametrize("mode, turned_off", [
    ("always defer defer+madvise [madvise] never\n", True),
    ("[always] defer defer+madvise madvise never\n", True),
    ("always defer defer+madvise madvise [never]\n", False),
    ("always [defer] defer+madvise madvise never\n", False),
    (None, False),  # no THP (the file is absent)
])
def test_huge_page_advice_is_turned_off_only_where_faults_may_compact(tmp_path, monkeypatch, mode, turned_off):
    from numpy._core import multiarray

    from kmeans_partition.runner import worker_memory

    path = tmp_path / "defrag"
    if mode is not None:
        path.write_text(mode)
    before = multiarray._get_madvise_hugepage()
    multiarray._set_madvise_hugepage(True)
    monkeypatch.setattr(worker_memory, "_hugepages_checked", False)
    try:
        assert worker_memory.avoid_hugepage_stalls(str(path)) is turned_off
        assert multiarray._get_madvise_hugepage() is (not turned_off)
        assert worker_memory.avoid_hugepage_stalls(str(path)) is False  # once per process
    finally:
        multiarray._set_madvise_hugepage(before)


def test_arrow_buffers_move_to_the_system_pool_once(monkeypatch):
    from kmeans_partition.runner import worker_memory

    before = pa.default_memory_pool()
    monkeypatch.setattr(worker_memory, "_arrow_pool_set", False)
    if not sys.platform.startswith("linux"):  # glibc's trim is what the switch is for
        assert worker_memory.use_system_arrow_pool() is False and pa.default_memory_pool() is before
        return
    pa.set_memory_pool(pa.mimalloc_memory_pool())
    try:
        kept = pa.array(np.arange(1000))  # allocated before: freed by its own pool later
        assert worker_memory.use_system_arrow_pool() is True
        assert pa.default_memory_pool().backend_name == "system"
        assert pa.array(np.arange(10)).sum().as_py() == 45 and kept.sum().as_py() == 499500
        pa.set_memory_pool(pa.mimalloc_memory_pool())
        assert worker_memory.use_system_arrow_pool() is False  # once per process
    finally:
        pa.set_memory_pool(before)


def test_embedded_cluster_workers_start_with_arrow_on_the_system_pool(monkeypatch):
    """The C++ reader's pool is the process-wide default, chosen by the env var before pyarrow loads;
    a worker started without it shows mimalloc/jemalloc here."""
    from kmeans_partition.runner.cluster import dask_client

    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)

    def pool():
        import pyarrow

        return os.environ.get("ARROW_DEFAULT_MEMORY_POOL"), pyarrow.default_memory_pool().backend_name

    with dask_client(None, n_workers=1) as client:
        assert list(client.run(pool).values()) == [("system", "system")]


def test_a_steps_per_row_checks_hold_no_more_than_a_score_block():
    """Tightening bounds and measuring the most-moved centroids gather rows (and their centroids)
    in chunks: at d=384 their temporaries stay under the fit's 8 MB score block (chunks of 8192 rows
    held 25 MB, which set the heap's high-water mark of the fit at 500k x 384)."""
    import tracemalloc

    from kmeans_partition.runner import kmeans as km
    from kmeans_partition.runner import lloyd

    rng = np.random.default_rng(3)
    x = rng.standard_normal((20_000, 384)).astype(np.float32)
    xa, x_sq = km.augment_rows(x), km.row_sq_norms(x)
    c = x[:1000].copy()
    ca = km.augment_centroids(c, ref=xa)
    labels = rng.integers(0, 1000, len(x)).astype(np.int32)
    rows = np.arange(len(x))
    for measure in (lambda: lloyd._to_assigned(xa, x_sq, ca, labels, rows),
                    lambda: lloyd._nearest_of(xa, x_sq, ca, labels, rows, np.arange(0, 1000, 7))):
        tracemalloc.start()
        try:
            out = measure()
            peak = tracemalloc.get_traced_memory()[1] - out.nbytes
        finally:
            tracemalloc.stop()
        assert peak < 8 << 20
    exact = ((x.astype(np.float64) - c[labels].astype(np.float64)) ** 2).sum(axis=1)
    np.testing.assert_allclose(lloyd._to_assigned(xa, x_sq, ca, labels, rows), exact, rtol=1e-4, atol=1e-3)
