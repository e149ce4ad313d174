"""metav1.Condition bookkeeping and phase derivation."""

from kmeans_partition.operator import conditions as C


def test_set_condition_adds_with_transition_time_and_generation():
    out = C.set_condition([], C.RUNNING, True, "JobActive", "running", generation=3, now="T1")
    assert out == [{"type": "Running", "status": "True", "reason": "JobActive", "message": "running",
                    "lastTransitionTime": "T1", "observedGeneration": 3}]


def test_transition_time_kept_unless_status_flips():
    first = C.set_condition([], C.RUNNING, False, "JobPending", now="T1")
    same = C.set_condition(first, C.RUNNING, False, "StillPending", "msg", now="T2")
    assert same[0]["lastTransitionTime"] == "T1" and same[0]["reason"] == "StillPending"
    flipped = C.set_condition(same, C.RUNNING, True, "JobActive", now="T3")
    assert flipped[0]["lastTransitionTime"] == "T3" and flipped[0]["status"] == "True"


def test_set_condition_replaces_and_orders_without_mutating_input():
    start = [{"type": C.FAILED, "status": "False", "reason": "r", "message": "", "lastTransitionTime": "T0"}]
    out = C.set_condition(start, C.DASK_CLUSTER_READY, True, "SchedulerRunning", now="T1")
    out = C.set_condition(out, C.FAILED, True, "InvalidSpec", now="T2")
    assert [c["type"] for c in out] == [C.DASK_CLUSTER_READY, C.FAILED]
    assert start[0]["status"] == "False"
    assert len([c for c in out if c["type"] == C.FAILED]) == 1


def test_derive_phase_precedence():
    conds = []
    assert C.derive_phase(conds) == "Pending"
    conds = C.set_condition(conds, C.DASK_CLUSTER_READY, True, "x", now="T")
    assert C.derive_phase(conds) == "Pending"
    conds = C.set_condition(conds, C.RUNNING, True, "x", now="T")
    assert C.derive_phase(conds) == "Running"
    assert C.derive_phase(C.set_condition(conds, C.SUCCEEDED, True, "x", now="T")) == "Succeeded"
    both = C.set_condition(C.set_condition(conds, C.SUCCEEDED, True, "x", now="T"), C.FAILED, True, "y", now="T")
    assert C.derive_phase(both) == "Failed"


def test_transitions_lists_new_and_flipped_only():
    before = C.set_condition([], C.RUNNING, False, "a", now="T")
    after = C.set_condition(before, C.RUNNING, False, "b", now="T")
    assert C.transitions(before, after) == []
    after = C.set_condition(after, C.SUCCEEDED, True, "done", now="T")
    assert [c["type"] for c in C.transitions(before, after)] == [C.SUCCEEDED]


def test_utc_now_is_rfc3339():
    import re

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", C.utc_now())
