"""NumPy float64 recomputation of a run's summary from its written output, for the report tests."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kmeans_partition.runner.summary import DISTANCE_EDGES, MARGIN_EDGES, MARGIN_THRESHOLDS


def read_rows(fs, root: str, manifest: dict) -> dict:
    """Every written row: embeddings, centroid (from the folder) and the written columns."""
    tables, labels = [], []
    for entry in manifest["files"]:
        with fs.open(f"{root}/{entry['path']}", "rb") as handle:
            table = pq.read_table(handle)
        tables.append(table)
        labels.append(np.full(table.num_rows, entry["centroid"]))
    table = pa.concat_tables(tables)
    x = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    return {"x": x, "label": np.concatenate(labels), "table": table}


def counts_in_bins(values: np.ndarray, edges: np.ndarray) -> tuple[list[int], int, int]:
    """(counts per [e_i, e_i+1), count below edges[0], count at or above edges[-1])."""
    counts = [int(((values >= lo) & (values < hi)).sum()) for lo, hi in zip(edges[:-1], edges[1:])]
    return counts, int((values < edges[0]).sum()), int((values >= edges[-1]).sum())


def recompute(x: np.ndarray, label: np.ndarray, centroids: np.ndarray, written_cosine: np.ndarray) -> dict:
    """Sizes, per-cluster distances, second centroids, margins and boundary counts in float64."""
    x64, c64 = x.astype(np.float64), centroids.astype(np.float64)
    k = len(c64)
    cos_all = 1.0 - x64 @ (c64 / np.linalg.norm(c64, axis=1, keepdims=True)).T
    d2 = ((x64[:, None, :] - c64[None]) ** 2).sum(-1)
    rows = np.arange(len(x))
    d2_other = d2.copy()
    d2_other[rows, label] = np.inf
    second = d2_other.argmin(1)
    ordered = np.sort(d2_other, axis=1)
    clear_second = ordered[:, 1] - ordered[:, 0] > 1e-6  # no near-tie for the second place
    own = cos_all[rows, label]
    margin = (cos_all[rows, second] - own).astype(np.float32)
    sizes = np.bincount(label, minlength=k)
    return {
        "sizes": sizes,
        "own": own,
        "second": second,
        "clear_second": clear_second,
        "margin": margin,
        "mean": [own[label == c].mean() if sizes[c] else None for c in range(k)],
        "max": [own[label == c].max() if sizes[c] else None for c in range(k)],
        "boundary_per_cluster": [[int(((margin < t) & (label == c)).sum()) for c in range(k)]
                                 for t in MARGIN_THRESHOLDS],
        "distance_hist": counts_in_bins(written_cosine.astype(np.float64), DISTANCE_EDGES),
        "margin_hist": counts_in_bins(margin.astype(np.float64), MARGIN_EDGES),
    }


def check_summary(summary: dict, expected: dict, exact_counts: bool = True) -> None:
    """The manifest's summary against `recompute` (means/maxima to the 6 digits stored)."""
    sizes = expected["sizes"]
    assert summary["rows"] == int(sizes.sum())
    assert summary["thresholds"] == list(MARGIN_THRESHOLDS)
    for got, want in zip(summary["cosine_dist_mean_per_cluster"], expected["mean"]):
        assert (got is None) == (want is None) and (want is None or abs(got - want) <= 2e-6 * max(1, abs(want)))
    for got, want in zip(summary["cosine_dist_max_per_cluster"], expected["max"]):
        assert (got is None) == (want is None) and (want is None or abs(got - want) <= 2e-6 * max(1, abs(want)))
    assert summary["boundary_rows_per_cluster"] == expected["boundary_per_cluster"]
    assert summary["boundary_rows"] == [sum(row) for row in expected["boundary_per_cluster"]]
    for name, key in (("distance_hist", "cosine_dist_hist"), ("margin_hist", "margin_hist")):
        counts, below, above = expected[name]
        assert summary[key]["counts"] == counts and summary[key]["below"] == below and summary[key]["above"] == above
