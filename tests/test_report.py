"""The run's summary (sizes, distances, margins, history) and `kmeans-partition report`."""

import base64
import io
import json
import re
from html.parser import HTMLParser

import shutil

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from kmeans_partition.cli import main
from kmeans_partition.runner.report import SAMPLE_ROWS, run_report
from kmeans_partition.runner.report_html import DPI, FIGURE_SIZE
from kmeans_partition.runner.stage import KMeansStage
from kmeans_partition.runner.summary import AssignSummary
from dask_support import blobs, dask_client, write_input  # noqa: F401
from report_support import check_summary, read_rows, recompute
import s3_support


def run_job(dask_client, input_path, output_path, **options):
    stage = KMeansStage(
        n_clusters=6, id_field="id", embedding_field="embedding", input_path=input_path,
        output_path=output_path, max_samples_per_batch=300, **options,
    )
    return stage.run(client=dask_client)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, dask_client):
    """One small run with overlapping clusters (so there are boundary rows), second-centroid columns on."""
    root = tmp_path_factory.mktemp("report")
    write_input(root / "in", blobs(2400, 8, 6, seed=3, spread=0.8), files=3)
    result = run_job(dask_client, str(root / "in"), str(root / "out"), write_second_centroid=True)
    return root / "out", result


def expected_for(fs, root, manifest):
    rows = read_rows(fs, root, manifest)
    with fs.open(f"{root}/kmeans_centroids.npy", "rb") as handle:
        centroids = np.load(handle)
    written_cosine = rows["table"].column("cosine_dist_to_cent").to_numpy()
    return rows, recompute(rows["x"], rows["label"], centroids, written_cosine)


def test_summary_equals_numpy_recomputation_from_the_output(local_run):
    out, result = local_run
    manifest = json.loads((out / "_manifest.json").read_text())
    rows, expected = expected_for(fsspec.filesystem("file"), str(out), manifest)
    assert manifest["rows_per_centroid"] == expected["sizes"].tolist()
    check_summary(manifest["summary"], expected)
    assert manifest["summary"]["boundary_rows"][0] > 0  # the data has boundary rows at every threshold
    table = rows["table"]
    clear = expected["clear_second"]
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(table.column("second_centroid").to_numpy()[clear], expected["second"][clear])
    np.testing.assert_allclose(table.column("margin").to_numpy(), expected["margin"], atol=1e-6)
    assert result["summary"] == manifest["summary"]


def test_iteration_history_in_the_manifest(local_run):
    out, _ = local_run
    manifest = json.loads((out / "_manifest.json").read_text())
    history = manifest["iterations"]
    assert [h["iteration"] for h in history] == list(range(1, manifest["n_iter"] + 1))
    assert all(h["seconds"] >= 0 and 0 < h["rows_computed"] <= manifest["n_rows"] for h in history)
    assert history[0]["rows_computed"] == manifest["n_rows"]  # the first step computes every row
    assert all(h["centroid_shift"] > manifest["tol_abs"] for h in history[:-1])  # else it had stopped there
    if history[-1]["centroid_shift"] <= manifest["tol_abs"]:
        assert manifest["converged"]
    if not manifest["converged"]:
        assert len(history) == manifest["spec"]["max_iter"]
    inertia = [h["inertia"] for h in history]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(inertia, inertia[1:]))  # Lloyd never increases inertia


def test_summaries_of_partitions_merge_to_the_summary_of_all_rows():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 1000)
    cosine = rng.random(1000).astype(np.float32)
    margin = (rng.random(1000) * 0.05 - 0.002).astype(np.float32)
    whole = AssignSummary.from_rows(labels, cosine, margin, 5)
    merged = AssignSummary.merge([AssignSummary.from_rows(labels[s], cosine[s], margin[s], 5)
                                  for s in (slice(0, 300), slice(300, 310), slice(310, 1000))])
    assert merged.to_dict() == whole.to_dict()
    assert whole.to_dict()["margin_hist"]["below"] == int((margin < 0).sum()) > 0


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))


def check_page(page: str) -> list:
    """Self-contained (no external reference), parses, four PNG plots of the documented size."""
    without_data = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "http" not in without_data and "url(" not in without_data
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert "script" not in parser.tags and "link" not in parser.tags and parser.tags[0] == "html"
    assert len(parser.images) == 4
    sizes = []
    for image in parser.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        decoded = Image.open(io.BytesIO(base64.b64decode(image["src"][len(prefix):])))
        decoded.load()
        sizes.append(decoded.size)
    assert sizes == [(int(FIGURE_SIZE[0] * DPI), int(FIGURE_SIZE[1] * DPI))] * 4
    return parser.images


