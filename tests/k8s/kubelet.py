"""A fake kubelet (and dask-kubernetes operator) for end-to-end tests without a cluster.

`FakeKubelet(kube, namespace, workdir)` polls the emulated API in a thread. For each
DaskCluster it starts the scheduler and `worker.replicas` workers as local processes;
once the scheduler accepts TCP connections it records the scheduler Pod (labels
`dask.org/cluster-name=<cluster>`, `dask.org/component=scheduler`, owned by the
DaskCluster, condition `Ready=True`) and marks the DaskCluster `status.phase: Running`. For each Job it starts the runner pod's container as a local process,
records a Pod (labels `job-name`, `batch.kubernetes.io/job-name`, owned by the Job),
patches the Job status (`active`, then `succeeded`/`failed` with a `Complete`/`Failed`
condition, retrying up to `backoffLimit`), and puts the runner's termination message
into the Pod's `containerStatuses[0].state.terminated.message`. Deleted DaskClusters
and Jobs have their processes stopped. Every process is started and stopped by PID.

How a pod spec maps onto this machine (everything else is taken as written):
- command/args: `$(VAR)` is expanded from the container env as Kubernetes does; an
  executable found next to this Python (`dask`, `kmeans-partition`) is run from there.
- env: the container's `env` (`value` only), `envFrom` Secret/ConfigMap refs (Secret
  `data` base64-decoded, `stringData` as is), over a minimal base (PATH, HOME, LANG,
  TMPDIR, PYTHONPATH); plus what the dask-kubernetes operator injects into workers
  (`DASK_SCHEDULER_ADDRESS`, `DASK_WORKER_NAME`, each only when the container's env does
  not set it, as that operator does) and `KUBECONFIG` (the emulator's kubeconfig stands in
  for the pod's service-account token).
- Service DNS: `<cluster>-scheduler.<ns>.svc.cluster.local:8786` (also `.svc` and bare
  `<cluster>-scheduler`) in env values and args -> `127.0.0.1:<free port>`.
- network: pods share the loopback: the scheduler gets `--host 127.0.0.1 --port <free>`,
  workers `--host 127.0.0.1`, every `--dashboard-address` becomes `127.0.0.1:0`.
- volumes: a ConfigMap or Secret volume becomes `<workdir>/<pod>/<volume>/` with one file
  per key (Secret `data` base64-decoded, `stringData` as is; file mode `defaultMode`); its
  `mountPath` prefix is rewritten in args, command and env values. An emptyDir
  becomes an empty `<workdir>/<pod>/<volume>/`; an arg or env value that *is* its
  `mountPath` is rewritten (only whole values: an emptyDir on `/tmp` must not rewrite
  every path under this machine's /tmp, which stays usable as it is).
- termination message: `terminationMessagePath` -> `<workdir>/<pod>/termination-log`
  (env values naming that path are rewritten too); read when the process exits.
- logs: each process's stdout+stderr go to `<workdir>/<pod>.log` (`FakeKubelet.log(pod)`).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .semantics import now_timestamp
from .harness import KubeHandle

DASK = "kubernetes.dask.org/v1"
SCHEDULER_PORT = 8786
BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def expand_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: unknown names stay as written, `$$` escapes."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def replace_flag(args: list[str], flag: str, value: str) -> list[str]:
    """Set `flag value` in an argv (both `--flag v` and `--flag=v`), adding it when absent."""
    out, index, found = [], 0, False
    while index < len(args):
        arg = args[index]
        if arg == flag and index + 1 < len(args):
            out += [flag, value]
            index, found = index + 2, True
            continue
        if arg.startswith(flag + "="):
            arg, found = f"{flag}={value}", True
        out.append(arg)
        index += 1
    return out if found else out + [flag, value]


@dataclass
class Pod:
    """One local process standing in for a pod."""

    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen
    log_path: Path
    termination_path: Optional[Path] = None
    reported: bool = False


@dataclass
class ClusterState:
    scheduler_port: int
    pods: list[Pod] = field(default_factory=list)
    running_reported: bool = False


@dataclass
class JobState:
    pod: Optional[Pod] = None
    failures: int = 0
    finished: bool = False


class FakeKubelet:
    """Runs DaskClusters and Jobs of one namespace as local processes (see module doc)."""

    def __init__(self, kube: KubeHandle, namespace: str, workdir: Path, poll_interval: float = 0.2):
        self.kube, self.namespace, self.workdir = kube, namespace, Path(workdir)
        self.poll_interval = poll_interval
        self.clusters: dict[str, ClusterState] = {}
        self.jobs: dict[str, JobState] = {}
        self.stopped_clusters: list[str] = []
        self.pods: dict[str, Pod] = {}  # every pod started, by name (for assertions)
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-kubelet", daemon=True)

    # --- lifecycle ---

    def __enter__(self) -> "FakeKubelet":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for name in list(self.clusters):
            self._stop_cluster(name)
        for state in self.jobs.values():
            if state.pod:
                self._terminate(state.pod)

    def log(self, pod_name: str) -> str:
        path = self.workdir / f"{pod_name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync_clusters()
                self._sync_jobs()
            except Exception as err:  # keep playing; the test sees .errors
                self.errors.append(err)
            self._stop.wait(self.poll_interval)

    # --- DaskClusters (what the dask-kubernetes operator and the kubelet would do) ---

    def _sync_clusters(self) -> None:
        live = {c["metadata"]["name"]: c for c in self.kube.list(DASK, "daskclusters", self.namespace)}
        for name in [n for n in self.clusters if n not in live or live[n]["metadata"].get("deletionTimestamp")]:
            self._stop_cluster(name)
            self.stopped_clusters.append(name)
        for name, cluster in live.items():
            if cluster["metadata"].get("deletionTimestamp"):
                continue
            if name not in self.clusters:
                self._start_cluster(cluster)
            state = self.clusters[name]
            if not state.running_reported and port_open(state.scheduler_port):
                self._record_scheduler_pod(cluster)
                self.kube.patch(DASK, "daskclusters", self.namespace, name,
                                {"status": {"phase": "Running"}}, subresource="status")
                state.running_reported = True

    def _start_cluster(self, cluster: dict) -> None:
        name = cluster["metadata"]["name"]
        state = ClusterState(scheduler_port=free_port())
        self.clusters[name] = state
        address = f"tcp://127.0.0.1:{state.scheduler_port}"
        scheduler_pod = cluster["spec"]["scheduler"]["spec"]
        container = scheduler_pod["containers"][0]
        state.pods.append(self._start_container(
            f"{name}-scheduler", scheduler_pod, container, extra_env={},
            flags={"--host": "127.0.0.1", "--port": str(state.scheduler_port)}))
        worker = cluster["spec"]["worker"]
        for index in range(worker.get("replicas", 1)):
            worker_name = f"{name}-default-worker-{index}"
            state.pods.append(self._start_container(
                worker_name, worker["spec"], worker["spec"]["containers"][0], extra_env={},
                injected_env={"DASK_SCHEDULER_ADDRESS": address, "DASK_WORKER_NAME": worker_name},
                flags={"--host": "127.0.0.1"}))

    def _record_scheduler_pod(self, cluster: dict) -> None:
        """The scheduler Pod object as the dask-kubernetes operator and kubelet leave it: Ready."""
        name = cluster["metadata"]["name"]
        pod_name = f"{name}-scheduler"
        owner = {"apiVersion": DASK, "kind": "DaskCluster", "name": name, "uid": cluster["metadata"]["uid"],
                 "controller": True, "blockOwnerDeletion": True}
        labels = {"dask.org/cluster-name": name, "dask.org/component": "scheduler"}
        self.kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": pod_name, "namespace": self.namespace, "labels": labels, "ownerReferences": [owner]},
            "spec": cluster["spec"]["scheduler"]["spec"]})
        now = now_timestamp()
        self.kube.patch("v1", "pods", self.namespace, pod_name, {"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now}]}}, "status")

    def _stop_cluster(self, name: str) -> None:
        state = self.clusters.pop(name, None)
        for pod in (state.pods if state else []):
            self._terminate(pod)

    # --- Jobs (what the Job controller and the kubelet would do) ---

    def _sync_jobs(self) -> None:
        live = {j["metadata"]["name"]: j for j in self.kube.list("batch/v1", "jobs", self.namespace)}
        for name, state in self.jobs.items():
            if name not in live and state.pod and state.pod.process.poll() is None:
                self._terminate(state.pod)
        for name, job in live.items():
            state = self.jobs.setdefault(name, JobState())
            if state.finished:
                continue
            if state.pod is None:
                self._start_job_pod(job, state)
            elif state.pod.process.poll() is not None and not state.pod.reported:
                self._report_job_pod(job, state)

    def _start_job_pod(self, job: dict, state: JobState) -> None:
        name = job["metadata"]["name"]
        pod_name = f"{name}-{state.failures}"
        template = job["spec"]["template"]
        container = template["spec"]["containers"][0]
        state.pod = self._start_container(pod_name, template["spec"], container, extra_env={}, flags={})
        labels = {**(template.get("metadata", {}).get("labels") or {}),
                  "job-name": name, "batch.kubernetes.io/job-name": name}
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job["metadata"]["uid"],
                 "controller": True, "blockOwnerDeletion": True}
        self.kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": pod_name, "namespace": self.namespace, "labels": labels, "ownerReferences": [owner]},
            "spec": template["spec"]})
        self.kube.patch("v1", "pods", self.namespace, pod_name, {"status": {"phase": "Running"}}, "status")
        job_status = {"active": 1, "ready": 1}
        if not (job.get("status") or {}).get("startTime"):
            job_status["startTime"] = now_timestamp()
        self.kube.patch("batch/v1", "jobs", self.namespace, name, {"status": job_status}, "status")

    def _report_job_pod(self, job: dict, state: JobState) -> None:
        pod, name = state.pod, job["metadata"]["name"]
        pod.reported = True
        code = pod.process.returncode
        message = pod.termination_path.read_text() if pod.termination_path and pod.termination_path.exists() else ""
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                      "message": message, "finishedAt": now_timestamp()}
        self.kube.patch("v1", "pods", self.namespace, pod.name, {"status": {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [{"name": "runner", "ready": False, "state": {"terminated": terminated}}]}},
            "status")
        now = now_timestamp()
        if code == 0:
            state.finished = True
            status = {"active": None, "ready": 0, "succeeded": 1, "completionTime": now, "conditions": [
                {"type": "Complete", "status": "True", "lastProbeTime": now, "lastTransitionTime": now}]}
        else:
            state.failures += 1
            if state.failures <= job["spec"].get("backoffLimit", 6):
                self.kube.patch("batch/v1", "jobs", self.namespace, name,
                                {"status": {"failed": state.failures}}, "status")
                state.pod = None  # the next poll starts a replacement pod
                return
            state.finished = True
            status = {"active": None, "ready": 0, "failed": state.failures, "conditions": [
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": "Job has reached the specified backoff limit",
                 "lastProbeTime": now, "lastTransitionTime": now}]}
        self.kube.patch("batch/v1", "jobs", self.namespace, name, {"status": status}, "status")

    # --- containers as processes ---

    def _service_addresses(self) -> dict[str, str]:
        mapping = {}
        for name, state in self.clusters.items():
            local = f"127.0.0.1:{state.scheduler_port}"
            for host in (f"{name}-scheduler.{self.namespace}.svc.cluster.local",
                         f"{name}-scheduler.{self.namespace}.svc", f"{name}-scheduler"):
                mapping[f"{host}:{SCHEDULER_PORT}"] = local
        return mapping

    def _rewrite(self, text: str, replacements: dict[str, str]) -> str:
        for old in sorted(replacements, key=len, reverse=True):  # longest first: FQDN before bare
            text = text.replace(old, replacements[old])
        return text

    def _mount_volumes(self, pod_dir: Path, pod_spec: dict, container: dict) -> tuple[dict[str, str], dict[str, str]]:
        """(ConfigMap/Secret mount prefixes, emptyDir mount paths) -> local directories."""
        volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
        mounts, empty_dirs = {}, {}
        for mount in container.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            if "emptyDir" in volume:
                target = pod_dir / mount["name"]
                target.mkdir(parents=True, exist_ok=True)
                empty_dirs[mount["mountPath"].rstrip("/")] = str(target)
                continue
            files, mode = self._volume_files(volume, pod_dir.name)
            (target := pod_dir / mount["name"]).mkdir(parents=True, exist_ok=True)
            for key, value in files.items():
                (target / key).write_bytes(value)
                (target / key).chmod(mode if mode is not None else 0o644)
            mounts[mount["mountPath"].rstrip("/")] = str(target)
        return mounts, empty_dirs

    def _volume_files(self, volume: dict, pod: str) -> tuple[dict[str, bytes], Optional[int]]:
        """(file name -> content, file mode or None) of a ConfigMap or Secret volume."""
        if "configMap" in volume:
            config_map = self.kube.get("v1", "configmaps", self.namespace, volume["configMap"]["name"])
            if config_map is None:
                raise RuntimeError(f"configmap {volume['configMap']['name']} not found for pod {pod}")
            return {k: v.encode() for k, v in (config_map.get("data") or {}).items()}, None
        if "secret" in volume:
            secret = self.kube.get("v1", "secrets", self.namespace, volume["secret"]["secretName"])
            if secret is None:
                raise RuntimeError(f"secret {volume['secret']['secretName']} not found for pod {pod}")
            files = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
            files.update({k: v.encode() for k, v in (secret.get("stringData") or {}).items()})
            return files, volume["secret"].get("defaultMode")
        raise NotImplementedError(f"volume {volume['name']}: only configMap, secret and emptyDir volumes are emulated")

    def _container_env(self, container: dict) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                secret = self.kube.get("v1", "secrets", self.namespace, source["secretRef"]["name"]) or {}
                env.update({k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()})
                env.update(secret.get("stringData") or {})
            elif "configMapRef" in source:
                config_map = self.kube.get("v1", "configmaps", self.namespace, source["configMapRef"]["name"]) or {}
                env.update(config_map.get("data") or {})
        for var in container.get("env") or []:
            if "valueFrom" in var:
                raise NotImplementedError(f"env {var['name']}: valueFrom is not emulated")
            env[var["name"]] = expand_vars(var.get("value", ""), env)
        return env

    def _start_container(self, pod_name: str, pod_spec: dict, container: dict, extra_env: dict[str, str],
                         flags: dict[str, str], injected_env: Optional[dict[str, str]] = None) -> Pod:
        """`extra_env` overrides the container's env; `injected_env` only fills names it lacks."""
        pod_dir = self.workdir / pod_name
        pod_dir.mkdir(parents=True, exist_ok=True)
        config_mounts, empty_dirs = self._mount_volumes(pod_dir, pod_spec, container)
        replacements = {**self._service_addresses(), **config_mounts}
        termination_path = None
        if container.get("terminationMessagePath"):
            termination_path = pod_dir / "termination-log"
            replacements[container["terminationMessagePath"]] = str(termination_path)
        env = {**(injected_env or {}), **self._container_env(container), **extra_env,
               "KUBECONFIG": self.kube.kubeconfig}
        env = {key: empty_dirs.get(value, self._rewrite(value, replacements)) for key, value in env.items()}
        argv = [expand_vars(a, env) for a in (container.get("command") or []) + (container.get("args") or [])]
        argv = [empty_dirs.get(arg, self._rewrite(arg, replacements)) for arg in argv]
        if not argv:
            raise NotImplementedError(f"pod {pod_name}: a container without command relies on the image entrypoint")
        for flag, value in flags.items():
            argv = replace_flag(argv, flag, value)
        if any(a == "--dashboard-address" or a.startswith("--dashboard-address=") for a in argv):
            argv = replace_flag(argv, "--dashboard-address", "127.0.0.1:0")
        local = Path(sys.executable).parent / argv[0]
        if local.exists():
            argv[0] = str(local)
        elif shutil.which(argv[0]) is None:
            raise FileNotFoundError(f"pod {pod_name}: executable {argv[0]!r} not found")
        base = {key: os.environ[key] for key in BASE_ENV_KEYS if key in os.environ}
        base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
        log_path = self.workdir / f"{pod_name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(argv, env={**base, **env}, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, cwd=pod_dir, start_new_session=True)
        self.pods[pod_name] = Pod(pod_name, argv, env, process, log_path, termination_path)
        return self.pods[pod_name]

    @staticmethod
    def _terminate(pod: Pod, grace: float = 5) -> None:
        if pod.process.poll() is not None:
            return
        pod.process.send_signal(signal.SIGTERM)
        try:
            pod.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pod.process.kill()
            pod.process.wait(timeout=grace)
