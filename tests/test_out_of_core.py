"""Data larger than the cluster's memory: out of core (memory-mapped partitions on worker-local
disk) on real worker processes whose memory limits add up to less than the embeddings, with the
same output bit for bit as the in-memory run; a row group no worker can hold is refused up front."""

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster

from kmeans_partition.runner import memory_mode
from kmeans_partition.runner.errors import InputError
from kmeans_partition.runner.stage import KMeansStage

ROWS, DIM, FILES, ROW_GROUP = 960_000, 256, 6, 16_384  # 983 MB of float32 embeddings
WORKER_LIMIT = 450_000_000  # x 2 workers = 900 MB < the embeddings


def write_blobs(folder: Path, rows: int, dim: int, files: int, row_group: int, seed: int = 3) -> int:
    """Parquet files of un-normalised float32 rows around 6 centres; returns the embedding bytes."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, dim)).astype(np.float32)
    folder.mkdir(parents=True)
    start = 0
    for i, n in enumerate(np.diff(np.linspace(0, rows, files + 1).astype(int))):
        x = centres[rng.integers(6, size=n)] + 0.4 * rng.standard_normal((n, dim), dtype=np.float32)
        x *= 1 + (np.arange(n, dtype=np.float32) % 3)[:, None]
        table = pa.table({
            "id": pa.array(np.arange(start, start + n, dtype=np.int64)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim),
            "lang": pa.array(np.where(np.arange(n) % 2, "en", "de")),
        })
        pq.write_table(table, folder / f"part-{i:03d}.parquet", row_group_size=row_group)
        start += n
    return rows * dim * 4


def run(input_path, output_path, client, **changes):
    fields = dict(n_clusters=24, id_field="id", embedding_field="embedding", input_path=str(input_path),
                  output_path=str(output_path), metadata_fields=["lang"], max_iter=4, report=False)
    return KMeansStage(**{**fields, **changes}).run(client=client)


def output_tables(out: Path) -> dict:
    return {str(p.relative_to(out)): pq.read_table(p) for p in sorted(out.glob("centroid=*/*.parquet"))}


@pytest.mark.timeout(900)  # ~2-3 min on 2 shared cores: 1 GB written, clustered twice, written twice
def test_out_of_core_on_workers_with_less_memory_than_the_data_matches_in_memory(tmp_path, caplog):
    embedding_bytes = write_blobs(tmp_path / "in", ROWS, DIM, FILES, ROW_GROUP)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit=WORKER_LIMIT) as cluster, Client(cluster) as client:
        limits = [w["memory_limit"] for w in client.scheduler_info()["workers"].values()]
        assert sum(limits) < embedding_bytes  # the real limit the nanny enforces
        with caplog.at_level(logging.INFO, logger="kmeans_partition"):
            result = run(tmp_path / "in", tmp_path / "ooc", client)
    assert "memory mode out_of_core" in caplog.text
    plan = result["memory_mode"]
    assert plan["mode"] == "out_of_core" and plan["requested"] == "auto"
    assert plan["data_bytes"] >= embedding_bytes and plan["memory_limit_bytes"] == sum(limits)
    assert json.loads((tmp_path / "ooc" / "_manifest.json").read_text())["memory_mode"] == plan

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        reference = run(tmp_path / "in", tmp_path / "mem", client, memory_mode="in_memory")
    assert reference["memory_mode"]["mode"] == "in_memory"
    assert (tmp_path / "ooc" / "kmeans_centroids.npy").read_bytes() == \
        (tmp_path / "mem" / "kmeans_centroids.npy").read_bytes()
    ooc, mem = output_tables(tmp_path / "ooc"), output_tables(tmp_path / "mem")
    assert list(ooc) == list(mem) and len(ooc) == 24
    for name in mem:
        assert ooc[name].equals(mem[name]), name
    assert sum(t.num_rows for t in ooc.values()) == ROWS
    assert result["rows_per_centroid"] == reference["rows_per_centroid"]
    assert result["inertia"] == reference["inertia"] and result["n_iter"] == reference["n_iter"]


def test_row_group_no_worker_can_hold_is_refused_before_loading(tmp_path):
    write_blobs(tmp_path / "in", 60_000, DIM, 1, row_group=60_000)  # one row group of ~62 MB
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                      memory_limit="100MB") as cluster, Client(cluster) as client:
        with pytest.raises(InputError) as caught:
            run(tmp_path / "in", tmp_path / "out", client)
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    message = str(caught.value)
    assert "part-000.parquet" in message and "row group 0 holds 60000 rows" in message
    assert "memory limit 0.1 GB" in message and "row_group_size" in message


@pytest.mark.parametrize("data, limits, expected", [
    (10 << 20, [(0, 1), (0, 1)], "in_memory"),  # no limit
    (100, [(1000, 1), (1000, 1)], "in_memory"),
    (1001, [(1000, 1), (1000, 1)], "out_of_core"),
])
def test_auto_compares_the_data_with_the_summed_limits(data, limits, expected):
    plan = memory_mode.choose("auto", data, limits)
    assert plan.mode == expected
    forced = memory_mode.choose("out_of_core", data, limits)
    assert forced.mode == "out_of_core" and forced.reason == "asked for"
    if limits[0][0]:
        assert forced.partition_bytes <= memory_mode.MAPPED_FRACTION * 1000


def test_partition_target_grows_with_k_so_partial_sums_stay_small():
    per_row = 4 * 1024 + 40  # d=1024 float32 plus an id
    n_rows = 10_000_000
    data = per_row * n_rows
    # k=10,000: 16 k rows per partition, so that k x d float64 partials are <= 1/8 of the rows
    big = memory_mode.partition_target(10_000, data, n_rows)
    assert big == memory_mode.ROWS_PER_CLUSTER * 10_000 * per_row
    assert 8 * 10_000 * 1024 * 8 <= big
    assert memory_mode.partition_target(100, data, n_rows) == memory_mode.PARTITION_BYTES  # small k: the floor
    assert memory_mode.partition_target(10_000_000, data, n_rows) == memory_mode.PARTITION_BYTES_MAX
    assert memory_mode.partition_target(10_000, data, None) == memory_mode.PARTITION_BYTES  # JSONL: no row count
    # the mode does not change the target (both modes cut alike) unless small workers out of core need less
    roomy = [(64 << 30, 1), (64 << 30, 1)]
    assert memory_mode.choose("out_of_core", data, roomy, big).partition_bytes == big
    assert memory_mode.choose("in_memory", data, roomy, big).partition_bytes == big
    small = [(1 << 30, 1)]
    assert memory_mode.choose("out_of_core", data, small, big).partition_bytes < big


def test_spill_thresholds_are_lowered_for_the_write_and_given_back():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0",
                      memory_limit=2_000_000_000) as cluster, Client(cluster) as client:

        def thresholds(dask_worker):
            manager = dask_worker.memory_manager
            return manager.memory_target_fraction, manager.memory_spill_fraction, dask_worker.data.fast.n

        (before,) = client.run(thresholds).values()
        assert before[0] > memory_mode.SPILL_TARGET and before[1] > memory_mode.SPILL_AT
        client.run(memory_mode.spill_earlier)
        client.run(memory_mode.spill_earlier)  # twice: the worker's own values are kept, not ours
        (lowered,) = client.run(thresholds).values()
        assert lowered[:2] == (memory_mode.SPILL_TARGET, memory_mode.SPILL_AT)
        assert lowered[2] == int(2_000_000_000 * memory_mode.SPILL_TARGET)
        client.run(memory_mode.restore_spill)
        (after,) = client.run(thresholds).values()
        assert after == before
