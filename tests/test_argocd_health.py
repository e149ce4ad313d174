"""docs/argocd-health.lua run in a real Lua (lupa), as Argo CD runs it: `obj` global, returns hs."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = (REPO_ROOT / "docs" / "argocd-health.lua").read_text()


def _lua_runtime():
    # Argo CD embeds gopher-lua (Lua 5.1); prefer the matching lupa build.
    for module in ("lupa.lua51", "lupa.luajit21", "lupa.lua54", "lupa"):
        try:
            return importlib.import_module(module).LuaRuntime(unpack_returned_tuples=True)
        except ImportError:
            continue
    raise RuntimeError("lupa is installed but provides no Lua runtime")


def _to_lua(lua, value):
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def health(resource: dict) -> tuple[str, str]:
    lua = _lua_runtime()
    lua.globals().obj = _to_lua(lua, resource)
    result = lua.execute(SCRIPT)
    return result["status"], result["message"]


def _resource(status=None, generation=1):
    resource = {"apiVersion": "kmeanspartition.dev/v1alpha1", "kind": "KMeansPartition",
                "metadata": {"name": "x", "generation": generation}}
    if status is not None:
        resource["status"] = status
    return resource


def _condition(kind, reason, message, status="True"):
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 1}


def test_no_status_is_progressing():
    assert health(_resource())[0] == "Progressing"


def test_succeeded_is_healthy_with_condition_message():
    status = {"observedGeneration": 1, "phase": "Succeeded", "conditions": [
        _condition("DaskClusterReady", "Deleted", "cluster removed", status="False"),
        _condition("Succeeded", "JobComplete", "wrote 1000 partitions")]}
    assert health(_resource(status)) == ("Healthy", "JobComplete: wrote 1000 partitions")


def test_failed_is_degraded_with_reason_and_message():
    status = {"observedGeneration": 1, "phase": "Failed", "conditions": [
        _condition("Running", "JobRunning", "", status="False"),
        _condition("Failed", "InvalidSpec", "spec.nClusters: must be >= 1")]}
    assert health(_resource(status)) == ("Degraded", "InvalidSpec: spec.nClusters: must be >= 1")


def test_failed_condition_wins_without_phase():
    status = {"observedGeneration": 1, "conditions": [_condition("Failed", "BackoffLimitExceeded", "oom")]}
    assert health(_resource(status)) == ("Degraded", "BackoffLimitExceeded: oom")


def test_running_is_progressing_with_iteration():
    status = {"observedGeneration": 1, "phase": "Running",
              "conditions": [_condition("DaskClusterReady", "ClusterRunning", "4 workers"),
                             _condition("Running", "JobRunning", "fitting")],
              "progress": {"stage": "fit", "iteration": 12, "maxIter": 300}}
    assert health(_resource(status)) == ("Progressing", "JobRunning: fitting (iteration 12/300)")


def test_pending_phase_without_conditions_is_progressing():
    assert health(_resource({"phase": "Pending"})) == ("Progressing", "Pending")


def test_unobserved_generation_is_progressing_even_if_succeeded():
    status = {"observedGeneration": 1, "phase": "Succeeded",
              "conditions": [_condition("Succeeded", "JobComplete", "done")]}
    state, message = health(_resource(status, generation=2))
    assert state == "Progressing"
    assert "generation 2" in message


@pytest.mark.parametrize("phase, expected", [("Succeeded", "Healthy"), ("Failed", "Degraded"),
                                             ("Running", "Progressing")])
def test_phase_alone_decides(phase, expected):
    assert health(_resource({"phase": phase}))[0] == expected
