"""Pure builders of every child manifest of one KMeansPartition.

Each takes the resource identity (name, namespace, uid) and its parsed `KMeansPartitionSpec` and
returns a plain dict, ownerReference included, so the reconciler only has to create it. Nothing here
talks to the API server.

Children: a DaskCluster (kubernetes.dask.org/v1, run by the dask-kubernetes operator, which creates
the scheduler pod + ``<cluster>-scheduler`` Service and the worker pods, injecting
``DASK_SCHEDULER_ADDRESS`` and ``DASK_WORKER_NAME`` into workers), the NetworkPolicy that admits to
the Dask pods only the cluster itself, the runner and the dask-kubernetes operator, a ConfigMap
holding the manifest, the runner's ServiceAccount/Role/RoleBinding, the Secret with the cluster's TLS
key material (unless ``cluster.tls: false``; tls.py), and the runner Job. Pod hardening: security.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import yaml

from kmeans_partition import settings as S
from kmeans_partition.operator import labels as L
from kmeans_partition.operator import security as SEC
from kmeans_partition.operator import workers as W
from kmeans_partition.operator.workers import worker_processes
from kmeans_partition.operator import tls as TLS
from kmeans_partition.spec import API_GROUP, API_VERSION, KIND, PLURAL, RESOURCE_FORBIDDEN_FIELDS, KMeansPartitionSpec

DASK_GROUP = "kubernetes.dask.org"
DASK_VERSION = "v1"
DASK_PLURAL = "daskclusters"
DEFAULT_IMAGE = S.DEFAULT_IMAGE.default
GPU_RESOURCE = "nvidia.com/gpu"
SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
WORKER_DASHBOARD_PORT = W.WORKER_DASHBOARD_PORT
SPEC_DIR = "/etc/kmeans-partition"
SPEC_FILE = "spec.yaml"
TERMINATION_LOG = "/dev/termination-log"
DASK_CLUSTER_NAME_LABEL = L.DASK_CLUSTER_NAME_LABEL
DASK_COMPONENT_LABEL = L.DASK_COMPONENT_LABEL
# How long the runner keeps trying to reach the scheduler (seconds; read by the runner).
RUNNER_CONNECT_TIMEOUT_SECONDS = 600


def scheduler_pod_labels(cluster_name: str) -> dict[str, str]:
    return {DASK_CLUSTER_NAME_LABEL: cluster_name, DASK_COMPONENT_LABEL: "scheduler"}


def scheduler_address(name: str, namespace: str, tls: bool = False) -> str:
    scheme = "tls" if tls else "tcp"
    return f"{scheme}://{L.scheduler_service_name(name)}.{namespace}.svc.cluster.local:{SCHEDULER_PORT}"


def _with_tls(name: str, spec: KMeansPartitionSpec, volumes: list[dict], mounts: list[dict],
              env: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(volumes, mounts, env) plus the TLS Secret and distributed's TLS settings when cluster.tls."""
    if not spec.cluster.tls:
        return volumes, mounts, env
    volume, mount = TLS.tls_volume(name)
    return [*volumes, volume], [*mounts, mount], [*TLS.tls_env(), *env]


def _resources(requirements: Any, gpus: int = 0) -> dict[str, dict[str, str]]:
    """Container resources from the spec; GPU keys dropped unless `gpus` (then limits = gpus).

    Quantities are written as strings: the DaskCluster CRD types them `string` (not
    int-or-string), so the API server would refuse an integer such as `nvidia.com/gpu: 1`."""
    out: dict[str, dict[str, str]] = {}
    for kind in ("requests", "limits"):
        values = {k: str(v) for k, v in (getattr(requirements, kind) or {}).items() if k != GPU_RESOURCE}
        if gpus and kind == "limits":
            values[GPU_RESOURCE] = str(gpus)
        if values:
            out[kind] = values
    return out


def _env(spec: KMeansPartitionSpec, *extra: dict[str, str]) -> list[dict[str, Any]]:
    env = [dict(item) for item in extra]
    for var in spec.cluster.env:
        env.append({"name": var.name, "value": var.value or ""})
    return env


def _env_from(spec: KMeansPartitionSpec) -> list[dict[str, Any]]:
    ref = spec.storage.secret_ref
    return [{"secretRef": {"name": ref.name}}] if ref else []


def _image(spec: KMeansPartitionSpec, default_image: str) -> str:
    return spec.cluster.image or default_image


