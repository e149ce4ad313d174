"""Child manifests built from a KMeansPartition spec (pure functions)."""

from __future__ import annotations

import dask
import pytest
import yaml

from kmeans_partition.operator import builders as B
from kmeans_partition.operator import labels as L
from kmeans_partition.runner.cluster import SCHEDULER_CONFIG
from kmeans_partition.spec import API_GROUP, KIND, PLURAL, parse_resource_spec

NAME, NS, UID = "docs", "team-a", "0f1e2d3c-uid"

BASE = {
    "nClusters": 8,
    "idField": "id",
    "embeddingField": "embedding",
    "inputPath": ["s3://bucket/in/"],
    "outputPath": "s3://bucket/out/",
    "storage": {"secretRef": {"name": "s3-creds"}, "options": {"endpoint_url": "http://minio:9000"}},
}

GPU = {
    **BASE,
    "engine": "raft",
    "activeDeadlineSeconds": 3600,
    "cluster": {
        "workers": 3,
        "gpusPerWorker": 2,
        "image": "registry.local/kmp:gpu",
        "imagePullSecrets": ["regcred"],
        "resources": {
            "scheduler": {"requests": {"cpu": "1"}, "limits": {"memory": "4Gi", "nvidia.com/gpu": 1}},
            "worker": {"requests": {"memory": "32Gi"}, "limits": {"memory": "32Gi"}},
            "runner": {"limits": {"memory": "1Gi"}},
        },
        "nodeSelector": {"pool": "gpu"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"x": 1}},
        "priorityClassName": "batch-high",
        "env": [{"name": "DASK_LOGGING__DISTRIBUTED", "value": "info"}],
    },
}

CPU = {**BASE, "cluster": {"workers": 2, "threadsPerWorker": 4}, "ttlSecondsAfterFinished": None}


def _spec(data):
    return parse_resource_spec(data)


def _only(items):
    (item,) = items
    return item


def _env(container):
    return {item["name"]: item.get("value") for item in container.get("env", [])}


@pytest.fixture
def gpu_cluster():
    return B.build_dask_cluster(NAME, NS, UID, _spec(GPU))


@pytest.fixture
def cpu_cluster():
    return B.build_dask_cluster(NAME, NS, UID, _spec(CPU), default_image="default/img:1")


