"""`kmeans-partition report OUTPUT`: a finished output at a glance, from its manifest.

Reads ``_manifest.json`` through fsspec (so ``s3://`` works). The summary the assign stage
recorded (``summary``, see `runner.summary`) is used as is; an output without one (written
by an older version) gets one estimated from at most `SAMPLE_ROWS` rows of its parquet
files and the centroids. The numbers: cluster sizes, the pairwise stage's cost relative to
equal clusters (``imbalance``), convergence, distances and the share of boundary rows.
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Any, Optional

import numpy as np

from .output import CENTROIDS, MANIFEST, OutputLocation, open_output
from .summary import AssignSummary, distances_to_assigned, headline, second_nearest

#: Rows read at most to estimate a missing summary.
SAMPLE_ROWS = 100_000
#: Files opened at most to estimate a missing summary (chosen at random, by size).
SAMPLE_FILES = 200


def load_manifest(out: OutputLocation) -> dict[str, Any]:
    """The output's manifest; a clear error when it is missing (the job did not finish)."""
    path = out.path(MANIFEST)
    if not out.fs.exists(path):
        raise FileNotFoundError(f"{out.url(MANIFEST)}: not found; is {out.uri!r} a finished kmeans-partition output?")
    with out.fs.open(path, "r") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as err:
            raise ValueError(f"{out.url(MANIFEST)}: not valid JSON ({err})") from None


def _load_centroids(out: OutputLocation) -> np.ndarray:
    with out.fs.open(out.path(CENTROIDS), "rb") as handle:
        return np.load(handle)


def _read_rows(out: OutputLocation, relative: str, embedding_field: str, rows: int) -> np.ndarray:
    """The first `rows` embeddings of one output file, (n, d) float32."""
    import pyarrow.parquet as pq

    with out.fs.open(out.path(relative), "rb") as handle:
        batches = pq.ParquetFile(handle).iter_batches(batch_size=rows, columns=[embedding_field])
        batch = next(batches, None)
    if batch is None or batch.num_rows == 0:
        return np.empty((0, 0), dtype=np.float32)
    column = batch.column(0)
    values = np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    return values.reshape(batch.num_rows, -1)


def sample_summary(
    manifest: dict[str, Any], out: OutputLocation, max_rows: int = SAMPLE_ROWS, seed: int = 0
) -> dict[str, Any]:
    """A summary estimated from a sample: from each chosen file, rows in proportion to its size."""
    files = [f for f in manifest.get("files", []) if f.get("rows", 0) > 0]
    if not files:
        raise ValueError(f"{out.url(MANIFEST)}: lists no files to sample")
    if len(files) > SAMPLE_FILES:
        rows = np.array([f["rows"] for f in files], dtype=np.float64)
        chosen = np.random.default_rng(seed).choice(len(files), SAMPLE_FILES, replace=False, p=rows / rows.sum())
        files = [files[i] for i in sorted(chosen)]
    total = sum(f["rows"] for f in files)
    field = manifest["spec"]["embedding_field"]
    blocks, labels = [], []
    for entry in files:
        take = max(1, math.ceil(max_rows * entry["rows"] / total))
        x = _read_rows(out, entry["path"], field, min(take, entry["rows"]))
        blocks.append(x)
        labels.append(np.full(len(x), int(entry["centroid"]), dtype=np.int32))
    x = np.ascontiguousarray(np.concatenate(blocks), dtype=np.float32)
    label = np.concatenate(labels)
    centroids = _load_centroids(out)
    _, cosine, margin = distances_to_assigned(x, centroids, label, 32768, second_nearest(x, centroids, label))
    return AssignSummary.from_rows(label, cosine, margin, len(centroids)).to_dict(sampled_rows=len(x))


def with_summary(manifest: dict[str, Any], out: OutputLocation, max_rows: int = SAMPLE_ROWS) -> dict[str, Any]:
    """The manifest, with a sampled summary when it has none (parquet files are read only then)."""
    if manifest.get("summary"):
        return manifest
    return {**manifest, "summary": sample_summary(manifest, out, max_rows)}