def test_run_writes_a_self_contained_html_report(local_run):
    out, result = local_run
    assert result["report_path"] == f"file://{out.resolve()}/report.html"
    check_page((out / "report.html").read_text())


def test_report_command_prints_what_the_manifest_says(local_run, tmp_path, capsys):
    out, _ = local_run
    manifest = json.loads((out / "_manifest.json").read_text())
    assert main(["report", str(out), "--html", str(tmp_path / "page.html")]) == 0
    printed = capsys.readouterr().out
    sizes = np.array(manifest["rows_per_centroid"])
    n, k = sizes.sum(), len(sizes)
    assert f"min {sizes.min():,}, median {np.median(sizes):,.1f}, max {sizes.max():,}" in printed
    assert f"(largest {100 * sizes.max() / n:.2f}% of rows)" in printed
    assert f"sum(size^2) is {k * (sizes.astype(float) ** 2).sum() / n ** 2:.2f}x" in printed
    state = "converged" if manifest["converged"] else "did not converge"
    assert f"{state} after {manifest['n_iter']} of {manifest['spec']['max_iter']} iterations" in printed
    shares = [f"{100 * c / n:.2f}%" for c in manifest["summary"]["boundary_rows"]]
    assert f"boundary rows (margin < 0.005 / 0.01 / 0.02): {' / '.join(shares)}" in printed
    assert "sampled" not in printed
    check_page((tmp_path / "page.html").read_text())


def test_report_with_a_summary_reads_no_parquet_file(local_run, tmp_path):
    out, _ = local_run
    copy = tmp_path / "out"
    copy.mkdir()
    for name in ("_manifest.json", "kmeans_centroids.npy"):
        (copy / name).write_bytes((out / name).read_bytes())  # no centroid=N/ folders at all
    lines, manifest = run_report(str(copy), html_path=str(tmp_path / "page.html"))
    assert manifest["summary"]["sampled_rows"] is None and len(lines) == 7
    data = json.loads((copy / "_manifest.json").read_text())
    del data["summary"]
    (copy / "_manifest.json").write_text(json.dumps(data))
    with pytest.raises(FileNotFoundError):  # without one it would have to read them
        run_report(str(copy))


def test_report_without_a_summary_samples_the_parquet_files(local_run, tmp_path):
    out = shutil.copytree(local_run[0], tmp_path / "out")
    manifest = json.loads((out / "_manifest.json").read_text())
    (out / "_manifest.json").write_text(json.dumps({key: value for key, value in manifest.items() if key != "summary"}))
    lines, everything = run_report(str(out))  # 2400 rows < SAMPLE_ROWS: the sample is every row
    _, few = run_report(str(out), sample_rows=300)
    assert 2400 < SAMPLE_ROWS
    expected = {**manifest["summary"], "sampled_rows": 2400}
    assert everything["summary"] == expected
    assert "estimated from 2,400 sampled rows" in lines[-1]
    assert 300 <= few["summary"]["sampled_rows"] < 320 and few["summary"]["rows"] == few["summary"]["sampled_rows"]


def test_no_report_option_and_a_missing_output(tmp_path, dask_client, capsys):
    write_input(tmp_path / "in", blobs(400, 8, 3, seed=5), files=1)
    result = run_job(dask_client, str(tmp_path / "in"), str(tmp_path / "out"), report=False)
    assert result["report_path"] is None and not (tmp_path / "out" / "report.html").exists()
    names = pq.read_schema(next((tmp_path / "out").glob("centroid=*/*.parquet"))).names
    assert "cosine_dist_to_cent" in names and "second_centroid" not in names and "margin" not in names
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "_manifest.json: not found" in capsys.readouterr().err


def test_s3_summary_and_report(s3_server, dask_client, tmp_path):
    endpoint, options = s3_server
    bucket = s3_support.create_bucket(endpoint, "kmp-report")
    write_input(tmp_path / "in", blobs(1500, 8, 6, seed=7, spread=0.8), files=2)
    fs = fsspec.filesystem("s3", **options)
    fs.put(str(tmp_path / "in"), f"{bucket}/in", recursive=True)
    result = run_job(dask_client, f"{bucket}/in", f"{bucket}/out", storage_options=options)
    fs.invalidate_cache()
    manifest = json.loads(fs.cat(f"{bucket}/out/_manifest.json"))
    _, expected = expected_for(fs, f"{bucket[5:]}/out", manifest)
    check_summary(manifest["summary"], expected)
    check_page(fs.cat(f"{bucket}/out/report.html").decode())
    assert result["report_path"] == f"{bucket}/out/report.html"
    lines, _ = run_report(f"{bucket}/out", options)
    assert lines[0] == f"kmeans-partition report: {bucket}/out"


