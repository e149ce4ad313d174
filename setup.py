"""The one compiled part: the fused host kernel (`runner/_host_kernels.c`), loaded with ctypes.

Optional: where it does not compile (no C compiler), the install goes on and the engine uses its
NumPy path (`runner/host_kernels.py`). Plain C, no Python headers needed. Metadata: pyproject.toml.
"""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "kmeans_partition.runner._host_kernels",
            ["src/kmeans_partition/runner/_host_kernels.c"],
            extra_compile_args=["-O3", "-std=gnu99"],
            optional=True,
        )
    ]
)
