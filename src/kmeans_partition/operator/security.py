"""Pod hardening shared by the runner, scheduler and worker pods (pure builders).

Every pod the operator creates runs as the image's non-root user (10001) with the
runtime's default seccomp profile; every container drops all capabilities, may not
escalate privileges and has a read-only root filesystem. Writable space comes from
sized emptyDirs: ``/tmp`` (HOME and the working directory of the image) on every pod,
and Dask's local directory (spill-to-disk) on the workers, sized by
``cluster.localDirectorySize``. Together this satisfies the Pod Security Standard
"restricted" (tests/k8s/pod_security.py checks it).
"""

from __future__ import annotations

from typing import Any, Optional

RUN_AS_ID = 10001
TMP_DIR = "/tmp"
TMP_VOLUME = "tmp"
TMP_SIZE = "1Gi"
DASK_LOCAL_DIR = "/dask-local"
DASK_LOCAL_VOLUME = "dask-local"


def pod_security_context() -> dict[str, Any]:
    """Pod-level: non-root user/group 10001, fsGroup for the volumes, seccomp RuntimeDefault."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_ID,
        "runAsGroup": RUN_AS_ID,
        "fsGroup": RUN_AS_ID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Container-level: no privilege escalation, no capabilities, read-only root filesystem."""
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _empty_dir(name: str, size: Any) -> dict[str, Any]:
    return {"name": name, "emptyDir": {"sizeLimit": str(size)}}


def scratch_volumes(local_directory_size: Optional[Any] = None) -> tuple[list[dict], list[dict]]:
    """(volumes, volumeMounts): ``/tmp`` always; Dask's local directory when a size is given."""
    volumes = [_empty_dir(TMP_VOLUME, TMP_SIZE)]
    mounts = [{"name": TMP_VOLUME, "mountPath": TMP_DIR}]
    if local_directory_size is not None:
        volumes.append(_empty_dir(DASK_LOCAL_VOLUME, local_directory_size))
        mounts.append({"name": DASK_LOCAL_VOLUME, "mountPath": DASK_LOCAL_DIR})
    return volumes, mounts
