"""Which k-means engine fits the centroids, on which devices, and why; and the cuML/RAFT fit.

``dask``  ours (`fit.py`) on any Dask workers.
``raft``  cuML's multi-GPU KMeans (``cuml.dask.cluster.KMeans``: RAFT/cuVS over NCCL) on dask-cuda
          workers with a GPU each; its centroids come back to the client as NumPy and are assigned
          and written by the same code as ours.
``auto``  ``raft`` when every worker imports cuML's multi-GPU KMeans and has a GPU of its own, else
          ``dask``. Never silently: `EngineChoice` (requested, chosen, reason, devices) goes to the
          manifest's ``engine`` and the resource's ``status.result.engine``, and a fallback is logged.

``raft`` where it cannot run raises `EngineUnavailable`; when cuML does not import on a worker it is
raised from that worker's own import error, whose type and message it repeats.

cuML parameters (checked against cuML 26.10 / cuVS 26.06 sources), `RaftParams.cuml_kwargs`:
``n_init=1`` (cuML's default ``'auto'`` means 10 runs for ``init='random'``); init ``k-means||`` ->
``'scalable-k-means++'``, ``random`` -> ``'random'``, given centroids -> that array on the device;
``tol``: our absolute threshold (`RaftParams`). NCCL root: cuML's fit creates
``raft_dask.common.comms.Comms(comms_p2p=False, client=...)``, whose ``nccl_root_location``
defaults to ``"scheduler"``, a pod without a GPU here; `nccl_root_on_worker` makes it ``"worker"``.
"""

from __future__ import annotations

import importlib
import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Callable, Optional, Union

import numpy as np
from distributed import Client, Future

from .fit import FitResult
from .partition import Partition
from ..spec import CUPY_TF32_ENV, Engine, JobSpec, SpecError
from .worker_probe import WorkerProbe, cuml_import_error, import_cuml_dask, probe_worker

log = logging.getLogger(__name__)

CUML_KMEANS_MODULE = "cuml.dask.cluster.kmeans"
NCCL_ROOT = "worker"


class EngineUnavailable(SpecError):
    """The requested engine cannot run on these workers (the message says which worker and why)."""

    def __init__(self, message: str):
        super().__init__("engine", message)


def workers_have_cuml(client: Client) -> bool:
    """cuML on every worker (checked there: the runner pod itself has no GPU and may lack it)."""
    found = client.run(cuml_import_error)
    return bool(found) and all(error is None for error in found.values())


def workers_have_gpus(client: Client) -> bool:
    """Every worker has a GPU, and no two workers share one (cuML's multi-GPU fit needs one each)."""
    return _gpu_problem(client.run(probe_worker)) is None


# ----------------------------------------------------------------- the choice


@dataclass(frozen=True)
class EngineChoice:
    """Which engine ran and why; ``devices``: one entry per worker, in worker-address order."""

    requested: str
    chosen: Engine
    reason: str
    devices: list[str] = field(default_factory=list)
    distance_precision: str = "float32"  # what the distance GEMMs on the workers actually use

    def to_dict(self) -> dict:
        return {**asdict(self), "chosen": self.chosen.value}


def parse_engine(requested: Union[Engine, str]) -> Engine:
    try:
        return Engine(requested)
    except ValueError:
        names = ", ".join(e.value for e in Engine)
        raise SpecError("engine", f"{requested!r} is not one of {names}") from None


def _cuml_problem(probes: dict[str, WorkerProbe]) -> Optional[tuple[str, str]]:
    """(worker, message) of the first worker where cuML's multi-GPU KMeans does not import."""
    for address, probe in sorted(probes.items()):
        if probe.cuml_error is not None:
            return address, f"cuML's multi-GPU KMeans does not import on worker {address}: {probe.cuml_error}"
    return None


def _gpu_problem(probes: dict[str, WorkerProbe]) -> Optional[str]:
    if not probes:
        return "no workers"
    owner: dict[str, str] = {}
    for address, probe in sorted(probes.items()):
        if probe.gpu is None:
            return f"worker {address} has no GPU"
        if probe.gpu in owner:
            return f"workers {owner[probe.gpu]} and {address} share GPU {probe.gpu}"
        owner[probe.gpu] = address
    return None


