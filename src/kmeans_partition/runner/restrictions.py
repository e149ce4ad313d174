"""Loose worker restrictions that cannot strand tasks when every worker is lost.

We place tasks with ``workers=[address], allow_other_workers=True`` (`memory_mode.spread`,
`stage_support.placement`). Dask (distributed 2026.8) honours "loose" only while some worker is
running: when the last worker dies, such tasks go to ``no-worker``, and a worker that joins later
picks up only the ``no-worker`` tasks whose restrictions name it
(``Scheduler.bulk_schedule_unrunnable_after_adding_worker``). Their restrictions name dead
workers, so they wait forever, and so does the run (seen: every worker killed in the write).

`ForgetLostWorkers` is a scheduler plugin: when a worker leaves, its address is dropped from the
loose restrictions that name it (a restriction left empty means "anywhere"), before any new worker
can register; new tasks placed on workers already gone lose those addresses before they are
scheduled. Strict restrictions are never touched. This module is sent to the scheduler by
value (cloudpickle), so a scheduler without our package installed runs it too: it imports only
`distributed`.
"""

from __future__ import annotations

import logging

from distributed.diagnostics.plugin import SchedulerPlugin

log = logging.getLogger("kmeans_partition")

PLUGIN_NAME = "kmeans-partition-forget-lost-workers"


class ForgetLostWorkers(SchedulerPlugin):
    """Keeps loose worker restrictions naming live workers only."""

    idempotent = True  # registered once per scheduler, whichever run comes first

    def remove_worker(self, scheduler, worker: str, **kwargs) -> None:
        """Called after the worker's tasks were moved (to ``no-worker`` if none is left)."""
        drop_workers(scheduler.tasks.values(), lambda address: address == worker)

    def update_graph(self, scheduler, *, tasks=(), **kwargs) -> None:
        """New tasks placed (from a stale placement) on workers that are gone: called before they
        are scheduled."""
        present = scheduler.tasks
        drop_workers((present[k] for k in tasks if k in present), lambda a: a not in scheduler.workers)


def drop_workers(tasks, gone) -> int:
    """Remove the addresses for which ``gone(address)`` is true from the loose restrictions of
    ``tasks`` (scheduler `TaskState`s). A restriction left empty becomes None (any worker).

    Returns how many tasks changed.
    """
    changed = 0
    for ts in tasks:
        restrictions = ts.worker_restrictions
        if not restrictions or not ts.loose_restrictions:
            continue
        kept = {address for address in restrictions if not gone(address)}
        if kept != set(restrictions):
            ts.worker_restrictions = kept or None
            changed += 1
    return changed


def register(client) -> bool:
    """Install `ForgetLostWorkers` on the client's scheduler; False (logged) if it refused.

    Without it a run still works unless every worker is lost at once.
    """
    import sys

    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        client.register_plugin(ForgetLostWorkers(), name=PLUGIN_NAME)
    except Exception as err:  # e.g. a scheduler that does not accept pickled plugins
        log.warning("could not register %s on the scheduler (%s): a run may stall if every worker "
                    "is lost at once", PLUGIN_NAME, err)
        return False
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    return True