def engine_name(manifest: dict[str, Any]) -> Optional[str]:
    """The engine that ran: ``engine.chosen`` (older manifests: ``engine`` as a plain name)."""
    engine = manifest.get("engine")
    return engine.get("chosen") if isinstance(engine, dict) else engine


def report_numbers(manifest: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of the terminal summary and the HTML page."""
    sizes = [int(s) for s in manifest.get("rows_per_centroid") or []]
    summary = manifest.get("summary") or {}
    rows = summary.get("rows") or 0
    history = manifest.get("iterations") or []
    numbers: dict[str, Any] = {
        "n_rows": manifest.get("n_rows"),
        "n_clusters": manifest.get("n_clusters"),
        "embedding_dim": manifest.get("embedding_dim"),
        "engine": engine_name(manifest),
        "size_min": min(sizes) if sizes else None,
        "size_median": float(statistics.median(sizes)) if sizes else None,
        "size_max": max(sizes) if sizes else None,
        "empty_clusters": sum(1 for s in sizes if s == 0),
        "converged": manifest.get("converged"),
        "n_iter": manifest.get("n_iter"),
        "max_iter": (manifest.get("spec") or {}).get("max_iter"),
        "last_shift": history[-1]["centroid_shift"] if history else None,
        "tol_abs": manifest.get("tol_abs"),
        "cosine_dist_mean": summary.get("cosine_dist_mean"),
        "cosine_dist_max": max((v for v in summary.get("cosine_dist_max_per_cluster") or [] if v is not None),
                               default=None),
        "thresholds": summary.get("thresholds", []),
        "boundary_shares": [count / rows for count in summary.get("boundary_rows", [])] if rows else [],
        "sampled_rows": summary.get("sampled_rows"),
    }
    numbers.update(headline(manifest))
    return numbers


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def summary_lines(manifest: dict[str, Any], where: str) -> list[str]:
    """The terminal summary, one line per topic."""
    n = report_numbers(manifest)
    lines = [
        f"kmeans-partition report: {where}",
        f"  rows {n['n_rows']:,} in {n['n_clusters']:,} clusters (dim {n['embedding_dim']}, engine {n['engine']})",
    ]
    if n["size_max"] is not None:
        lines.append(
            f"  cluster sizes: min {n['size_min']:,}, median {n['size_median']:,.1f}, max {n['size_max']:,} "
            f"(largest {_pct(n['largest_share'])} of rows), empty {n['empty_clusters']:,}"
        )
        lines.append(
            f"  pairwise cost: sum(size^2) is {n['imbalance']:.2f}x that of {n['n_clusters']:,} equal clusters"
        )
    state = "converged" if n["converged"] else "did not converge"
    line = f"  k-means: {state} after {n['n_iter']} of {n['max_iter']} iterations"
    if n["last_shift"] is not None and n["tol_abs"] is not None:
        line += f" (last shift {n['last_shift']:.3g}, tolerance {n['tol_abs']:.3g})"
    lines.append(line)
    if n["cosine_dist_mean"] is not None:
        lines.append(
            f"  cosine distance to centroid: mean {n['cosine_dist_mean']:.4f}, max {n['cosine_dist_max']:.4f}"
        )
    if n["boundary_shares"]:
        thresholds = " / ".join(f"{t:g}" for t in n["thresholds"])
        shares = " / ".join(_pct(s) for s in n["boundary_shares"])
        line = f"  boundary rows (margin < {thresholds}): {shares}"
        if n["sampled_rows"]:
            line += f" (estimated from {n['sampled_rows']:,} sampled rows)"
        lines.append(line)
    return lines


def run_report(
    output: str,
    storage_options: Optional[dict] = None,
    html_path: Optional[str] = None,
    sample_rows: int = SAMPLE_ROWS,
) -> tuple[list[str], dict[str, Any]]:
    """Terminal lines and the manifest (with summary); writes the HTML page to `html_path` if given."""
    options = storage_options or {}
    out = open_output(output, options)
    manifest = with_summary(load_manifest(out), out, sample_rows)
    if html_path:
        from .report_html import write_html_report

        write_html_report(manifest, html_path, options if "://" in html_path else {})
    return summary_lines(manifest, out.uri), manifest
