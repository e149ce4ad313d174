"""The whole job (`KMeansStage`) with partitions held by NumPy and by array-api-strict on a non-default
device: same files, same rows, labels equal but for near-ties, distances and inertia to float tolerance.

The strict run swaps the backend's choice of library in this process (an in-process LocalCluster),
so every kernel of the stage (normalise, stats, k-means||, Lloyd with bounds, assignment, sort by
centroid, split) runs on arrays that refuse any implicit host/device mixing.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster

from kmeans_partition.runner import backend as be
from kmeans_partition.runner.bounds import score_error
from kmeans_partition.runner.kmeans import row_sq_norms
from kmeans_partition.runner.stage import KMeansStage
from dask_support import blobs, write_input


def run_stage(tmp_path, name, x, monkeypatch):
    loaded = []
    if name == "strict":
        xps = pytest.importorskip("array_api_strict")
        device = xps.Device("device1")

        def empty_on(xp, shape):
            loaded.append(shape[0])
            return xps.empty(shape, dtype=xps.float32, device=device)

        monkeypatch.setattr(be, "partition_namespace", lambda backend="auto", importer=None: xps)
        monkeypatch.setattr(be, "empty_on", empty_on)
    out = tmp_path / f"out-{name}"
    stage = KMeansStage(
        n_clusters=7, id_field="id", embedding_field="embedding", input_path=str(tmp_path / "in"),
        output_path=str(out), metadata_fields=["text"], max_samples_per_batch=300, write_second_centroid=True,
    )
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        stage.run(client=client)
    assert sum(loaded) == (len(x) if name == "strict" else 0)  # every row was loaded onto the device
    rows = {}
    for path in sorted(out.glob("centroid=*/*.parquet")):
        centroid = int(path.parent.name.split("=")[1])
        table = pq.read_table(path)
        ids = table.column("id").to_pylist()
        assert ids == sorted(ids)  # input order inside a file: the stable sort by centroid
        for record in table.to_pylist():
            rows[record["id"]] = (centroid, record)
    return np.load(out / "kmeans_centroids.npy"), rows, json.loads((out / "_manifest.json").read_text())


def test_stage_round_trip_on_numpy_and_strict_device(tmp_path, monkeypatch):
    x = blobs(2400, 16, 7, seed=21, spread=0.35)
    write_input(tmp_path / "in", x, files=3)
    c_np, rows_np, man_np = run_stage(tmp_path, "numpy", x, monkeypatch)
    c_st, rows_st, man_st = run_stage(tmp_path, "strict", x, monkeypatch)
    ids = sorted(rows_np)
    assert ids == sorted(rows_st) == [f"doc-{j:06d}" for j in range(2400)]
    np.testing.assert_allclose(c_st, c_np, atol=1e-5)
    emb = np.array([rows_st[i][1]["embedding"] for i in ids], dtype=np.float32)
    np.testing.assert_allclose(emb, x, atol=1e-6)
    lab_np = np.array([rows_np[i][0] for i in ids])
    lab_st = np.array([rows_st[i][0] for i in ids])
    d2 = ((x[:, None, :].astype(np.float64) - c_st[None].astype(np.float64)) ** 2).sum(-1)
    rows = np.arange(len(x))
    tie = np.abs(d2[rows, lab_np] - d2[rows, lab_st]) <= 2 * score_error(row_sq_norms(x), c_st)
    assert not ((lab_np != lab_st) & ~tie).any()
    ref = d2.argmin(1)  # float64 reference
    assert not ((lab_st != ref) & ~(np.abs(d2[rows, ref] - d2[rows, lab_st]) <= 2 * score_error(row_sq_norms(x), c_st))).any()
    for column in ("l2_dist_to_cent", "cosine_dist_to_cent", "margin"):
        a = np.array([rows_np[i][1][column] for i in ids], dtype=np.float64)
        b = np.array([rows_st[i][1][column] for i in ids], dtype=np.float64)
        np.testing.assert_allclose(b[lab_np == lab_st], a[lab_np == lab_st], atol=2e-5)
    np.testing.assert_allclose(np.sqrt(d2[rows, lab_st]),
                               [rows_st[i][1]["l2_dist_to_cent"] for i in ids], atol=1e-6)
    assert man_st["inertia"] == pytest.approx(man_np["inertia"], rel=1e-5)
    assert man_st["rows_per_centroid"] == [int((lab_st == j).sum()) for j in range(7)]