def _precision(requested: str, probes: dict[str, WorkerProbe]) -> str:
    """What the workers' distance GEMMs use; a TF32 worker under ``float32`` is an error."""
    gpus = [(address, p) for address, p in sorted(probes.items()) if p.gpu is not None]
    if requested == "float32":
        for address, probe in gpus:
            if probe.tf32:
                raise SpecError(
                    "distance_precision",
                    f"float32 asked, but worker {address} has {CUPY_TF32_ENV}=1 (TF32 GEMMs): unset it there",
                )
        return "float32"
    if gpus and all(p.tf32 for _, p in gpus):
        return "tf32"
    log.warning("distance_precision tf32 asked, but not every GPU worker has %s=1: distances are float32",
                CUPY_TF32_ENV)
    return "float32"


def decide(requested: Engine, probes: dict[str, WorkerProbe], distance_precision: str = "float32") -> EngineChoice:
    """The engine for these workers (pure; `choose_engine` probes the workers)."""
    devices = [probe.device for _, probe in sorted(probes.items())]
    precision = _precision(distance_precision, probes)
    if requested == Engine.dask:
        return EngineChoice(requested.value, Engine.dask, "requested", devices, precision)
    cuml = _cuml_problem(probes)
    problem = cuml[1] if cuml else _gpu_problem(probes)
    if problem is None:
        reason = f"{requested.value}: all {len(probes)} workers import cuML and have a GPU of their own"
        return EngineChoice(requested.value, Engine.raft, reason, devices, precision)
    if requested == Engine.raft:
        raise EngineUnavailable(f"raft: {problem}")
    return EngineChoice(requested.value, Engine.dask, f"auto: {problem}; ran dask", devices, precision)


def choose_engine(
    requested: Union[Engine, str], client: Client, distance_precision: str = "float32"
) -> EngineChoice:
    """Probe every worker, then `decide`; a fallback from ``auto`` is logged as a warning."""
    requested = parse_engine(requested)
    probes = client.run(probe_worker)
    try:
        choice = decide(requested, probes, distance_precision)
    except EngineUnavailable as unavailable:
        cuml = _cuml_problem(probes)
        if cuml is not None:  # re-raise from the worker's own import error (traceback and type)
            try:
                client.run(import_cuml_dask, workers=[cuml[0]])
            except Exception as real:
                raise unavailable from real
        raise
    if requested == Engine.auto and choice.chosen == Engine.dask:
        log.warning("engine %s", choice.reason)
    return choice


# ----------------------------------------------------------------- the cuML fit


def cuml_init(init: str, initial: Optional[np.ndarray], n_clusters: int, to_device: Callable) -> object:
    """``init`` as cuML's KMeans takes it: given centroids (an array on the device) win."""
    if initial is not None:
        initial = np.ascontiguousarray(initial, dtype=np.float32)
        if initial.ndim != 2 or initial.shape[0] != n_clusters:
            raise ValueError(f"initial centroids: shape {initial.shape}, expected ({n_clusters}, dim)")
        return to_device(initial)
    names = {"k-means||": "scalable-k-means++", "random": "random"}
    if init not in names:
        raise ValueError(f"init: {init!r} has no cuML equivalent (expected one of {', '.join(names)})")
    return names[init]


@dataclass(frozen=True)
class RaftParams:
    """The job's k-means settings as cuML takes them (pickled into the fitting task).

    ``tol`` is our absolute threshold ``tol_abs`` (tol x mean per-feature variance of the normalised
    rows). cuVS's multi-GPU fit (cuVS 26.06 ``kmeans_mg.cuh``) stops when the summed squared
    centroid shift of an iteration is below ``tol`` (the same test as ours), or, from the second
    iteration, when inertia / previous inertia > 1 - ``tol`` (up to 26.04 only with
    ``inertia_check``, which cuML leaves off); at ~1e-7 that second test only fires once the
    inertia no longer changes in float32."""

    n_clusters: int
    init: str  # ours: "k-means||" or "random"
    max_iter: int
    tol: float
    random_state: int
    oversampling_factor: float
    max_samples_per_batch: int

    @classmethod
    def from_spec(cls, spec: JobSpec, tol_abs: float) -> "RaftParams":
        return cls(
            n_clusters=spec.n_clusters,
            init=spec.init,
            max_iter=spec.max_iter,
            tol=float(tol_abs),
            random_state=spec.random_state,
            oversampling_factor=spec.oversampling_factor,
            max_samples_per_batch=spec.max_samples_per_batch,
        )

    def cuml_kwargs(self, initial: Optional[np.ndarray] = None, to_device: Callable = np.asarray) -> dict:
        """Keyword arguments of ``cuml.dask.cluster.KMeans`` (``client`` aside)."""
        kwargs = {key: value for key, value in asdict(self).items() if key != "init"}
        kwargs["init"] = cuml_init(self.init, initial, self.n_clusters, to_device)
        kwargs["n_init"] = 1
        return kwargs


