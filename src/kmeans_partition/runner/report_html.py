"""The report as one self-contained HTML page: numbers plus matplotlib plots as PNG data URIs.

No external assets (no scripts, stylesheets or fonts to fetch): the page opens offline and can
be attached to a ticket. Plots use matplotlib's `Figure` with the Agg canvas (no pyplot state).
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any, Optional

import numpy as np

#: Every plot is this many inches at `DPI` (so 900 x 320 pixels).
FIGURE_SIZE = (9.0, 3.2)
DPI = 100
TOP_CLUSTERS = 20

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 960px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { padding: 0.25em 0.8em; border-bottom: 1px solid #ddd; text-align: left; }
th { font-weight: normal; color: #555; }
figure { margin: 1.5em 0; }
figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; }
"""


def _figure(ncols: int = 2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGURE_SIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.22, top=0.9, wspace=0.28)  # fixed: layout engines are slow
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _hist_bars(ax, hist: dict[str, Any], color: str) -> None:
    ax.stairs(hist["counts"], hist["edges"], fill=True, color=color)  # one patch, however many bins
    ax.set_ylabel("rows")


def _is_wide(values: np.ndarray) -> bool:
    positive = values[values > 0]
    return bool(len(positive)) and positive.max() > 10 * positive.min()


def _log_x_if_wide(ax, values: np.ndarray) -> None:
    """Log scale (major labels only) when the values span more than a factor of ten."""
    from matplotlib.ticker import NullFormatter

    if _is_wide(values):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())


def sizes_plot(manifest: dict[str, Any]) -> str:
    sizes = np.asarray(manifest.get("rows_per_centroid") or [0], dtype=np.int64)
    fig, (left, right) = _figure()
    nonzero = sizes[sizes > 0]
    if len(nonzero):
        low, high = nonzero.min() / 1.1, nonzero.max() * 1.1
        edges = np.geomspace(low, high, 41) if _is_wide(nonzero) else np.linspace(low, high, 41)
        left.stairs(np.histogram(nonzero, bins=edges)[0], edges, fill=True, color="#4c72b0")
        _log_x_if_wide(left, nonzero)
    left.set_xlabel("rows in cluster")
    left.set_ylabel("clusters")
    left.set_title(f"cluster sizes ({int((sizes == 0).sum())} empty)")
    top = np.argsort(-sizes, kind="stable")[:TOP_CLUSTERS]
    right.bar(range(len(top)), sizes[top], color="#dd8452")
    right.set_xticks(range(len(top)), [str(c) for c in top], rotation=90, fontsize=7)
    right.axhline(sizes.sum() / len(sizes), color="#333", linestyle="--", linewidth=1, label="equal clusters")
    right.legend(fontsize=8)
    right.set_xlabel("centroid")
    right.set_ylabel("rows")
    right.set_title(f"{len(top)} largest clusters")
    return _png(fig)


def convergence_plot(manifest: dict[str, Any]) -> str:
    from .report import engine_name

    history = manifest.get("iterations") or []
    fig, (left, right) = _figure()
    if not history:
        for ax in (left, right):
            ax.text(0.5, 0.5, f"no per-iteration history (engine {engine_name(manifest)})",
                    ha="center", va="center", transform=ax.transAxes)
    else:
        steps = [h["iteration"] for h in history]
        left.plot(steps, [h["inertia"] for h in history], marker=".", color="#4c72b0")
        shifts = np.maximum([h["centroid_shift"] for h in history], np.finfo(np.float64).tiny)
        right.semilogy(steps, shifts, marker=".", color="#dd8452", label="centroid shift")
        if manifest.get("tol_abs"):
            right.axhline(manifest["tol_abs"], color="#333", linestyle="--", linewidth=1, label="tolerance")
        right.legend(fontsize=8)
    left.set_title("inertia per iteration")
    left.set_xlabel("iteration")
    right.set_title("summed squared centroid shift per iteration")
    right.set_xlabel("iteration")
    return _png(fig)


def distance_plot(manifest: dict[str, Any]) -> str:
    summary = manifest["summary"]
    fig, (left, right) = _figure()
    _hist_bars(left, summary["cosine_dist_hist"], "#55a868")
    left.set_xlabel("cosine distance to own centroid")
    left.set_title("distance to centroid, all rows")
    means = np.array([np.nan if v is None else v for v in summary["cosine_dist_mean_per_cluster"]], dtype=float)
    sizes = np.asarray(manifest.get("rows_per_centroid") or [], dtype=float)
    if len(sizes) == len(means):
        right.scatter(sizes, means, s=6, color="#55a868")
        _log_x_if_wide(right, sizes)
    right.set_xlabel("rows in cluster")
    right.set_ylabel("mean cosine distance")
    right.set_title("per cluster: mean distance by size")
    return _png(fig)