def test_run_flags_for_second_centroid_and_report():
    from kmeans_partition.cli import build_parser, job_fields

    base = ["run", "--input", "in", "--output", "out", "--n-clusters", "2", "--id-field", "id",
            "--embedding-field", "e"]
    fields = job_fields(build_parser().parse_args(base + ["--write-second-centroid", "--no-report"]))
    assert fields["write_second_centroid"] is True and fields["report"] is False
    assert "report" not in job_fields(build_parser().parse_args(base))  # the spec's default (True) applies


def test_open_writes_a_page_and_opens_it(local_run, monkeypatch, capsys):
    opened = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    assert main(["report", str(local_run[0]), "--open"]) == 0
    assert len(opened) == 1 and opened[0].startswith("file:///") and opened[0].endswith(".html")
    page = opened[0][len("file://"):]
    check_page(open(page, encoding="utf-8").read())
    assert f"html: {page}" in capsys.readouterr().out


def test_run_summary_on_the_terminal_names_imbalance_and_boundary_share(local_run):
    from kmeans_partition.runner.progress import TerminalSink

    _, result = local_run
    stream = io.StringIO()
    TerminalSink(stream=stream).on_result({**result, "output_path": "out"})
    sizes = np.array(result["rows_per_centroid"], dtype=float)
    imbalance = len(sizes) * (sizes ** 2).sum() / sizes.sum() ** 2
    share = result["summary"]["boundary_rows"][1] / sizes.sum()
    assert f"pairwise cost {imbalance:.2f}x that of equal clusters; {share:.2%} of rows within margin 0.01" \
        in stream.getvalue()
    assert f"report: {result['report_path']}" in stream.getvalue()


def test_bench_report_runs_on_a_tiny_output(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_report.py"
    spec = importlib.util.spec_from_file_location("bench_report", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    seconds = bench.main(["--rows", "5000", "--k", "40", "--dim", "8", "--out", str(tmp_path)])
    assert seconds > 0 and "report on 5,000 rows, k=40" in capsys.readouterr().out
    assert not list((tmp_path / "out").glob("centroid=*"))
    check_page((tmp_path / "out" / "page.html").read_text())


def test_one_centroid_has_no_margins_and_still_renders(tmp_path):
    import pyarrow as pa

    from kmeans_partition.runner.partition import Partition, partition_stats
    from kmeans_partition.runner.report_html import render_html
    from kmeans_partition.runner.write import OutputColumns, assign_partition, split_partition

    x = blobs(50, 4, 2, seed=1)
    part = Partition.from_normalised(0, "mem://0", 0, pa.array([f"doc-{i}" for i in range(50)]), x)
    assignment = assign_partition(part, x[:1], 16, second_centroid=True)
    columns = OutputColumns("id", "embedding", partition_stats(part).column_schema)
    (table,) = split_partition(part, assignment, np.array([0, 50]), columns)
    assert table.column("second_centroid").null_count == table.column("margin").null_count == 50
    summary = assignment.summary.stats.to_dict()
    assert summary["rows_with_margin"] == 0 and summary["boundary_rows"] == [0, 0, 0]
    manifest = {"rows_per_centroid": [50], "n_rows": 50, "n_clusters": 1, "summary": summary,
                "iterations": [], "engine": "dask", "converged": True, "n_iter": 1}
    check_page(render_html(manifest))


def test_merge_in_order_adds_partitions_in_index_order_whatever_the_arrival():
    from kmeans_partition.runner.summary import MergeInOrder

    rng = np.random.default_rng(1)
    parts = [AssignSummary.from_rows(rng.integers(0, 3, 40), rng.random(40), rng.random(40) * 0.03, 3)
             for _ in range(4)]
    merging = MergeInOrder(4)
    for i in (2, 0, 3, 1):
        merging.add(i, parts[i])
    expected = AssignSummary.merge([AssignSummary.merge([AssignSummary.merge(parts[:2]), parts[2]]), parts[3]])
    assert merging.result().to_dict() == expected.to_dict() and not merging.waiting
    with pytest.raises(ValueError, match="1 of 2"):
        incomplete = MergeInOrder(2)
        incomplete.add(0, parts[0])
        incomplete.result()