def _pod_spec(
    spec: KMeansPartitionSpec, containers: list[dict[str, Any]], volumes: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """A restricted PodSpec (security.py) with the cluster-wide placement settings applied."""
    cluster = spec.cluster
    pod: dict[str, Any] = {
        "securityContext": SEC.pod_security_context(),
        "containers": containers,
        "volumes": volumes,
        **extra,
    }
    if cluster.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": secret} for secret in cluster.image_pull_secrets]
    if cluster.node_selector:
        pod["nodeSelector"] = dict(cluster.node_selector)
    if cluster.tolerations:
        pod["tolerations"] = copy.deepcopy(cluster.tolerations)
    if cluster.affinity:
        pod["affinity"] = copy.deepcopy(cluster.affinity)
    if cluster.priority_class_name:
        pod["priorityClassName"] = cluster.priority_class_name
    return pod


def _container(name: str, spec: KMeansPartitionSpec, default_image: str, **fields: Any) -> dict[str, Any]:
    container = {"name": name, "image": _image(spec, default_image), "imagePullPolicy": spec.cluster.image_pull_policy}
    container.update({key: value for key, value in fields.items() if value not in (None, [], {})})
    container["securityContext"] = SEC.container_security_context()
    return container


def worker_command(spec: KMeansPartitionSpec) -> list[str]:
    """`dask worker` for CPU workers, `dask-cuda-worker` (one worker process per GPU) otherwise
    (flags, env and volumes: `kmeans_partition.operator.workers`); spilled data goes to the
    local-directory emptyDir (the root filesystem is read-only)."""
    return [*worker_processes(spec).command, "--local-directory", SEC.DASK_LOCAL_DIR]


def _dask_pod_spec(spec: KMeansPartitionSpec, container: dict[str, Any], volumes: list[dict]) -> dict[str, Any]:
    """Scheduler and worker pods never talk to the Kubernetes API: no service-account token."""
    return _pod_spec(spec, [container], volumes, automountServiceAccountToken=False)


#: Tasks left this long without any worker fail (``no-workers-timeout``), then the runner: no endless wait.
NO_WORKERS_TIMEOUT = "1800s"
#: The scheduler's env (read by distributed): that timeout; the runner's `cluster.SCHEDULER_CONFIG` (no stealing).
SCHEDULER_SETTINGS_ENV = ({"name": "DASK_DISTRIBUTED__SCHEDULER__NO_WORKERS_TIMEOUT", "value": NO_WORKERS_TIMEOUT},
                          {"name": "DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING", "value": "False"})


def build_dask_cluster(
    name: str, namespace: str, uid: str, spec: KMeansPartitionSpec, default_image: str = DEFAULT_IMAGE
) -> dict[str, Any]:
    """The DaskCluster: a scheduler (never a GPU) + Service, and `workers` worker replicas."""
    cluster_name = L.dask_cluster_name(name)
    cluster = spec.cluster
    scheduler_volumes, scheduler_mounts, scheduler_env = _with_tls(name, spec, *SEC.scratch_volumes(),
                                                                   _env(spec, *SCHEDULER_SETTINGS_ENV))
    # Workers get the scheduler's address from the dask-kubernetes operator (always tcp://) unless set here.
    address = [S.SCHEDULER_ADDRESS.env(scheduler_address(name, namespace, tls=True))] if cluster.tls else []
    processes = worker_processes(spec)
    worker_volumes, worker_mounts, worker_env = _with_tls(
        name, spec, *SEC.scratch_volumes(cluster.local_directory_size), _env(spec, *address, *processes.env))
    protocol = ["--protocol", "tls"] if cluster.tls else []
    scheduler = _container(
        "scheduler", spec, default_image,
        command=["dask", "scheduler", *protocol, "--port", str(SCHEDULER_PORT),
                 "--dashboard-address", f":{DASHBOARD_PORT}"],
        ports=[
            {"name": "tcp-comm", "containerPort": SCHEDULER_PORT, "protocol": "TCP"},
            {"name": "http-dashboard", "containerPort": DASHBOARD_PORT, "protocol": "TCP"},
        ],
        readinessProbe={
            "httpGet": {"port": "http-dashboard", "path": "/health"},
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
        },
        env=scheduler_env,
        resources=_resources(cluster.resources.scheduler),
        volumeMounts=scheduler_mounts,
    )
    worker = _container(
        "worker",
        spec,
        default_image,
        command=worker_command(spec),
        ports=[{"name": "http-dashboard", "containerPort": WORKER_DASHBOARD_PORT, "protocol": "TCP"}],
        env=worker_env,
        envFrom=_env_from(spec),
        resources=_resources(cluster.resources.worker, gpus=cluster.gpus_per_worker),
        volumeMounts=[*worker_mounts, *processes.volume_mounts],
    )
    service = {
        "type": "ClusterIP",
        "selector": scheduler_pod_labels(cluster_name),
        "ports": [
            {"name": "tcp-comm", "protocol": "TCP", "port": SCHEDULER_PORT, "targetPort": "tcp-comm"},
            {"name": "http-dashboard", "protocol": "TCP", "port": DASHBOARD_PORT, "targetPort": "http-dashboard"},
        ],
    }
    return {
        "apiVersion": f"{DASK_GROUP}/{DASK_VERSION}",
        "kind": "DaskCluster",
        "metadata": L.child_metadata(name, namespace, uid, cluster_name, L.COMPONENT_DASK),
        "spec": {
            "worker": {
                "replicas": cluster.workers,
                "spec": _dask_pod_spec(spec, worker, [*worker_volumes, *processes.volumes]),
            },
            "scheduler": {"spec": _dask_pod_spec(spec, scheduler, scheduler_volumes), "service": service},
        },
    }


def resource_manifest(name: str, namespace: str, spec: KMeansPartitionSpec) -> dict[str, Any]:
    """The resource as the runner reads it: apiVersion/kind/metadata/spec, camelCase keys."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec.model_dump(mode="json", by_alias=True, exclude=set(RESOURCE_FORBIDDEN_FIELDS)),
    }


def build_config_map(name: str, namespace: str, uid: str, spec: KMeansPartitionSpec) -> dict[str, Any]:
    """ConfigMap with the whole manifest as `spec.yaml` (mounted read-only by the runner).

    Keys sorted: the text must not depend on the key order of free-form maps (storage.options),
    which the API server does not keep, so that `kmeans-partition render` shows the same text."""
    text = yaml.safe_dump(resource_manifest(name, namespace, spec), sort_keys=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": L.child_metadata(name, namespace, uid, L.config_map_name(name), L.COMPONENT_CONFIG),
        "data": {SPEC_FILE: text},
    }


def build_runner_rbac(name: str, namespace: str, uid: str) -> list[dict[str, Any]]:
    """ServiceAccount + Role (patch on this resource's status only: the runner's status sink
    only ever merge-patches, runner/k8s_status.py) + RoleBinding."""
    account = L.runner_account_name(name)
    meta = L.child_metadata(name, namespace, uid, account, L.COMPONENT_RBAC)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": copy.deepcopy(meta)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": copy.deepcopy(meta),
            "rules": [
                {
                    "apiGroups": [API_GROUP],
                    "resources": [f"{PLURAL}/status"],
                    "resourceNames": [name],
                    "verbs": ["patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": copy.deepcopy(meta),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        },
    ]


def build_job(
    name: str, namespace: str, uid: str, spec: KMeansPartitionSpec, default_image: str = DEFAULT_IMAGE
) -> dict[str, Any]:
    """The runner Job: `kmeans-partition run -f <spec.yaml>` against the DaskCluster's scheduler."""
    labels = L.child_labels(name, L.COMPONENT_RUNNER)
    spec_volume = {"name": "spec", "configMap": {"name": L.config_map_name(name)}}
    spec_mount = {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True}
    scratch, scratch_mounts = SEC.scratch_volumes()
    volumes, mounts, env = _with_tls(name, spec, [spec_volume, *scratch], [spec_mount, *scratch_mounts], _env(
        spec,
        S.SCHEDULER_ADDRESS.env(scheduler_address(name, namespace, tls=spec.cluster.tls)),
        S.RESOURCE_NAME.env(name),
        S.RESOURCE_NAMESPACE.env(namespace),
        S.TERMINATION_MESSAGE_PATH.env(TERMINATION_LOG),
        S.CONNECT_TIMEOUT.env(RUNNER_CONNECT_TIMEOUT_SECONDS),
        S.OWNER_UID.env(uid),
        S.EXPECTED_WORKERS.env(spec.cluster.workers * max(1, spec.cluster.gpus_per_worker)),
        S.WORKERS_TIMEOUT.env(RUNNER_CONNECT_TIMEOUT_SECONDS),
        S.LEASE_SECONDS.env(S.LEASE_SECONDS.default),
    ))
    runner = _container(
        "runner",
        spec,
        default_image,
        command=["kmeans-partition", "run", "-f", f"{SPEC_DIR}/{SPEC_FILE}"],
        env=env,
        envFrom=_env_from(spec),
        resources=_resources(spec.cluster.resources.runner),
        volumeMounts=mounts,
        terminationMessagePath=TERMINATION_LOG,
        terminationMessagePolicy="FallbackToLogsOnError",
    )
    pod = _pod_spec(
        spec,
        [runner],
        volumes,
        restartPolicy="Never",
        serviceAccountName=L.runner_account_name(name),
    )
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "template": {"metadata": {"labels": labels, "annotations": {L.PARENT_ANNOTATION: name}}, "spec": pod},
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": L.child_metadata(name, namespace, uid, L.job_name(name), L.COMPONENT_RUNNER),
        "spec": job_spec,
    }