def test_gpu_workers_run_dask_cuda_worker_with_gpu_limits(gpu_cluster):
    worker_spec = gpu_cluster["spec"]["worker"]
    assert worker_spec["replicas"] == 3
    worker = _only(worker_spec["spec"]["containers"])
    assert worker["command"][0] == "dask-cuda-worker"
    assert worker["resources"]["limits"] == {"memory": "32Gi", B.GPU_RESOURCE: "2"}
    assert worker["resources"]["requests"] == {"memory": "32Gi"}
    assert worker["image"] == "registry.local/kmp:gpu"
    assert worker["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert _env(worker)["DASK_LOGGING__DISTRIBUTED"] == "info"


def test_cpu_workers_run_dask_worker_without_gpus(cpu_cluster):
    worker = _only(cpu_cluster["spec"]["worker"]["spec"]["containers"])
    assert worker["command"][:2] == ["dask", "worker"]
    assert worker["command"][worker["command"].index("--nthreads") + 1] == "4"
    assert B.GPU_RESOURCE not in str(worker.get("resources", {}))
    assert worker["image"] == "default/img:1"
    assert cpu_cluster["spec"]["worker"]["replicas"] == 2


@pytest.mark.parametrize("data", [GPU, CPU], ids=["gpu", "cpu"])
def test_scheduler_never_requests_a_gpu(data):
    cluster = B.build_dask_cluster(NAME, NS, UID, _spec(data))
    scheduler = cluster["spec"]["scheduler"]
    container = _only(scheduler["spec"]["containers"])
    assert B.GPU_RESOURCE not in yaml.safe_dump(container.get("resources", {}))
    assert container["command"][:2] == ["dask", "scheduler"]
    assert "envFrom" not in container  # storage credentials stay off the scheduler
    ports = {p["name"]: p["port"] for p in scheduler["service"]["ports"]}
    assert ports["tcp-comm"] == B.SCHEDULER_PORT
    assert scheduler["service"]["selector"]["dask.org/cluster-name"] == cluster["metadata"]["name"]
    # tasks without any worker fail after a while instead of waiting forever (read by distributed)
    assert _env(container)["DASK_DISTRIBUTED__SCHEDULER__NO_WORKERS_TIMEOUT"] == B.NO_WORKERS_TIMEOUT
    # the runner's scheduler settings (no work stealing), as distributed reads them from the environment
    collected = dask.config.collect_env({k: v for k, v in _env(container).items() if k.startswith("DASK_")})
    assert SCHEDULER_CONFIG and all(dask.config.get(key, config=collected) == value
                                    for key, value in SCHEDULER_CONFIG.items())


def test_integer_quantities_are_written_as_strings():
    """The DaskCluster CRD types quantities `string`; the resource allows integers."""
    data = {**CPU, "cluster": {"resources": {"worker": {"requests": {"cpu": 4}, "limits": {"cpu": 6}},
                                             "runner": {"limits": {"cpu": 1}}}}}
    worker = _only(B.build_dask_cluster(NAME, NS, UID, _spec(data))["spec"]["worker"]["spec"]["containers"])
    assert worker["resources"] == {"requests": {"cpu": "4"}, "limits": {"cpu": "6"}}
    runner = _only(B.build_job(NAME, NS, UID, _spec(data))["spec"]["template"]["spec"]["containers"])
    assert runner["resources"] == {"limits": {"cpu": "1"}}


def test_gpu_scheduler_keeps_its_other_resources(gpu_cluster):
    container = _only(gpu_cluster["spec"]["scheduler"]["spec"]["containers"])
    assert container["resources"] == {"requests": {"cpu": "1"}, "limits": {"memory": "4Gi"}}


def test_placement_applies_to_every_pod(gpu_cluster):
    job = B.build_job(NAME, NS, UID, _spec(GPU))
    pods = [
        gpu_cluster["spec"]["worker"]["spec"],
        gpu_cluster["spec"]["scheduler"]["spec"],
        job["spec"]["template"]["spec"],
    ]
    for pod in pods:
        assert pod["nodeSelector"] == {"pool": "gpu"}
        assert pod["tolerations"] == GPU["cluster"]["tolerations"]
        assert pod["affinity"] == {"nodeAffinity": {"x": 1}}
        assert pod["priorityClassName"] == "batch-high"
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]


def test_cpu_pods_have_no_optional_placement(cpu_cluster):
    pod = cpu_cluster["spec"]["worker"]["spec"]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "imagePullSecrets"):
        assert key not in pod


