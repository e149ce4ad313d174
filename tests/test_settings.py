"""The settings module declares every environment variable; code, chart and docs use only those."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kmeans_partition import settings
from kmeans_partition.operator import builders as B
from kmeans_partition.spec import parse_resource_spec

ROOT = Path(__file__).resolve().parents[1]
KMP_NAME = re.compile(r"\bKMP_[A-Z0-9_]*[A-Z0-9]\b")
DECLARED = {setting.name for setting in settings.SETTINGS}


def kmp_names_in(paths) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in paths:
        for name in KMP_NAME.findall(path.read_text(encoding="utf-8")):
            found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_kmp_name_in_src_and_charts_is_declared():
    chart_files = [p for p in (ROOT / "charts").rglob("*") if p.is_file() and p.suffix in (".yaml", ".tpl", ".txt", ".md")]
    sources = [*(ROOT / "src" / "kmeans_partition").rglob("*.py"), *chart_files]
    found = kmp_names_in(sources)
    assert {"KMP_DEFAULT_IMAGE", "KMP_NAME", "KMP_CONNECT_TIMEOUT"} <= set(found), "the scan found too little"
    undeclared = {name: where for name, where in found.items() if name not in DECLARED}
    assert not undeclared, f"declare these in src/kmeans_partition/settings.py: {undeclared}"


def test_no_module_but_settings_reads_a_declared_variable_by_its_literal_name():
    pattern = re.compile(r"""(?:environ\.get|environ\[|getenv)\(?\s*["'](KMP_\w+|DASK_SCHEDULER_ADDRESS)["']""")
    offenders = [str(path.relative_to(ROOT)) for path in (ROOT / "src" / "kmeans_partition").rglob("*.py")
                 if path.name != "settings.py" and pattern.search(path.read_text(encoding="utf-8"))]
    assert offenders == []


def test_docs_table_is_current_and_docs_name_only_declared_variables():
    text = (ROOT / "docs" / "operator.md").read_text(encoding="utf-8")
    assert settings.markdown_table() in text, (
        "docs/operator.md's Environment table is stale: paste the output of python -m kmeans_partition.settings"
    )
    docs = [*(ROOT / "docs").glob("*.md"), ROOT / "README.md"]
    assert set(kmp_names_in(docs)) <= DECLARED


def test_accessors_read_the_environment_at_call_time(monkeypatch):
    for setting in settings.SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
    assert settings.connect_timeout() == 60.0 and settings.reconcile_interval() == 30.0
    assert settings.default_image() == B.DEFAULT_IMAGE and settings.resource_name() is None
    monkeypatch.setenv("KMP_CONNECT_TIMEOUT", "600")
    monkeypatch.setenv("KMP_RECONCILE_INTERVAL", "2.5")
    monkeypatch.setenv("KMP_DEFAULT_IMAGE", "registry.example/kmp:1")
    monkeypatch.setenv("KMP_NAME", "docs")
    monkeypatch.setenv("KMP_TERMINATION_MESSAGE_PATH", "")  # empty counts as unset
    assert settings.connect_timeout() == 600.0 and settings.reconcile_interval() == 2.5
    assert settings.default_image() == "registry.example/kmp:1" and settings.resource_name() == "docs"
    assert settings.termination_message_path() is None
    assert settings.resource_namespace({"KMP_NAMESPACE": "team-a"}) == "team-a"  # an explicit mapping wins


def test_a_malformed_number_names_the_variable(monkeypatch):
    monkeypatch.setenv("KMP_CONNECT_TIMEOUT", "ten minutes")
    with pytest.raises(ValueError, match="KMP_CONNECT_TIMEOUT must be a number of seconds, got 'ten minutes'"):
        settings.connect_timeout()


def test_the_runner_job_sets_the_runners_variables_by_their_declared_names():
    spec = parse_resource_spec({"nClusters": 2, "idField": "id", "embeddingField": "e",
                                "inputPath": ["s3://b/in/"], "outputPath": "s3://b/out/"})
    (container,) = B.build_job("docs", "team-a", "uid", spec)["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    runner_settings = {s.name for s in settings.SETTINGS if s.read_by == "runner"}
    assert runner_settings <= set(env), runner_settings - set(env)
    assert settings.connect_timeout(env) == B.RUNNER_CONNECT_TIMEOUT_SECONDS
    assert settings.resource_name(env) == "docs" and settings.resource_namespace(env) == "team-a"
    assert settings.termination_message_path(env) == container["terminationMessagePath"]
