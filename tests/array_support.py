"""Array libraries the kernels are tested on: NumPy, and array-api-strict on a non-default device.

``array_api_strict.Device("device1")`` refuses to combine with arrays on the default device and
cannot be turned into NumPy implicitly, so a kernel that mixes host and device arrays, or calls a
NumPy function on a device array, fails here as it would on a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from kmeans_partition.runner import backend as be

LIBRARIES = ["numpy", "strict"]


def device_of(name: str):
    if name == "numpy":
        return None
    xps = pytest.importorskip("array_api_strict")
    return xps.Device("device1")


class OnDevice:
    """Moves NumPy test data onto one library/device and back."""

    def __init__(self, name: str):
        self.name = name
        if name == "numpy":
            self.xp, self.device = be.namespace(np.empty(0)), None
        else:
            self.xp = pytest.importorskip("array_api_strict")
            self.device = self.xp.Device("device1")

    def __call__(self, values):
        """A NumPy array -> the same values on this library/device."""
        values = np.asarray(values)
        if self.name == "numpy":
            return values
        return self.xp.asarray(values, dtype=getattr(self.xp, values.dtype.name), device=self.device)

    def check(self, array) -> np.ndarray:
        """A result's values as NumPy, after checking it lives on this library/device."""
        if self.name == "numpy":
            assert isinstance(array, np.ndarray), type(array)
        else:
            assert be.device(array) == self.device, be.device(array)
        return be.to_host(array)


@pytest.fixture(params=LIBRARIES)
def on(request) -> OnDevice:
    return OnDevice(request.param)