@dataclass(frozen=True)
class DaskOperatorPeer:
    """Where the dask-kubernetes operator's pods run (operator settings KMP_DASK_OPERATOR_*)."""

    pod_labels: Mapping[str, str] = field(default_factory=lambda: dict(S.DASK_OPERATOR_POD_LABELS.default))
    namespace: Optional[str] = None  # None: any namespace


def build_network_policy(
    name: str, namespace: str, uid: str, dask_operator: Optional[DaskOperatorPeer] = None
) -> dict[str, Any]:
    """Ingress to the DaskCluster's pods (scheduler, workers, dashboards) only from that cluster's
    own pods, this resource's runner pod (any port), and the dask-kubernetes operator (scheduler
    and dashboard ports). Egress is left open: workers read and write object storage."""
    peer = dask_operator or DaskOperatorPeer()
    cluster_pods = {"matchLabels": {DASK_CLUSTER_NAME_LABEL: L.dask_cluster_name(name)}}
    runner_pod = {"matchLabels": {**L.selector_labels(name), L.COMPONENT_LABEL: L.COMPONENT_RUNNER}}
    operator_namespaces = {"matchLabels": {"kubernetes.io/metadata.name": peer.namespace}} if peer.namespace else {}
    operator_ports = [SCHEDULER_PORT, DASHBOARD_PORT, WORKER_DASHBOARD_PORT]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": L.child_metadata(name, namespace, uid, L.network_policy_name(name), L.COMPONENT_NETWORK),
        "spec": {
            "podSelector": cluster_pods,
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": copy.deepcopy(cluster_pods)}, {"podSelector": runner_pod}]},
                {
                    "from": [{"namespaceSelector": operator_namespaces,
                              "podSelector": {"matchLabels": dict(peer.pod_labels)}}],
                    "ports": [{"protocol": "TCP", "port": port} for port in operator_ports],
                },
            ],
        },
    }


