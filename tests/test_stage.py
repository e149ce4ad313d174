"""The whole job through `KMeansStage` on a real LocalCluster: round trip and guarantees."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kmeans_partition.runner.output import OutputError
from kmeans_partition.runner.progress import Progress
from kmeans_partition.runner.stage import KMeansStage
from kmeans_partition.spec import SpecError
from dask_support import blobs, dask_client, write_input  # noqa: F401


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def read_output(out: Path):
    rows = {}
    for folder in sorted(out.glob("centroid=*")):
        centroid = int(folder.name.split("=")[1])
        files = sorted(folder.glob("*.parquet"))
        assert len(files) == 1, folder
        table = pq.read_table(files[0])
        for record in table.to_pylist():
            assert record["id"] not in rows, "an id was written twice"
            rows[record["id"]] = (centroid, record)
    return rows


class Recorder:
    def __init__(self):
        self.events, self.result = [], None

    def on_progress(self, snap, event):
        self.events.append((event, snap.stage, snap.iteration))

    def on_result(self, result):
        self.result = result

    def close(self):
        pass


def test_round_trip(tmp_path, dask_client):
    x = blobs(3000, 24, 6, seed=10)
    write_input(tmp_path / "in", x, files=3)
    before = digest(tmp_path / "in")
    recorder = Recorder()
    stage = KMeansStage(
        n_clusters=6, id_field="id", embedding_field="embedding", input_path=str(tmp_path / "in"),
        output_path=str(tmp_path / "out"), metadata_fields=["text", "lang"], max_samples_per_batch=500,
    )
    result = stage.run(progress=Progress(sinks=[recorder]), client=dask_client)
    assert digest(tmp_path / "in") == before
    out = tmp_path / "out"
    centroids = np.load(out / "kmeans_centroids.npy")
    assert centroids.shape == (6, 24) and centroids.dtype == np.float32
    rows = read_output(out)
    assert sorted(rows) == [f"doc-{j:06d}" for j in range(3000)]
    ids = sorted(rows)
    emb = np.array([rows[i][1]["embedding"] for i in ids], dtype=np.float32)
    np.testing.assert_allclose(emb, x, atol=1e-6)  # the normalised input
    d2 = ((emb[:, None, :].astype(np.float64) - centroids[None].astype(np.float64)) ** 2).sum(-1)
    assigned = np.array([rows[i][0] for i in ids])
    ordered = np.sort(d2, axis=1)
    clear = ordered[:, 1] - ordered[:, 0] > 1e-5  # rows without a near-tie
    assert clear.mean() > 0.99 and np.array_equal(assigned[clear], d2.argmin(1)[clear])
    l2 = np.array([rows[i][1]["l2_dist_to_cent"] for i in ids])
    np.testing.assert_allclose(l2, np.sqrt(d2[np.arange(3000), assigned]), atol=1e-6)
    c = centroids[assigned].astype(np.float64)
    cos = 1 - (emb * c).sum(1) / np.linalg.norm(c, axis=1)
    np.testing.assert_allclose([rows[i][1]["cosine_dist_to_cent"] for i in ids], cos, atol=1e-6)
    assert [rows[i][1]["text"] for i in ids] == [f"text {j}" for j in range(3000)]

    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["n_rows"] == 3000 and manifest["embedding_dim"] == 24
    assert manifest["rows_per_centroid"] == [int((assigned == j).sum()) for j in range(6)]
    assert sum(f["rows"] for f in manifest["files"]) == 3000
    for entry in manifest["files"]:
        assert pq.read_metadata(out / entry["path"]).num_rows == entry["rows"]
    on_disk = sorted(str(p.relative_to(out)) for p in out.glob("centroid=*/*.parquet"))
    assert sorted(entry["path"] for entry in manifest["files"]) == on_disk
    assert manifest["inertia"] == pytest.approx(d2.min(1).sum(), rel=1e-4)
    assert manifest["n_duplicate_ids"] == 0 and manifest["spec"]["n_clusters"] == 6
    assert set(manifest["timings"]) >= {"read", "init", "fit", "assign", "write", "total"}
    assert result["n_iter"] == manifest["n_iter"] >= 1
    assert not list(out.glob("_tmp-*"))
    assert recorder.result["n_rows"] == 3000
    assert ("iteration", "fitting", 1) in recorder.events


def test_refuses_non_empty_output_before_any_work(tmp_path, dask_client):
    x = blobs(100, 4, 2, seed=1)
    write_input(tmp_path / "in", x, files=1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("precious")
    stage = KMeansStage(n_clusters=2, id_field="id", embedding_field="embedding",
                        input_path=str(tmp_path / "in"), output_path=str(tmp_path / "out"))
    with pytest.raises(OutputError, match="not empty"):
        stage.run(client=dask_client)
    assert (tmp_path / "out" / "mine.txt").read_text() == "precious"


def test_overwrite_replaces_previous_output(tmp_path, dask_client):
    x = blobs(400, 8, 3, seed=2)
    write_input(tmp_path / "in", x, files=2)
    common = dict(id_field="id", embedding_field="embedding", input_path=str(tmp_path / "in"),
                  output_path=str(tmp_path / "out"))
    KMeansStage(n_clusters=5, **common).run(client=dask_client)
    KMeansStage(n_clusters=2, overwrite=True, **common).run(client=dask_client)
    assert sorted(p.name for p in (tmp_path / "out").glob("centroid=*")) == ["centroid=0", "centroid=1"]
    assert json.loads((tmp_path / "out" / "_manifest.json").read_text())["n_clusters"] == 2


def test_duplicate_ids_are_kept_and_counted(tmp_path, dask_client):
    x = blobs(200, 4, 2, seed=3)
    write_input(tmp_path / "a", x, files=1)
    write_input(tmp_path / "b", x[:50], files=1)  # ids doc-000000..49 again
    result = KMeansStage(n_clusters=2, id_field="id", embedding_field="embedding",
                         input_path=[str(tmp_path / "a"), str(tmp_path / "b")],
                         output_path=str(tmp_path / "out")).run(client=dask_client)
    assert result["n_rows"] == 250 and result["n_duplicate_ids"] == 50
    total = sum(pq.read_metadata(p).num_rows for p in (tmp_path / "out").glob("centroid=*/*.parquet"))
    assert total == 250


def test_more_clusters_than_rows_is_refused(tmp_path, dask_client):
    write_input(tmp_path / "in", blobs(10, 4, 2, seed=4), files=1)
    stage = KMeansStage(n_clusters=11, id_field="id", embedding_field="embedding",
                        input_path=str(tmp_path / "in"), output_path=str(tmp_path / "out"))
    with pytest.raises(SpecError, match="n_clusters.*10 input rows"):
        stage.run(client=dask_client)
    assert not (tmp_path / "out" / "_manifest.json").exists()


@pytest.mark.parametrize(
    "change, field",
    [({"n_clusters": 0}, "n_clusters"), ({"max_iter": 0}, "max_iter"), ({"tol": -1.0}, "tol"),
     ({"oversampling_factor": 0.0}, "oversampling_factor"), ({"max_samples_per_batch": 0}, "max_samples_per_batch"),
     ({"init": "kmeans++"}, "init"), ({"input_filetype": "csv"}, "input_filetype"),
     ({"metadata_fields": ["id"]}, "metadata_fields"), ({"embedding_field": "id"}, "embedding_field")],
)
def test_invalid_spec_names_the_field(change, field):
    fields = dict(n_clusters=2, id_field="id", embedding_field="embedding", input_path="in", output_path="out")
    fields.update(change)
    with pytest.raises(SpecError) as err:
        KMeansStage(**fields)
    assert err.value.field == field and field in str(err.value)


def _file(path, ids, text_type, vectors):
    pq.write_table(pa.table({
        "id": ids,
        "embedding": pa.array(vectors.tolist(), type=pa.list_(pa.float32())),
        "text": pa.array([f"t{i}" for i in range(len(vectors))], type=text_type),
    }), path)


def test_compatible_column_types_are_unified_across_files(tmp_path, dask_client):
    x = blobs(40, 4, 2, seed=5)
    (tmp_path / "in").mkdir()
    _file(tmp_path / "in" / "a.parquet", [f"a{i}" for i in range(20)], pa.string(), x[:20])
    _file(tmp_path / "in" / "b.parquet", [f"b{i}" for i in range(20)], pa.large_string(), x[20:])
    KMeansStage(n_clusters=2, id_field="id", embedding_field="embedding", input_path=str(tmp_path / "in"),
                output_path=str(tmp_path / "out"), metadata_fields=["text"]).run(client=dask_client)
    rows = read_output(tmp_path / "out")
    assert len(rows) == 40
    schema = pq.read_schema(next((tmp_path / "out").glob("centroid=*/*.parquet")))
    assert schema.field("text").type == pa.large_string()


def test_incompatible_id_types_fail_before_any_output(tmp_path, dask_client):
    from kmeans_partition.runner.read import InputError

    x = blobs(40, 4, 2, seed=6)
    (tmp_path / "in").mkdir()
    _file(tmp_path / "in" / "a.parquet", list(range(20)), pa.string(), x[:20])
    _file(tmp_path / "in" / "b.parquet", [f"b{i}" for i in range(20)], pa.string(), x[20:])
    stage = KMeansStage(n_clusters=2, id_field="id", embedding_field="embedding",
                        input_path=str(tmp_path / "in"), output_path=str(tmp_path / "out"))
    with pytest.raises(InputError, match=r"b\.parquet.*field 'id'.*a\.parquet"):
        stage.run(client=dask_client)
    assert not (tmp_path / "out").exists()


def test_single_file_is_split_by_row_groups_to_feed_every_worker(tmp_path, dask_client):
    from kmeans_partition.runner.stage import _Run

    x = blobs(4000, 4, 2, seed=7)
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(4000)],
                             "embedding": pa.array(x.tolist(), type=pa.list_(pa.float32()))}),
                   tmp_path / "in" / "one.parquet", row_group_size=500)
    stage = KMeansStage(n_clusters=2, id_field="id", embedding_field="embedding",
                        input_path=str(tmp_path / "in"), output_path=str(tmp_path / "out"))
    run = _Run(stage.spec, dask_client, Progress())
    refs = run.plan([f"file://{tmp_path / 'in' / 'one.parquet'}"])
    assert len(refs) == 4 and sum(r.num_rows for r in refs) == 4000  # 2 workers x 2