def margin_plot(manifest: dict[str, Any]) -> str:
    summary = manifest["summary"]
    hist = summary["margin_hist"]
    fig, (left, right) = _figure()
    _hist_bars(left, hist, "#c44e52")
    for threshold in summary["thresholds"]:
        left.axvline(threshold, color="#333", linestyle="--", linewidth=1)
    left.set_xlim(0, _margin_view(hist, max(summary["thresholds"])))
    left.set_xlabel("margin: cosine distance to 2nd centroid minus to own")
    left.set_title("boundary margin (dashed: thresholds)")
    left.text(0.98, 0.95, f"{hist['above']:,} rows above {hist['edges'][-1]:g}\n{hist['below']:,} below 0",
              ha="right", va="top", fontsize=8, transform=left.transAxes)
    rows = max(summary.get("rows") or 0, 1)
    per_cluster = np.asarray(summary["boundary_rows_per_cluster"], dtype=float)
    at = len(summary["thresholds"]) // 2
    sizes = np.asarray(manifest.get("rows_per_centroid") or [], dtype=float)
    if per_cluster.size and len(sizes) == per_cluster.shape[1]:
        top = np.argsort(-per_cluster[at], kind="stable")[:TOP_CLUSTERS]
        right.bar(range(len(top)), per_cluster[at][top] / rows * 100, color="#c44e52")
        right.set_xticks(range(len(top)), [str(c) for c in top], rotation=90, fontsize=7)
    right.set_xlabel("centroid")
    right.set_ylabel("% of all rows")
    right.set_title(f"most rows with margin < {summary['thresholds'][at]:g}")
    return _png(fig)


def _margin_view(hist: dict[str, Any], largest_threshold: float) -> float:
    """Upper x limit: where 99% of the plotted margins lie, but at least 4x the largest threshold."""
    edges, counts = np.asarray(hist["edges"]), np.asarray(hist["counts"])
    if counts.sum() == 0:
        return float(edges[-1])
    at = int(np.searchsorted(np.cumsum(counts), 0.99 * counts.sum())) + 1
    return float(min(edges[-1], max(edges[min(at, len(edges) - 1)], 4 * largest_threshold)))


def _numbers_table(manifest: dict[str, Any]) -> str:
    from .report import summary_lines

    rows = []
    for line in summary_lines(manifest, "")[1:]:  # the first line (the title) is the page's heading
        name, _, value = line.strip().partition(": ")
        rows.append(f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def render_html(manifest: dict[str, Any], title: Optional[str] = None) -> str:
    """The page (manifest must carry a ``summary``)."""
    where = (manifest.get("centroids_path") or "").rsplit("/", 1)[0]  # the manifest omits output_path
    title = title or f"kmeans-partition report: {where}"
    plots = [
        ("Cluster sizes", sizes_plot(manifest),
         "The pairwise stage costs the sum of squared cluster sizes: one giant cluster dominates it."),
        ("Convergence", convergence_plot(manifest), "Lloyd stops when the shift falls to the tolerance."),
        ("Distance to centroid", distance_plot(manifest), "Cosine distance of each row to its own centroid."),
        ("Rows on a boundary", margin_plot(manifest),
         "Rows with a small margin lie almost between two centroids: their near-duplicates across the "
         "border land in another partition and are never compared."),
    ]
    figures = "".join(
        f'<figure><h2>{html.escape(name)}</h2><img alt="{html.escape(name)}" '
        f'width="{int(FIGURE_SIZE[0] * DPI)}" height="{int(FIGURE_SIZE[1] * DPI)}" '
        f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption></figure>'
        for name, data, caption in plots
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{_numbers_table(manifest)}{figures}</body></html>\n"
    )


def write_html_report(manifest: dict[str, Any], url: str, storage_options: dict) -> str:
    """Render and write the page to `url` (any fsspec URL or local path); returns `url`."""
    from fsspec.core import url_to_fs

    page = render_html(manifest)
    fs, path = url_to_fs(url, **storage_options)
    with fs.open(path, "w", encoding="utf-8") as handle:
        handle.write(page)
    return url
