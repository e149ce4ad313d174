"""FAKE cuML / raft-dask / CuPy modules for CPU tests of the RAFT engine's plumbing. Not cuML.

`install` puts stand-ins into ``sys.modules`` (through pytest's monkeypatch, so they are removed
after the test) for what `kmeans_partition.runner.engine` imports: ``cupy`` (NumPy underneath),
``cuml.dask.cluster[.kmeans]`` and ``raft_dask.common.comms``. They compute nothing like cuML: the
fake ``KMeans.fit`` only builds ``Comms`` the way cuML 26.10's ``fit`` does
(``Comms(comms_p2p=False, client=self.client)``, looked up in its own module), gathers the data
it was given and returns made-up centroids, recording every call in a `Record`. Use them with an
in-process Dask cluster (``processes=False``) so the worker threads see the same ``sys.modules``.
The real cuML fit is tested by ``test_engine.py::test_raft_fit_matches_sklearn_inertia`` where
cuML and a GPU exist.

`write_broken_cuml` writes a fake ``cuml`` package on disk whose ``cuml.dask.cluster`` imports
``raft_dask`` like the real one, for the import error the GPU image had without ``cuml[dask]``.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FAKE_N_ITER = 3


@dataclass
class Record:
    """What the engine did with the fakes."""

    kmeans_kwargs: list[dict[str, Any]] = field(default_factory=list)
    nccl_roots: list[str] = field(default_factory=list)
    fit_data: list[np.ndarray] = field(default_factory=list)
    to_device_shapes: list[tuple] = field(default_factory=list)


class FakeDeviceArray:
    """Looks like a device array to the engine (has ``__cuda_array_interface__``); holds NumPy."""

    def __init__(self, host: np.ndarray):
        self.host = host

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.host.shape, "typestr": self.host.dtype.str, "version": 3}


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    module.__fake__ = True
    return module


def install(monkeypatch, with_comms: bool = True) -> Record:
    """Put the fake modules into sys.modules; returns the `Record` they write to."""
    record = Record()

    def to_device(array):
        record.to_device_shapes.append(np.shape(array))
        return np.asarray(array)

    cupy = _module("cupy", asarray=to_device, empty=np.empty, asnumpy=lambda a: np.asarray(a.host))

    class Comms:  # raft_dask.common.comms.Comms, constructor as in raft-dask 26.10
        def __init__(self, comms_p2p=False, client=None, verbose=False, streams_per_handle=0,
                     nccl_root_location="scheduler"):
            record.nccl_roots.append(nccl_root_location)

        def init(self, workers=None):
            pass

        def destroy(self):
            pass

    kmeans_module = _module("cuml.dask.cluster.kmeans", **({"Comms": Comms} if with_comms else {}))

    class KMeans:  # cuml.dask.cluster.KMeans: records, computes nothing
        def __init__(self, *, client=None, verbose=False, n_clusters=8, **kwargs):
            self.client = client
            self.n_clusters = n_clusters
            self.kwargs = kwargs
            record.kmeans_kwargs.append({"n_clusters": n_clusters, **kwargs})

        def fit(self, X, sample_weight=None):
            comms = kmeans_module.Comms(comms_p2p=False, client=self.client)  # the global name, as cuML does
            comms.init()
            data = self.client.compute(X).result()
            record.fit_data.append(data)
            init = self.kwargs["init"]
            centers = np.asarray(init) if not isinstance(init, str) else data[: self.n_clusters]
            self.cluster_centers_ = FakeDeviceArray(np.asarray(centers, dtype=np.float32) + 0.5)
            self.n_iter_ = FAKE_N_ITER
            comms.destroy()
            return self

    kmeans_module.KMeans = KMeans
    modules = {
        "cupy": cupy,
        "cuml": _module("cuml", __path__=[]),
        "cuml.dask": _module("cuml.dask", __path__=[]),
        "cuml.dask.cluster": _module("cuml.dask.cluster", __path__=[], KMeans=KMeans, kmeans=kmeans_module),
        "cuml.dask.cluster.kmeans": kmeans_module,
        "raft_dask": _module("raft_dask", __path__=[]),
        "raft_dask.common": _module("raft_dask.common", __path__=[]),
        "raft_dask.common.comms": _module("raft_dask.common.comms", Comms=Comms),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return record


def write_broken_cuml(root: Path) -> Path:
    """A fake ``cuml`` package under `root` whose ``cuml.dask.cluster`` imports raft_dask (absent)."""
    package = root / "cuml"
    (package / "dask" / "cluster").mkdir(parents=True)
    (package / "__init__.py").write_text('"""FAKE cuml package (tests/fake_cuml.py)."""\n')
    (package / "dask" / "__init__.py").write_text("")
    (package / "dask" / "cluster" / "__init__.py").write_text(
        "from raft_dask.common.comms import Comms  # as cuml/dask/cluster/kmeans.py does\n"
    )
    return root
