"""Assign, plan, split and write on local files (no Dask), checked against NumPy recomputation."""

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distributed.protocol.pickle import dumps, loads

from kmeans_partition.runner import parquet_files, write
from kmeans_partition.runner.partition import Partition, partition_stats
from kmeans_partition.runner.write import (
    OutputColumns,
    assign_partition,
    distances_to_assigned,
    embedding_array,
    plan_writes,
    rows_per_write_task,
    split_partition,
    write_group,
)
from kmeans_partition.runner.write_tasks import remove_planned
from dask_support import blobs


def make_partition(index, x, first_id):
    ids = pa.array([f"doc-{first_id + i}" for i in range(len(x))])
    meta = pa.table({"text": [f"text {first_id + i}" for i in range(len(x))]})
    return Partition.from_normalised(index, f"mem://{index}", first_id, ids, x, meta)


def write_all(out, parts, centroids, rows_per_file=1_000_000, max_rows=2_000_000):
    """The four steps of write.py in one process, as stage.py runs them on the workers."""
    columns = OutputColumns("id", "embedding", partition_stats(parts[0]).column_schema)
    assigned = [assign_partition(p, centroids, 50) for p in parts]
    plan = plan_writes(np.stack([a.summary.counts for a in assigned]), max_rows, rows_per_file)
    pieces = [split_partition(p, a, plan.partition_bounds(i), columns) for i, (p, a) in enumerate(zip(parts, assigned))]
    written = []
    for g in range(plan.n_groups):
        present, rows = plan.group_pieces(g)
        written += write_group(plan.group_files(g), rows, str(out), {}, *[pieces[p][g] for p in present])
    return assigned, plan, written


def test_one_file_per_centroid_with_every_row_once(tmp_path):
    x = blobs(900, 8, 5, seed=1)
    parts = [make_partition(i, x[i * 300:(i + 1) * 300], i * 300) for i in range(3)]
    centroids = x[[0, 100, 200, 300, 400, 500]]
    assigned, plan, written = write_all(tmp_path / "out", parts, centroids, max_rows=250)
    counts = np.sum([a.summary.counts for a in assigned], axis=0)
    assert plan.n_groups > 2  # several write tasks, each with pieces of several partitions
    assert sorted(c for c, _, _ in written) == list(np.flatnonzero(counts))
    seen = []
    for centroid, relative, rows in written:
        assert relative == f"centroid={centroid}/part-00000.parquet"
        table = pq.read_table(tmp_path / "out" / relative)
        assert table.num_rows == rows == counts[centroid]
        assert table.schema.field("embedding").type == pa.list_(pa.float32())
        assert table.column_names == ["id", "embedding", "text", "l2_dist_to_cent", "cosine_dist_to_cent"]
        ids = table.column("id").to_pylist()
        rows_idx = np.array([int(i.split("-")[1]) for i in ids])
        assert list(rows_idx) == sorted(rows_idx)  # input order kept inside a centroid
        emb = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
        np.testing.assert_array_equal(emb, x[rows_idx])
        d2 = ((x[rows_idx, None, :].astype(np.float64) - centroids[None].astype(np.float64)) ** 2).sum(-1)
        assert (d2.argmin(1) == centroid).all()
        c = centroids[centroid].astype(np.float64)
        np.testing.assert_allclose(table.column("l2_dist_to_cent").to_numpy(), np.sqrt(d2[:, centroid]), atol=1e-6)
        cos = 1 - x[rows_idx].astype(np.float64) @ c / np.linalg.norm(c)
        np.testing.assert_allclose(table.column("cosine_dist_to_cent").to_numpy(), cos, atol=1e-6)
        assert table.column("text").to_pylist() == [f"text {i}" for i in rows_idx]
        seen += ids
    assert sorted(seen) == sorted(f"doc-{i}" for i in range(900))
    d2_all = ((x[:, None, :].astype(np.float64) - centroids[None].astype(np.float64)) ** 2).sum(-1)
    total = sum(a.summary.inertia for a in assigned)
    assert total == pytest.approx(d2_all.min(1).sum(), rel=1e-5)