def test_job_runs_the_runner_against_the_cluster():
    job = B.build_job(NAME, NS, UID, _spec(GPU))
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == L.runner_account_name(NAME)
    runner = _only(pod["containers"])
    assert runner["command"] == ["kmeans-partition", "run", "-f", "/etc/kmeans-partition/spec.yaml"]
    env = _env(runner)
    assert env["DASK_SCHEDULER_ADDRESS"] == f"tls://docs-dask-scheduler.{NS}.svc.cluster.local:8786"
    assert env["KMP_NAME"] == NAME and env["KMP_NAMESPACE"] == NS
    assert env["KMP_TERMINATION_MESSAGE_PATH"] == "/dev/termination-log"
    assert env["KMP_CONNECT_TIMEOUT"] == "600"  # the runner waits this long for the scheduler
    assert runner["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert runner["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert runner["resources"] == {"limits": {"memory": "1Gi"}}
    assert runner["volumeMounts"] == [{"name": "spec", "mountPath": "/etc/kmeans-partition", "readOnly": True},
                                      {"name": "tmp", "mountPath": "/tmp"},
                                      {"name": "dask-tls", "mountPath": "/etc/dask-tls", "readOnly": True}]
    spec_volume, tmp_volume, tls_volume = pod["volumes"]
    assert spec_volume["configMap"]["name"] == L.config_map_name(NAME)
    assert tmp_volume == {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}
    assert tls_volume == {"name": "dask-tls", "secret": {"secretName": L.tls_secret_name(NAME), "defaultMode": 0o440}}


def test_job_omits_unset_limits():
    job = B.build_job(NAME, NS, UID, _spec(CPU))
    assert "activeDeadlineSeconds" not in job["spec"]
    assert "ttlSecondsAfterFinished" not in job["spec"]
    runner = _only(job["spec"]["template"]["spec"]["containers"])
    assert "envFrom" in runner and "resources" not in runner


def test_no_secret_means_no_env_from():
    data = {**CPU, "storage": {"options": {"anon": True}}}
    cluster = B.build_dask_cluster(NAME, NS, UID, _spec(data))
    assert "envFrom" not in _only(cluster["spec"]["worker"]["spec"]["containers"])


@pytest.mark.parametrize("data", [GPU, CPU], ids=["gpu", "cpu"])
def test_config_map_round_trips_through_the_spec_parser(data):
    config_map = B.build_config_map(NAME, NS, UID, _spec(data))
    manifest = yaml.safe_load(config_map["data"]["spec.yaml"])
    assert manifest["apiVersion"] == f"{API_GROUP}/v1alpha1" and manifest["kind"] == KIND
    assert manifest["metadata"] == {"name": NAME, "namespace": NS}
    assert parse_resource_spec(manifest["spec"]) == _spec(data)


def test_runner_role_only_patches_its_own_status():
    account, role, binding = B.build_runner_rbac(NAME, NS, UID)
    assert account["kind"] == "ServiceAccount"
    (rule,) = role["rules"]
    assert rule == {
        "apiGroups": [API_GROUP],
        "resources": [f"{PLURAL}/status"],
        "resourceNames": [NAME],
        "verbs": ["patch"],  # runner/k8s_status.py only PATCHes, never GETs
    }
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NS}]


def test_every_child_is_labelled_and_owned():
    children = B.build_children(NAME, NS, UID, _spec(GPU))
    kinds = [child["kind"] for child in children]
    assert kinds == ["ConfigMap", "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy", "Secret", "DaskCluster",
                     "Job"]
    for child in children:
        meta = child["metadata"]
        assert meta["namespace"] == NS
        for key, value in L.selector_labels(NAME).items():
            assert meta["labels"][key] == value
        (owner,) = meta["ownerReferences"]
        assert owner["uid"] == UID and owner["kind"] == KIND and owner["controller"] is True
        assert L.parent_name(child) == NAME
    names = [(c["kind"], c["metadata"]["name"]) for c in children]
    assert len(set(names)) == len(names)
    assert B.build_children(NAME, NS, UID, _spec(GPU)) == children  # deterministic


@pytest.mark.parametrize("cluster", [GPU, CPU])
def test_child_refs_name_exactly_the_built_children(cluster):
    built = {(c["apiVersion"], c["kind"], c["metadata"]["name"]) for c in B.build_children(NAME, NS, UID, _spec(cluster))}
    refs = B.child_refs(NAME)
    assert len(refs) == len(set(refs)) and set(refs) == built
    assert [kind for _, kind, _ in refs][:2] == ["Job", "DaskCluster"]  # pods (and GPUs) go first


@pytest.mark.parametrize("name", ["a" * 253, "3d.embeddings.v2", "x" * 60])
def test_child_names_are_valid_dns_labels(name):
    for child in (L.dask_cluster_name(name), L.scheduler_service_name(name), L.job_name(name), L.config_map_name(name)):
        assert len(child) <= 63 and child[0].isalpha() and child.replace("-", "").isalnum(), child
    assert len(L.label_value(name)) <= 63
    assert L.dask_cluster_name(name) != L.dask_cluster_name(name + "b")


def test_parent_name_ignores_foreign_objects():
    assert L.parent_name({"metadata": {"name": "x", "labels": {"app": "other"}}}) is None
