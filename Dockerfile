# syntax=docker/dockerfile:1.7
# One image for the operator and the runner: ENTRYPOINT ["kmeans-partition"].
#
#   CPU (slim Python):  docker build --target cpu -t kmeans-partition:0.1.0 .
#   GPU (CUDA + cuML):  docker build --target gpu -t kmeans-partition:0.1.0-gpu .
#
# Operator: `kmeans-partition operator --all-namespaces ...`; runner Job:
# `kmeans-partition run ...`; Dask pods use `dask scheduler` / `dask worker` /
# `dask-cuda-worker` from the same environment (the operator sets the command).
# Base images are pinned by tag. CPU: Python packages pinned by
# docker/constraints.txt (the versions the test suite ran with). GPU: pinned by
# the cuML release (CUML_VERSION), which pins the RAPIDS/Dask stack.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
ARG PIP_VERSION=24.3.1
ARG CUML_VERSION=26.10.0
ARG APP_UID=10001

# ---------------------------------------------------------------- CPU build
FROM ${PYTHON_IMAGE} AS cpu-build
ARG PIP_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A C compiler for the fused host kernel (setup.py; the runtime image copies only the venv).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv && /opt/venv/bin/pip install "pip==${PIP_VERSION}"
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY docker/constraints.txt ./docker/constraints.txt
COPY src ./src
RUN /opt/venv/bin/pip install --constraint docker/constraints.txt ".[s3,gcs,operator]"

# ---------------------------------------------------------------- CPU image
FROM ${PYTHON_IMAGE} AS cpu
ARG APP_UID
COPY --from=cpu-build /opt/venv /opt/venv
RUN groupadd --gid ${APP_UID} app \
 && useradd --uid ${APP_UID} --gid ${APP_UID} --no-create-home --home-dir /tmp --shell /usr/sbin/nologin app
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HOME=/tmp
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["kmeans-partition"]
CMD ["--help"]

# ---------------------------------------------------------------- GPU image
# CUDA runtime base; cuML (engine: raft), CuPy, RMM and dask-cuda come as pip wheels
# (the `gpu` extra plus cuml-cu12), so no conda environment is mixed in. cuML's `dask`
# extra brings raft-dask-cu12 and dask-cudf-cu12, which `cuml.dask.cluster` imports
# (without them `engine: raft` cannot import). The pinned cuML release pins
# dask/distributed (rapids-dask-dependency); the rest is pinned at the same RAPIDS
# release by docker/constraints-gpu.txt (the CPU constraints file would clash with RAPIDS).
# scripts/check-gpu-resolve.sh resolves this install with pip (no Docker needed).
FROM ${CUDA_IMAGE} AS gpu
ARG PIP_VERSION
ARG CUML_VERSION
ARG APP_UID
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install "pip==${PIP_VERSION}"
WORKDIR /src
# setup.py's host kernel is optional and not built here (no compiler: GPU workers compute on CuPy).
COPY pyproject.toml setup.py README.md ./
COPY docker/constraints-gpu.txt ./docker/constraints-gpu.txt
COPY src ./src
RUN /opt/venv/bin/pip install --constraint docker/constraints-gpu.txt ".[s3,gcs,operator,gpu]" "cuml-cu12[dask]==${CUML_VERSION}" \
 && rm -rf /src
RUN groupadd --gid ${APP_UID} app \
 && useradd --uid ${APP_UID} --gid ${APP_UID} --no-create-home --home-dir /tmp --shell /usr/sbin/nologin app
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HOME=/tmp
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["kmeans-partition"]
CMD ["--help"]