def test_large_centroid_split_past_rows_per_file_across_partitions(tmp_path):
    x = blobs(120, 4, 1, seed=2)
    parts = [make_partition(i, x[i * 40:(i + 1) * 40], i * 40) for i in range(3)]
    _, plan, written = write_all(tmp_path / "out", parts, x[:1], rows_per_file=50, max_rows=60)
    assert written == [
        (0, "centroid=0/part-00000.parquet", 50),
        (0, "centroid=0/part-00001.parquet", 50),
        (0, "centroid=0/part-00002.parquet", 20),
    ]
    assert plan.n_groups == 3 and [f.last for f in plan.files] == [False, False, True]
    ids = [pq.read_table(tmp_path / "out" / p).column("id").to_pylist() for _, p, _ in written]
    assert sum(ids, []) == [f"doc-{i}" for i in range(120)]  # partition order, then row order, across files


def brute_force_rows(counts, rows_per_file):
    """{(partition, centroid, file index): rows} by walking every row in (partition, row) order."""
    out, seen = {}, np.zeros(counts.shape[1], dtype=np.int64)
    for p in range(counts.shape[0]):
        for c in range(counts.shape[1]):
            for _ in range(counts[p, c]):
                key = (p, c, int(seen[c] // rows_per_file))
                out[key] = out.get(key, 0) + 1
                seen[c] += 1
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plan_matches_a_row_by_row_walk(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 9, size=(4, 6)) * (rng.random((4, 6)) < 0.7)
    counts[:, 2] = 0  # an empty centroid gets no file
    plan = plan_writes(counts, max_rows=7, rows_per_file=5)
    expected = brute_force_rows(counts, 5)
    files = [(f.centroid, f.index) for f in plan.files]
    assert files == sorted({(c, i) for _, c, i in expected})
    assert all(f.rows <= 5 for f in plan.files) and sum(f.rows for f in plan.files) == counts.sum()
    for g in range(plan.n_groups):
        group = plan.group_files(g)
        assert sum(f.rows for f in group) <= 7 or len(group) == 1
        present, rows = plan.group_pieces(g)
        for f, file in enumerate(group):
            for i, p in enumerate(present):
                assert rows[i, f] == expected.get((p, file.centroid, file.index), 0)
        assert set(present) == {p for p, c, i in expected if (c, i) in {(f.centroid, f.index) for f in group}}
    for p in range(counts.shape[0]):
        bounds = plan.partition_bounds(p)
        sizes = np.diff(bounds)
        for g in range(plan.n_groups):
            keys = {(f.centroid, f.index) for f in plan.group_files(g)}
            assert sizes[g] == sum(n for (q, c, i), n in expected.items() if q == p and (c, i) in keys)
        assert bounds[-1] == counts[p].sum()


def test_rows_per_write_task_bounds_memory_and_feeds_every_thread():
    assert rows_per_write_task(10_000_000, 128, 2, task_bytes=576 * 1000) == 1000  # memory bound
    assert rows_per_write_task(8_000, 128, 2) == 1000  # >= 4 tasks per thread
    assert rows_per_write_task(1, 4, 64) == 1


def test_distances_are_float32_and_match_float64():
    x = blobs(50, 6, 2, seed=3)
    c = x[:3] * 0.5
    labels = np.arange(50) % 3
    l2, cos, margin = distances_to_assigned(x, c, labels, 7)
    assert l2.dtype == np.float32 and cos.dtype == np.float32 and np.isnan(margin).all()
    ref = np.linalg.norm(x.astype(np.float64) - c[labels].astype(np.float64), axis=1)
    np.testing.assert_allclose(l2, ref, rtol=1e-6)


@pytest.mark.parametrize("n,d", [(0, 3), (4, 3)])
def test_embedding_array_round_trip(n, d):
    x = np.arange(n * d, dtype=np.float32).reshape(n, d)
    arr = embedding_array(x)
    assert arr.type == pa.list_(pa.float32())
    assert np.array(arr.to_pylist(), dtype=np.float32).reshape(n, d).tolist() == x.tolist()


def test_embedding_array_splits_before_int32_offsets_overflow():
    x = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    arr = embedding_array(x, max_values=7)  # 2 rows (6 values) per chunk
    assert [len(chunk) for chunk in arr.chunks] == [2, 2, 1]
    assert arr.type == pa.list_(pa.float32())
    assert np.array(arr.to_pylist(), dtype=np.float32).tolist() == x.tolist()


def test_split_pieces_own_their_buffers():
    x = blobs(200, 8, 4, seed=5)
    part = make_partition(0, x, 0)
    columns = OutputColumns("id", "embedding", partition_stats(part).column_schema)
    assignment = assign_partition(part, x[[0, 50, 100, 150]], 64)
    plan = plan_writes(assignment.summary.counts[None], max_rows=60)
    pieces = split_partition(part, assignment, plan.partition_bounds(0), columns)
    assert len(pieces) == plan.n_groups > 1
    base = part.xa.__array_interface__["data"][0]
    for piece in pieces:
        values = piece.column("embedding").chunk(0).values
        address = values.buffers()[1].address
        assert not base <= address < base + part.xa.nbytes  # a copy, not a view of the partition
    assert sum(p.num_rows for p in pieces) == 200


def test_output_columns_survive_dask_pickling_and_are_frozen():
    schema = pa.schema([("id", pa.large_string()), ("text", pa.string())])
    columns = OutputColumns("doc_id", "vec", schema)
    restored = loads(dumps(columns))
    assert restored == columns and restored is not columns
    assert restored.column_schema.equals(schema)
    with pytest.raises(dataclasses.FrozenInstanceError):
        columns.id_field = "x"


def test_failed_write_group_removes_the_files_it_created(tmp_path, monkeypatch):
    x = blobs(300, 4, 3, seed=6)
    part = make_partition(0, x, 0)
    columns = OutputColumns("id", "embedding", partition_stats(part).column_schema)
    assignment = assign_partition(part, x[[0, 100, 200]], 64)
    plan = plan_writes(assignment.summary.counts[None], max_rows=10_000)
    (piece,) = split_partition(part, assignment, plan.partition_bounds(0), columns)
    real, calls = write.write_file, []

    def fail_third(fs, path, table):
        calls.append(path)
        if len(calls) == 3:
            with fs.open_output_stream(path) as handle:
                handle.write(b"partial")
            raise OSError("injected: storage went away")
        real(fs, path, table)

    monkeypatch.setattr(write, "write_file", fail_third)
    _, rows = plan.group_pieces(0)
    with pytest.raises(OSError, match="injected"):
        write_group(plan.group_files(0), rows, str(tmp_path / "out"), {}, piece)
    assert len(calls) == 3
    assert not list((tmp_path / "out").rglob("*.parquet"))


def test_remove_planned_deletes_only_this_runs_files(tmp_path):
    from fsspec.implementations.local import LocalFileSystem

    out = tmp_path / "out"
    for rel in ("centroid=0/part-00000.parquet", "centroid=1/part-00000.parquet", "centroid=1/other.txt"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("x")
    planned = ["centroid=0/part-00000.parquet", "centroid=1/part-00000.parquet", "centroid=2/part-00000.parquet"]
    removed = remove_planned(LocalFileSystem(), str(out), planned)
    assert sorted(removed) == [str(out / p) for p in planned[:2]]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["centroid=1", "centroid=1/other.txt"]


def test_float_columns_are_written_without_a_dictionary(tmp_path):
    x = blobs(400, 6, 2, seed=7)
    _, _, written = write_all(tmp_path / "out", [make_partition(0, x, 0)], x[[0, 1]])
    meta = pq.ParquetFile(tmp_path / "out" / written[0][1]).metadata
    encodings = {meta.schema.column(i).path: meta.row_group(0).column(i).encodings for i in range(meta.num_columns)}
    assert encodings.keys() == {"id", "embedding.list.element", "text", "l2_dist_to_cent", "cosine_dist_to_cent"}
    for name, used in encodings.items():
        dictionary = any("DICTIONARY" in e for e in used)
        assert dictionary == (name in ("id", "text")), (name, used)
    assert meta.row_group(0).column(0).compression == "SNAPPY"


def test_a_large_file_is_written_in_row_groups_with_bounded_writer_memory(tmp_path):
    """A 24 MiB file: row groups of about `ROW_GROUP_BYTES`, the writer's Arrow memory below the
    file's size (one row group of it all took ~1.9x), the rows unchanged."""
    from pyarrow.fs import LocalFileSystem

    n, d = 48_000, 128
    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    table = pa.table({"id": pa.array(np.arange(n)), "embedding": write.embedding_array(x),
                      "l2_dist_to_cent": pa.array(np.random.default_rng(1).random(n))})
    before = pa.default_memory_pool()
    counting = pa.proxy_memory_pool(pa.system_memory_pool())
    pa.set_memory_pool(counting)
    try:
        write.write_file(LocalFileSystem(), str(tmp_path / "f.parquet"), table)
    finally:
        pa.set_memory_pool(before)
    meta = pq.ParquetFile(tmp_path / "f.parquet").metadata
    expected_groups = -(-n // parquet_files.row_group_rows(table))
    assert meta.num_row_groups == expected_groups and expected_groups >= table.nbytes // parquet_files.ROW_GROUP_BYTES
    assert counting.max_memory() < table.nbytes / 2, (counting.max_memory(), table.nbytes)
    assert pq.read_table(tmp_path / "f.parquet").equals(table)


def test_a_file_s_layout_does_not_depend_on_where_its_pieces_were_held(tmp_path):
    """A file's pieces as slices of the split's tables (on the writing worker) or as compact copies
    (sent from another): `Table.nbytes` differs by the validity bitmaps (so row groups moved by a
    row after a lost worker moved a write); the content bytes, row groups and file bytes do not."""
    from distributed.protocol import deserialize, serialize
    from pyarrow.fs import LocalFileSystem

    rng = np.random.default_rng(0)
    n = 30_000
    table = pa.table({
        "id": pa.array([f"doc-{i}" for i in range(n)]),
        "embedding": pa.array(list(rng.random((n, 32), dtype=np.float32)), pa.list_(pa.float32())),
        "text": pa.array([None if i % 7 == 0 else "ab" * (i % 5) for i in range(n)]),
        "flag": pa.array(rng.random(n) < 0.5),
        "l2_dist_to_cent": pa.array(rng.random(n).astype(np.float32)),
    })
    # sizes where the old estimate (nbytes / rows) put 26,837 rows in the first group here, 26,838 there
    pieces = [table.slice(3, 11_111), table.slice(11_114, 16_889)]
    local = pa.concat_tables(pieces)
    sent = pa.concat_tables([deserialize(*serialize(piece)) for piece in pieces])  # as Dask moves them
    assert local.nbytes != sent.nbytes  # what the estimate used to read
    assert parquet_files.content_bytes(local) == parquet_files.content_bytes(sent)
    assert abs(parquet_files.content_bytes(local) - local.nbytes) < 0.05 * local.nbytes
    files = []
    for i, variant in enumerate([local, sent]):
        parquet_files.write_file(LocalFileSystem(), str(tmp_path / f"{i}.parquet"), variant)
        files.append((tmp_path / f"{i}.parquet").read_bytes())
    assert files[0] == files[1] and pq.ParquetFile(tmp_path / "0.parquet").metadata.num_row_groups > 1
