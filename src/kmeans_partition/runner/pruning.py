"""When a Lloyd step's bounds pay (`lloyd.py`): the cost model, and the schedule it sets.

Bounds (`bounds.py`) let a step skip rows, at a cost per row every step. With many clusters
they always pay; with few, only once the centroids move little. A step without bounds keeps a
`bounds.BoundsSample` from which the next one predicts whether computing every row's bounds
would pay; a step with bounds that did not pay runs the next 1, 2, 4 ... steps without.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import bounds as bd


@dataclass(frozen=True)
class PruningCosts:
    """When bounds and their optional checks pay, costs in units of one row-centroid distance
    in a GEMM (measured at d=384: a GEMM distance ~8 ns, a row copied out of place ~0.3 us,
    a row and its centroid gathered for one dot product ~1 us). A check is only run where
    the rows it settled last time (its yield) save more GEMM than it costs: with few
    clusters a row's full GEMM is cheaper than checking it.
    """

    #: Bound upkeep per row (moving and checking the bounds, the second-smallest distance):
    #: pruning pays while (settled fraction) x k exceeds it.
    upkeep: float = 10
    #: A row copied out of place (gathering stale rows, measuring the most-moved centroids).
    gather: float = 40
    #: A row and its centroid gathered for one dot product (tightening a row's bounds).
    tighten: float = 130
    #: From this many clusters on, bounds are always kept: the upkeep is a few percent of a
    #: step while rows can start settling at any step (measured at k=1000, 500k x 384: backing
    #: off in the early steps delayed pruning by 3 steps and cost more than it saved; at k=100
    #: the upkeep is ~10% of a step).
    always_bounds_from_k: int = 256
    #: Longest run of steps without bounds after pruning did not pay (doubling from 1).
    max_backoff: int = 16


def bounds_pay(last: bd.RowBounds, x_sq, centroids: np.ndarray, drift, costs: PruningCosts) -> bool:
    """Whether this step (after one without bounds) should compute every row's bounds: always
    from ``always_bounds_from_k`` clusters; below, when the last step's `BoundsSample` predicts
    that bounds would settle enough rows now to pay (no sample: yes). Per row, in distances: a
    plain step costs k, one with bounds the upkeep plus (k + gather) for each unsettled row
    (`lloyd._recompute` copies them out), so they pay from a settled share of
    (upkeep + gather) / (k + gather)."""
    k = centroids.shape[0]
    if last.upper is not None or k >= costs.always_bounds_from_k or last.sample is None:
        return True
    settled = last.sample.settled_fraction(x_sq, centroids, drift)
    return settled * (k + costs.gather) > costs.upkeep + costs.gather


def schedule(state: bd.RowBounds, k: int, settled: float, costs: PruningCosts) -> None:
    """After a step with bounds: keep them, or run the next steps without (backing off)."""
    if k >= costs.always_bounds_from_k or settled * k > costs.upkeep:
        state.backoff = 1
    else:
        state.plain_left, state.backoff = state.backoff, min(2 * state.backoff, costs.max_backoff)


def worth(yield_fraction: float, k: int, cost: float) -> bool:
    return yield_fraction * k > cost


def regrown(yield_fraction: float) -> float:
    """A check not tried this step: double its estimate so it is probed again later."""
    return min(1.0, 2.0 * max(yield_fraction, 1e-3))
