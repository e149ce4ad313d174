"""The run summary and `_manifest.json`, written last: an output is complete only when it exists."""

from __future__ import annotations

import datetime as dt
import io
import json
import platform
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

from .output import CENTROIDS, MANIFEST, OutputLocation
from ..credentials import redact
from ..spec import JobSpec


@dataclass
class RunResult:
    """What `KMeansStage.run()` returns and the manifest records."""

    output_path: str
    manifest_path: str
    centroids_path: str
    n_rows: int
    n_clusters: int
    embedding_dim: int
    n_iter: int
    inertia: float
    converged: bool
    rows_per_centroid: list[int]
    files: list[dict[str, Any]]
    input_files: list[str]
    n_duplicate_ids: int
    n_reseeded: int
    engine: dict[str, Any] = field(default_factory=dict)  # `engine.EngineChoice`: requested, chosen, reason, devices
    timings: dict[str, float] = field(default_factory=dict)
    iterations: list[dict[str, Any]] = field(default_factory=list)  # inertia, shift, rows computed, seconds
    tol_abs: Optional[float] = None  # the summed squared centroid shift at or below which the fit stops
    summary: Optional[dict[str, Any]] = None  # sizes, distances, margins (`runner.summary.AssignSummary`)
    report_path: Optional[str] = None  # report.html, when written
    memory_mode: Optional[dict[str, Any]] = None  # `memory_mode.MemoryPlan`: mode and the numbers it used

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def versions() -> dict[str, str]:
    import dask
    import distributed
    import pyarrow

    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("kmeans-partition")
    except PackageNotFoundError:  # run from a source tree that was not installed
        own = "unknown"
    return {
        "kmeans_partition": own,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
        "dask": dask.__version__,
        "distributed": distributed.__version__,
    }


def write_centroids(out: OutputLocation, centroids: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, centroids.astype(np.float32))
    with out.fs.open(out.path(CENTROIDS), "wb") as handle:
        handle.write(buffer.getvalue())


def manifest_data(spec: JobSpec, result: RunResult) -> dict[str, Any]:
    """What `_manifest.json` holds."""
    return {
        "format": "kmeans-partition/v1",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "spec": redact(spec.model_dump(mode="json")),  # keys that look secret, URL credentials: at any depth
        "versions": versions(),
        **{key: value for key, value in result.to_dict().items() if key not in ("output_path",)},
    }


def write_manifest(out: OutputLocation, spec: JobSpec, result: RunResult, data: Optional[dict] = None) -> None:
    """Write `_manifest.json` (``data``: `manifest_data` already built for this result)."""
    data = data if data is not None else manifest_data(spec, result)
    with out.fs.open(out.path(MANIFEST), "w") as handle:
        json.dump(data, handle, indent=2)