def child_refs(name: str, tls: bool = True) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of every child `build_children` makes, in deletion order (pods first).

    For deleting children without their spec (`tls`: include the TLS Secret; deleting it when
    it does not exist is harmless); a test keeps it equal to `build_children`."""
    secret = [("v1", "Secret", L.tls_secret_name(name))] if tls else []
    return [
        ("batch/v1", "Job", L.job_name(name)),
        (f"{DASK_GROUP}/{DASK_VERSION}", "DaskCluster", L.dask_cluster_name(name)),
        *secret,
        ("networking.k8s.io/v1", "NetworkPolicy", L.network_policy_name(name)),
        ("v1", "ConfigMap", L.config_map_name(name)),
        ("rbac.authorization.k8s.io/v1", "RoleBinding", L.runner_account_name(name)),
        ("rbac.authorization.k8s.io/v1", "Role", L.runner_account_name(name)),
        ("v1", "ServiceAccount", L.runner_account_name(name)),
    ]


def build_children(
    name: str,
    namespace: str,
    uid: str,
    spec: KMeansPartitionSpec,
    default_image: Optional[str] = None,
    dask_operator: Optional[DaskOperatorPeer] = None,
) -> list[dict[str, Any]]:
    """Every child in creation order (config, RBAC, the NetworkPolicy and the TLS Secret before the
    pods that use them).

    The one list both the reconcile (creates them) and ``kmeans-partition render`` (prints them) use:
    a child added here is created before the DaskCluster, and rendered. The TLS Secret comes without
    key material: the reconcile fills it in when it creates it (`tls.materialise`)."""
    image = default_image or DEFAULT_IMAGE
    secret = [TLS.build_tls_secret(name, namespace, uid)] if spec.cluster.tls else []
    return [
        build_config_map(name, namespace, uid, spec),
        *build_runner_rbac(name, namespace, uid),
        build_network_policy(name, namespace, uid, dask_operator),
        *secret,
        build_dask_cluster(name, namespace, uid, spec, image),
        build_job(name, namespace, uid, spec, image),
    ]
