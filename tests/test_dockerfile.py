"""What can be checked of the Dockerfile without a Docker engine."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from dockerfile_support import parse, substitute

REPO_ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
DOCKERFILE = parse(REPO_ROOT / "Dockerfile")
FINAL_STAGES = {"cpu": {"s3", "gcs", "operator"}, "gpu": {"s3", "gcs", "operator", "gpu"}}


def _installed_extras(stage_name: str) -> set[str]:
    extras: set[str] = set()
    for run in DOCKERFILE.stage(stage_name).all("RUN"):
        for group in re.findall(r"\"\.\[([a-z0-9_,\-]+)\]\"", run):
            extras |= set(group.split(","))
    return extras


def _stage_chain(name: str) -> list[str]:
    """The stage and the build stages it copies from."""
    chain = [name]
    for copy in DOCKERFILE.stage(name).all("COPY"):
        match = re.search(r"--from=(\S+)", copy)
        if match and match.group(1) in DOCKERFILE.stages:
            chain += _stage_chain(match.group(1))
    return chain


@pytest.mark.parametrize("target", sorted(FINAL_STAGES))
def test_target_installs_existing_extras(target):
    extras = set().union(*(_installed_extras(s) for s in _stage_chain(target)))
    assert extras == FINAL_STAGES[target]
    assert extras <= set(PYPROJECT["project"]["optional-dependencies"])


@pytest.mark.parametrize("target", sorted(FINAL_STAGES))
def test_entrypoint_is_the_project_console_script(target):
    (entrypoint,) = DOCKERFILE.stage(target).all("ENTRYPOINT")
    command = json.loads(entrypoint)
    assert command == ["kmeans-partition"]
    assert command[0] in PYPROJECT["project"]["scripts"]


@pytest.mark.parametrize("target", sorted(FINAL_STAGES))
def test_runs_as_numeric_non_root_user(target):
    users = DOCKERFILE.stage(target).all("USER")
    assert users, f"{target}: no USER"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) > 0, users[-1]
    assert not group or (group.isdigit() and int(group) > 0), users[-1]
    assert any("--uid ${APP_UID}" in run or f"--uid {user}" in run for run in DOCKERFILE.stage(target).all("RUN"))
    assert DOCKERFILE.global_args["APP_UID"] == user


def test_base_images_are_pinned():
    bases = {stage.base for stage in DOCKERFILE.stages.values()}
    assert any(b.startswith("python:") and "slim" in b for b in bases), bases
    assert any(b.startswith(("nvidia/cuda:", "rapidsai/", "nvcr.io/")) for b in bases), bases
    for base in bases:
        name, _, tag = base.partition(":")
        assert tag and tag != "latest", base
        assert re.match(r"\d+\.\d+\.\d+", tag), f"{base}: tag is not a full version"


def test_tool_versions_are_pinned():
    args = DOCKERFILE.global_args
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["PIP_VERSION"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["CUML_VERSION"])
    gpu_runs = " ".join(DOCKERFILE.stage("gpu").all("RUN"))
    assert "cuml-cu12[dask]==${CUML_VERSION}" in gpu_runs


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalised(re.split(r"[<>=!~\[ ;]", requirement, 1)[0])


def _read_pins(filename: str) -> dict[str, str]:
    """name -> exact version of every line of docker/<filename> (each must be `name==X.Y...`)."""
    pins = {}
    for line in (REPO_ROOT / "docker" / filename).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and re.fullmatch(r"\d+(\.\d+)+(\.post\d+)?", version), f"not pinned: {line}"
            pins[_normalised(name)] = version
    return pins


def test_cpu_constraints_pin_every_runtime_dependency():
    constraints = _read_pins("constraints.txt")
    required = PYPROJECT["project"]["dependencies"] + [
        dep for extra in ("s3", "gcs", "operator") for dep in PYPROJECT["project"]["optional-dependencies"][extra]
    ]
    for requirement in required:
        assert _requirement_name(requirement) in constraints, f"{requirement} not pinned in docker/constraints.txt"


def test_gpu_constraints_pin_the_gpu_stack_and_the_operator():
    pins = _read_pins("constraints-gpu.txt")
    assert pins["cuml-cu12"] == DOCKERFILE.global_args["CUML_VERSION"]
    for requirement in PYPROJECT["project"]["optional-dependencies"]["gpu"] + ["kopf", "kubernetes", "cryptography"]:
        assert _requirement_name(requirement) in pins, f"{requirement} not pinned in docker/constraints-gpu.txt"
    assert "--constraint docker/constraints-gpu.txt" in " ".join(DOCKERFILE.stage("gpu").all("RUN"))


def test_copied_sources_exist_and_pass_dockerignore():
    allowed = [line[1:].rstrip("/") for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    for stage in DOCKERFILE.stages.values():
        for copy in stage.all("COPY"):
            if "--from=" in copy:
                continue
            *sources, _dest = copy.split()
            for source in sources:
                source = substitute(source, DOCKERFILE.global_args)
                assert (REPO_ROOT / source).exists(), f"COPY {source}: missing"
                assert source in allowed, f"COPY {source}: excluded by .dockerignore"


# What `cuml.dask.cluster` imports comes with cuml-cu12's `dask` extra (checked in cuml-cu12 26.10.0's
# metadata: raft-dask-cu12, dask-cudf-cu12 and rapids-dask-dependency, each ==26.10.*).
RAPIDS_RELEASE_PACKAGES = ("cuml-cu12", "raft-dask-cu12", "dask-cudf-cu12", "cudf-cu12", "pylibraft-cu12", "rmm-cu12",
                           "dask-cuda", "rapids-dask-dependency")


def _release(version: str) -> str:
    """RAPIDS release (YY.MM) of a version: '26.10.2' -> '26.10'."""
    return ".".join(version.split(".")[:2])


def test_gpu_install_brings_raft_dask_and_dask_cudf_at_the_cuml_release():
    runs = " ".join(DOCKERFILE.stage("gpu").all("RUN"))
    assert re.search(r"\"cuml-cu12\[[a-z,]*\bdask\b[a-z,]*\]==\$\{CUML_VERSION\}\"", runs), runs
    pins = _read_pins("constraints-gpu.txt")
    release = _release(DOCKERFILE.global_args["CUML_VERSION"])
    for name in RAPIDS_RELEASE_PACKAGES:
        assert name in pins, f"{name} not pinned in docker/constraints-gpu.txt"
        assert _release(pins[name]) == release, f"{name}=={pins[name]} is not RAPIDS {release}"


def test_the_resolve_check_uses_the_dockerfile_install():
    script = (REPO_ROOT / "scripts" / "check-gpu-resolve.sh").read_text()
    assert "docker/constraints-gpu.txt" in script and "cuml-cu12[dask]==" in script
    assert all(name in script for name in ("raft-dask-cu12", "dask-cudf-cu12"))


def test_the_cpu_build_compiles_the_host_kernel():
    """The CPU image's workers label blocks with the fused C kernel: its build stage has a compiler
    before the install and copies setup.py, which declares the extension."""
    runs = DOCKERFILE.stage("cpu-build").all("RUN")
    compiler = next(i for i, run in enumerate(runs) if "apt-get install" in run and " gcc" in run)
    install = next(i for i, run in enumerate(runs) if "pip install" in run and ".[" in run)
    assert compiler < install
    assert any("setup.py" in copy for copy in DOCKERFILE.stage("cpu-build").all("COPY"))
    assert "_host_kernels.c" in (REPO_ROOT / "setup.py").read_text()
