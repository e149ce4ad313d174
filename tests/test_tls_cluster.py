"""A resource's Dask cluster, run as real `dask scheduler`/`dask worker` processes from the built pod
specs (tests/k8s/kubelet.py), runs code only for a client holding its certificate.

The TLS Secret and the DaskCluster are the builders' (key material as the reconcile makes it);
a client with the Secret's files connects and runs code on every worker; a plain tcp:// client,
a client trusting another CA, and a client presenting another resource's certificate are refused.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from distributed import Client
from distributed.security import Security

from kmeans_partition.operator import builders as B
from kmeans_partition.operator import labels as L
from kmeans_partition.operator import tls as TLS
from kmeans_partition.operator.crd import build_crd
from kmeans_partition.spec import API_GROUP, API_VERSION, KIND, parse_resource_spec

from k8s.harness import emulated_kube, wait_for
from k8s.kubelet import DASK, FakeKubelet, port_open
from test_builders import CPU, NAME

pytestmark = pytest.mark.timeout(180)
NS = "default"
REFUSED = (OSError, TimeoutError)  # distributed raises OSError subclasses (CommClosedError, ...) or times out


def _write_secret_files(secret: dict, folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, value in secret["data"].items():
        (folder / key).write_bytes(base64.b64decode(value))
        paths[key] = str(folder / key)
    return paths


def _security(ca: str, cert: str, key: str) -> Security:
    return Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, require_encryption=True)


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """(scheduler port, the cluster's Secret files, kubelet, scheduler pod) of one running 2-worker TLS
    DaskCluster, shared by this module's tests."""
    tmp_path = tmp_path_factory.mktemp("tls-cluster")
    with emulated_kube(tmp_path) as kube:
        yield from _run_cluster(kube, tmp_path)


def _run_cluster(kube, tmp_path):
    kube.install_crd(build_crd())  # an owner must exist: the emulator collects orphans
    owner = kube.create({"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "metadata": {"name": NAME},
                         "spec": CPU})
    uid = owner["metadata"]["uid"]
    children = {c["kind"]: c for c in B.build_children(NAME, NS, uid, parse_resource_spec(CPU))}
    secret = TLS.materialise(children["Secret"])
    kube.create(secret)
    kube.create(children["DaskCluster"])
    with FakeKubelet(kube, NS, tmp_path / "kubelet") as kubelet:
        name = L.dask_cluster_name(NAME)
        state = wait_for(lambda: kubelet.clusters.get(name) or kubelet.errors, timeout=30,
                         message="the cluster to start")
        assert not kubelet.errors, kubelet.errors
        wait_for(lambda: port_open(state.scheduler_port), timeout=60, message="the scheduler port")
        wait_for(lambda: (kube.get(DASK, "daskclusters", NS, name).get("status") or {}).get("phase") == "Running",
                 timeout=30, message="phase Running")
        scheduler = kubelet.pods[f"{name}-scheduler"]
        yield state.scheduler_port, _write_secret_files(secret, tmp_path / "client"), kubelet, scheduler
        assert not kubelet.errors, kubelet.errors


def test_the_certificate_holder_runs_code_on_every_worker(tls_cluster):
    port, files, kubelet, scheduler = tls_cluster
    assert scheduler.argv[scheduler.argv.index("--protocol") + 1] == "tls"
    security = _security(files["ca.crt"], files["tls.crt"], files["tls.key"])
    with Client(f"tls://127.0.0.1:{port}", security=security, timeout=30) as client:
        client.wait_for_workers(2, timeout=60)
        results = client.run(lambda: "ran")
        assert list(results.values()) == ["ran", "ran"]
        assert all(address.startswith("tls://") for address in results)  # workers listen on TLS too
    assert "tls://127.0.0.1" in kubelet.log(scheduler.name)
    key = Path(scheduler.env["DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY"])  # the mounted Secret, mode 0440
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY") and key.stat().st_mode & 0o777 == 0o440


def test_a_plain_tcp_client_is_refused(tls_cluster):
    port, *_ = tls_cluster
    with pytest.raises(REFUSED) as refused:
        Client(f"tcp://127.0.0.1:{port}", timeout=5)
    # the TLS listener drops a plaintext handshake
    assert any(word in str(refused.value) for word in ("reset by peer", "closed", "EOF")), refused.value


def test_a_client_trusting_another_ca_is_refused(tls_cluster, tmp_path):
    port, *_ = tls_cluster
    with pytest.raises(REFUSED) as refused:
        Client(f"tls://127.0.0.1:{port}", security=Security.temporary(), timeout=5)
    assert "TLS certificate does not match" in str(refused.value)  # the client rejects the scheduler


def test_a_client_with_another_resources_certificate_is_refused(tls_cluster, tmp_path):
    """It trusts the right CA (so it would accept the scheduler), but its own certificate is signed by
    another resource's CA: the scheduler requires a client certificate from its own CA."""
    port, files, *_ = tls_cluster
    other = _write_secret_files(TLS.build_tls_secret("other", NS, "uid", TLS.resource_material("other", NS)),
                                tmp_path / "other")
    with pytest.raises(REFUSED) as refused:
        Client(f"tls://127.0.0.1:{port}", security=_security(files["ca.crt"], other["tls.crt"], other["tls.key"]),
               timeout=5)
    # the scheduler rejects the certificate: with TLS 1.3 the client sees its alert or the hang-up
    assert "TLS" in str(refused.value) and any(word in str(refused.value) for word in ("UNKNOWN_CA", "EOF"))
