"""Helm values `policy.*` -> the operator's KMP_POLICY_* env -> the policy the operator applies."""

from __future__ import annotations

import pytest

from kmeans_partition import settings
from kmeans_partition.operator.policy import Policy

from k8s.chart import CHART_DIR, helm, render, the_deployment


def operator_env(*sets: str) -> dict[str, str]:
    (container,) = the_deployment(render(CHART_DIR, *sets))["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


def test_default_values_restrict_nothing():
    assert Policy.from_settings(operator_env()) == Policy()


def test_every_policy_value_reaches_the_operator():
    env = operator_env(
        "policy.allowedImagePrefixes={registry.local/ml/,ghcr.io/org/kmp}", "policy.maxWorkers=8",
        "policy.maxGpus=0", "policy.allowedPriorityClasses={batch-low,batch-high}",
        "policy.allowTolerations=false", "policy.allowAffinity=false",
        "policy.secretLabel=kmeanspartition.dev/storage=true", "policy.requireTls=true")
    assert {name for name in env if name.startswith("KMP_POLICY_")} == {s.name for s in settings.POLICY_SETTINGS}
    assert Policy.from_settings(env) == Policy(
        allowed_image_prefixes=("registry.local/ml/", "ghcr.io/org/kmp"), max_workers=8, max_gpus=0,
        allowed_priority_classes=("batch-low", "batch-high"), allow_tolerations=False, allow_affinity=False,
        secret_label=("kmeanspartition.dev/storage", "true"), require_tls=True)


@pytest.mark.parametrize("bad, path", [
    ("policy.maxWorkers=0", "/policy/maxWorkers"),
    ("policy.maxGpus=-1", "/policy/maxGpus"),
    ("policy.allowTolerations=perhaps", "/policy/allowTolerations"),
    ("policy.secretLabel=a=1\\,b=2", "/policy/secretLabel"),
    ("policy.allowedImagePrefixes={a b}", "/policy/allowedImagePrefixes/0"),
    ("policy.maxGPUs=2", "maxGPUs"),
])
def test_values_schema_rejects_bad_policy_values(bad, path):
    result = helm("template", "kmp", str(CHART_DIR), "--set", bad, check=False)
    assert result.returncode != 0 and "values don't meet the specifications of the schema" in result.stderr
    assert path in result.stderr, result.stderr