@contextmanager
def nccl_root_on_worker(module: ModuleType):
    """While open, ``Comms`` in cuML's kmeans module puts the NCCL root on a worker."""
    comms = getattr(module, "Comms", None)
    if not isinstance(comms, type):
        raise RuntimeError(
            f"{module.__name__} has no Comms class: cannot put the NCCL root on a worker "
            "(this cuML release starts NCCL differently; check engine.nccl_root_on_worker)"
        )

    class WorkerRootComms(comms):
        def __init__(self, *args, **kwargs):
            kwargs["nccl_root_location"] = NCCL_ROOT
            super().__init__(*args, **kwargs)

    module.Comms = WorkerRootComms
    try:
        yield
    finally:
        module.Comms = comms


def centroids_to_numpy(centroids) -> np.ndarray:
    """cuML's ``cluster_centers_`` (CuPy array, cuDF frame or NumPy) as a float32 NumPy array."""
    if hasattr(centroids, "__cuda_array_interface__"):
        import cupy

        centroids = cupy.asnumpy(centroids)
    elif hasattr(centroids, "to_numpy"):
        centroids = centroids.to_numpy()
    return np.ascontiguousarray(centroids, dtype=np.float32)


def run_cuml_kmeans(client: Client, data, params: RaftParams, initial, to_device: Callable) -> tuple:
    """cuML's multi-GPU fit of ``data`` (a Dask array of device blocks); (centroids, n_iter)."""
    from cuml.dask.cluster import KMeans

    with nccl_root_on_worker(importlib.import_module(CUML_KMEANS_MODULE)):
        model = KMeans(client=client, **params.cuml_kwargs(initial, to_device))
        model.fit(data)
    return centroids_to_numpy(model.cluster_centers_), getattr(model, "n_iter_", None)


def _device_block(part: Partition):
    import cupy

    return cupy.asarray(part.x)


def _fit_raft_on_worker(keys: list[str], rows: list[int], dim: int, params: RaftParams, initial) -> tuple:
    """Runs as a task on a GPU worker, so the runner (client) never touches a GPU."""
    import cupy
    import dask
    import dask.array as da
    from distributed import worker_client

    with worker_client() as client:
        parts = [Future(key, client=client) for key in keys]
        blocks = [
            da.from_delayed(
                dask.delayed(client.submit(_device_block, part, pure=False)),
                shape=(n, dim),
                dtype=np.float32,
                meta=cupy.empty((0, dim), dtype=np.float32),
            )
            for part, n in zip(parts, rows)
        ]
        return run_cuml_kmeans(client, da.concatenate(blocks, axis=0), params, initial, cupy.asarray)


def fit_raft(
    client: Client,
    parts: list[Future],
    rows: list[int],
    dim: int,
    params: RaftParams,
    initial_centroids: Optional[np.ndarray] = None,
) -> FitResult:
    """Fit with cuML's multi-GPU KMeans on the partitions already on the workers.

    ``converged`` is ``n_iter < max_iter``: cuML reports no convergence flag and caps ``n_iter``."""
    started = time.perf_counter()
    task = client.submit(
        _fit_raft_on_worker, [p.key for p in parts], rows, dim, params, initial_centroids, pure=False
    )
    centroids, n_iter = task.result()
    n_iter = int(n_iter) if n_iter else params.max_iter
    result = FitResult(centroids=centroids, n_iter=n_iter, converged=n_iter < params.max_iter)
    result.timings = {"init": 0.0, "fit": time.perf_counter() - started}
    return result
