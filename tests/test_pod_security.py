"""Every pod the operator creates passes the Pod Security Standard "restricted" profile."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest

from kmeans_partition.operator import builders as B
from kmeans_partition.operator import security as SEC
from kmeans_partition.spec import parse_resource_spec

from k8s.pod_security import restricted_violations
from test_builders import CPU, GPU, NAME, NS, UID

KUBERNETES_VERSION = "1.33"


def pod_templates(data: dict) -> dict[str, dict]:
    """name -> PodSpec of every pod template among the children of a resource with spec `data`."""
    pods = {}
    for child in B.build_children(NAME, NS, UID, parse_resource_spec(data)):
        if child["kind"] == "DaskCluster":
            pods["scheduler"] = child["spec"]["scheduler"]["spec"]
            pods["worker"] = child["spec"]["worker"]["spec"]
        elif child["kind"] == "Job":
            pods["runner"] = child["spec"]["template"]["spec"]
    return pods


@pytest.fixture(params=[GPU, CPU], ids=["gpu", "cpu"])
def pods(request) -> dict[str, dict]:
    found = pod_templates(request.param)
    assert sorted(found) == ["runner", "scheduler", "worker"]
    return found


def test_every_operator_pod_is_admitted_under_restricted(pods):
    assert {name: restricted_violations(pod) for name, pod in pods.items()} == {name: [] for name in pods}


def test_a_pod_without_security_context_fails_the_four_restricted_checks():
    """What the issue found: runAsNonRoot, seccompProfile, allowPrivilegeEscalation, capabilities."""
    bare = {"containers": [{"name": "c", "image": "x"}]}
    failed = {line.split(":")[0] for line in restricted_violations(bare)}
    assert failed == {"running as non-root", "seccomp", "privilege escalation", "capabilities"}


@pytest.mark.parametrize("change, control", [
    (lambda p: p.update(hostNetwork=True), "host namespaces"),
    (lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath volumes"),
    (lambda p: p["volumes"].append({"name": "n", "nfs": {"server": "s", "path": "/"}}), "volume types"),
    (lambda p: p["containers"][0]["securityContext"].update(privileged=True), "privileged"),
    (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "capabilities"),
    (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(drop=["NET_RAW"]), "capabilities"),
    (lambda p: p["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True), "privilege escalation"),
    (lambda p: p["containers"][0]["securityContext"].update(runAsNonRoot=False), "running as non-root"),
    (lambda p: p["securityContext"].update(runAsUser=0), "running as non-root user"),
    (lambda p: p["securityContext"].update(seccompProfile={"type": "Unconfined"}), "seccomp"),
    (lambda p: p["containers"][0]["ports"].append({"containerPort": 80, "hostPort": 80}), "host ports"),
])
def test_the_checker_catches_each_control(pods, change, control):
    """Each control can fail: one change to an admitted pod is reported under that control."""
    pod = copy.deepcopy(pods["scheduler"])
    change(pod)
    assert control in {line.split(":")[0] for line in restricted_violations(pod)}


def test_net_bind_service_is_the_one_capability_that_may_be_added(pods):
    pod = copy.deepcopy(pods["worker"])
    pod["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    assert restricted_violations(pod) == []


def test_root_filesystem_is_read_only_and_every_writable_mount_is_a_sized_empty_dir(pods):
    for name, pod in pods.items():
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        writable = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"] if not m.get("readOnly")}
        assert SEC.TMP_DIR in writable, name
        assert all(v["emptyDir"]["sizeLimit"] for v in writable.values()), name
        assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == 10001


def test_workers_spill_into_their_sized_local_directory(pods):
    worker = pods["worker"]
    (container,) = worker["containers"]
    command = container["command"]
    local = command[command.index("--local-directory") + 1]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in worker["volumes"]}
    assert volumes[mounts[local]]["emptyDir"] == {"sizeLimit": "10Gi"}


def test_local_directory_size_comes_from_the_spec():
    pods = pod_templates({**CPU, "cluster": {"localDirectorySize": "200Gi"}})
    sizes = {v["name"]: v["emptyDir"]["sizeLimit"] for v in pods["worker"]["volumes"] if "emptyDir" in v}
    assert sizes == {SEC.TMP_VOLUME: SEC.TMP_SIZE, SEC.DASK_LOCAL_VOLUME: "200Gi"}


def test_dask_pods_get_no_token_and_no_storage_secret_on_the_scheduler(pods):
    assert pods["scheduler"]["automountServiceAccountToken"] is False
    assert pods["worker"]["automountServiceAccountToken"] is False
    assert "automountServiceAccountToken" not in pods["runner"]  # the runner patches its status
    secret = [{"secretRef": {"name": "s3-creds"}}]
    env_from = {name: pod["containers"][0].get("envFrom") for name, pod in pods.items()}
    assert env_from == {"scheduler": None, "worker": secret, "runner": secret}


def test_runner_job_is_a_valid_kubernetes_object():
    job = B.build_job(NAME, NS, UID, parse_resource_spec(CPU))
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    job["spec"]["template"]["spec"]["securityContext"]["runAsNonroot"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
