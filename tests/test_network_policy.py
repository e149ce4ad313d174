"""The per-resource NetworkPolicy: only the cluster's pods, the runner and the dask operator get in.

`admits` evaluates a networking.k8s.io/v1 ingress policy the way the API documents it
(a peer's podSelector alone means the policy's namespace; namespaceSelector and
podSelector in one peer must both match; no `from` means every source, no `ports`
every port), so the tests
check which real pods, labelled as the builders and the dask-kubernetes operator label
them, may connect. No NetworkPolicy implementation (CNI) ran here.
"""

from __future__ import annotations

from typing import Mapping, Optional

import kubernetes_validate
import pytest

from kmeans_partition import settings
from kmeans_partition.operator import builders as B
from kmeans_partition.operator import labels as L
from kmeans_partition.spec import parse_resource_spec

from k8s.chart import CHART_DIR, DASK_OPERATOR, of_kind, render
from test_builders import CPU, NAME, NS, UID

OPERATOR_NS = "dask-operator"
SOME_WORKER_PORT = 40123  # dask workers listen on random ports


def _matches(selector: Optional[Mapping], labels: Mapping[str, str]) -> bool:
    wanted = (selector or {}).get("matchLabels") or {}
    assert not (selector or {}).get("matchExpressions"), "not evaluated here"
    return all(labels.get(key) == value for key, value in wanted.items())


def _peer_matches(peer: Mapping, policy_ns: str, pod_labels: Mapping, pod_ns: str) -> bool:
    namespace_labels = {"kubernetes.io/metadata.name": pod_ns}
    if "namespaceSelector" in peer:
        in_namespace = _matches(peer["namespaceSelector"], namespace_labels)
    else:
        in_namespace = pod_ns == policy_ns
    return in_namespace and _matches(peer.get("podSelector"), pod_labels)


def admits(policy: dict, target_labels: Mapping, source_labels: Mapping, source_ns: str, port: int) -> bool:
    """Whether ingress from a pod (`source_labels` in `source_ns`) to a pod with `target_labels`
    in the policy's namespace on TCP `port` is allowed, this policy being the only one."""
    spec, policy_ns = policy["spec"], policy["metadata"]["namespace"]
    if not _matches(spec["podSelector"], target_labels) or "Ingress" not in spec["policyTypes"]:
        return True  # not isolated by this policy
    for rule in spec.get("ingress") or []:
        ports = rule.get("ports")
        if ports and not any(p.get("protocol", "TCP") == "TCP" and p["port"] == port for p in ports):
            continue
        peers = rule.get("from")
        if not peers or any(_peer_matches(peer, policy_ns, source_labels, source_ns) for peer in peers):
            return True  # a rule without `from` admits every source
    return False


def dask_pod(cluster: str, component: str) -> dict[str, str]:
    """Labels the dask-kubernetes operator puts on a DaskCluster's pods."""
    return {L.DASK_CLUSTER_NAME_LABEL: cluster, L.DASK_COMPONENT_LABEL: component}


@pytest.fixture(scope="module")
def children() -> dict[str, dict]:
    return {child["kind"]: child for child in B.build_children(NAME, NS, UID, parse_resource_spec(CPU))}


@pytest.fixture(scope="module")
def policy(children) -> dict:
    return children["NetworkPolicy"]


@pytest.fixture(scope="module")
def dask_operator_pod() -> dict[str, str]:
    """The dask-kubernetes operator's pod labels, as its vendored chart renders them."""
    docs = render(CHART_DIR, "daskOperator.enabled=true")
    (deployment,) = [d for d in of_kind(docs, "Deployment") if DASK_OPERATOR in d["metadata"]["name"]]
    return deployment["spec"]["template"]["metadata"]["labels"]


def test_policy_is_an_owned_child_guarding_the_dask_cluster(children, policy):
    cluster = children["DaskCluster"]["metadata"]["name"]
    assert policy["metadata"]["name"] == L.network_policy_name(NAME)
    assert policy["metadata"]["ownerReferences"] == [L.owner_reference(NAME, UID)]
    assert policy["metadata"]["labels"] == L.child_labels(NAME, L.COMPONENT_NETWORK)
    assert L.parent_name(policy) == NAME
    assert policy["spec"]["podSelector"] == {"matchLabels": {L.DASK_CLUSTER_NAME_LABEL: cluster}}
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress stays open: object storage
    kubernetes_validate.validate(policy, "1.33", strict=True)


@pytest.mark.parametrize("target", ["scheduler", "worker"])
def test_who_may_connect(children, policy, dask_operator_pod, target):
    cluster = children["DaskCluster"]["metadata"]["name"]
    runner = children["Job"]["spec"]["template"]["metadata"]["labels"]
    to = dask_pod(cluster, target)
    for port in (B.SCHEDULER_PORT, B.DASHBOARD_PORT, SOME_WORKER_PORT):
        assert admits(policy, to, dask_pod(cluster, "worker"), NS, port)
        assert admits(policy, to, dask_pod(cluster, "scheduler"), NS, port)
        assert admits(policy, to, runner, NS, port)
        assert not admits(policy, to, dask_pod("other-dask", "worker"), NS, port)  # another cluster
        assert not admits(policy, to, {"app": "notebook"}, NS, port)  # anyone else in the namespace
        assert not admits(policy, to, runner, "elsewhere", port)  # same labels, other namespace
        assert not admits(policy, to, dask_pod(cluster, "worker"), "elsewhere", port)
    other_runner = L.child_labels("other", L.COMPONENT_RUNNER)
    assert not admits(policy, to, other_runner, NS, B.SCHEDULER_PORT)  # another resource's runner
    for port in (B.SCHEDULER_PORT, B.DASHBOARD_PORT):
        assert admits(policy, to, dask_operator_pod, OPERATOR_NS, port)
    assert not admits(policy, to, dask_operator_pod, OPERATOR_NS, SOME_WORKER_PORT)


def test_the_dask_operator_can_be_pinned_to_its_namespace_and_labels(monkeypatch):
    monkeypatch.setenv("KMP_DASK_OPERATOR_POD_LABELS", "app=dask-op, tier=control")
    monkeypatch.setenv("KMP_DASK_OPERATOR_NAMESPACE", OPERATOR_NS)
    peer = B.DaskOperatorPeer(settings.dask_operator_pod_labels(), settings.dask_operator_namespace())
    policy = B.build_network_policy(NAME, NS, UID, peer)
    to = dask_pod(L.dask_cluster_name(NAME), "scheduler")
    operator = {"app": "dask-op", "tier": "control"}
    assert admits(policy, to, operator, OPERATOR_NS, B.SCHEDULER_PORT)
    assert not admits(policy, to, operator, "kube-system", B.SCHEDULER_PORT)
    assert not admits(policy, to, {"app.kubernetes.io/name": "dask-kubernetes-operator"}, OPERATOR_NS,
                       B.SCHEDULER_PORT)


def test_bad_dask_operator_labels_setting_is_refused(monkeypatch):
    monkeypatch.setenv("KMP_DASK_OPERATOR_POD_LABELS", "app")
    with pytest.raises(ValueError, match="KMP_DASK_OPERATOR_POD_LABELS must be key=value"):
        settings.dask_operator_pod_labels()


def test_admits_follows_the_api_semantics(policy):
    """Pods the podSelector misses are not isolated; no rules deny all; a rule without `from` admits all."""
    worker = dask_pod(L.dask_cluster_name(NAME), "worker")
    assert admits(policy, {"app": "unrelated"}, {"app": "x"}, NS, 80)
    assert not admits({**policy, "spec": {**policy["spec"], "ingress": []}}, worker, worker, NS, 80)
    assert admits({**policy, "spec": {**policy["spec"], "ingress": [{}]}}, worker, {"app": "x"}, "any", 80)
