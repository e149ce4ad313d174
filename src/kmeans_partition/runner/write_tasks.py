"""Writing the planned groups on the workers: a window of `write_group` tasks, rebuilt when lost.

Split from `stage.py`; see `write.py` for the data flow of the write.
"""

from __future__ import annotations

import logging
import posixpath
from typing import Optional

from distributed import Client, as_completed, wait

from .progress import Progress
from .recovery import is_lost, lost_cause, note
from .output import is_local
from .write import ATTEMPTS_DIR, WritePlan, write_group

log = logging.getLogger("kmeans_partition")

#: After a failed write, how long to wait for the write tasks still running before removing files.
CLEANUP_WAIT_S = 600


class GroupWriter:
    """Writes a `WritePlan`'s groups into the output `out` (an `output.OutputLocation`)."""

    def __init__(self, client: Client, out, storage_options: dict, progress: Progress, task=write_group):
        self.client, self.out, self.storage_options, self.progress = client, out, storage_options, progress
        self.task = task  # `write.write_group` (stage.py passes its own name: tests patch it there)

    def write(self, plan: WritePlan, pieces: list, rebuild=None, window: Optional[int] = None
              ) -> list[tuple[int, str, int]]:
        """One `write_group` task per group, a few per worker thread at a time (bounds memory).

        A group whose pieces were lost with a worker (Dask cannot recompute them: the partitions
        were released) is written again from `rebuild(groups)`: every partition still needed read
        again once, for all the groups not yet written.
        On failure: no new task starts, the running ones end, then this run's files are removed.
        """
        window = window or 2 * max(1, sum(self.client.nthreads().values()))
        out_url, options = self.out.url(), self.storage_options
        queue, in_flight, written = as_completed(), {}, []
        next_group = 0

        def submit(g: int, group_pieces: list, rows, where: Optional[dict] = None) -> None:
            future = self.client.submit(
                self.task, plan.group_files(g), rows, out_url, options, *group_pieces, pure=False, **(where or {})
            )
            in_flight[future] = g
            queue.add(future)

        def submit_next(where: Optional[dict] = None) -> None:
            nonlocal next_group
            g, next_group = next_group, next_group + 1
            group_pieces, rows = pieces[g]
            pieces[g] = None  # the task holds them now; released when it is done
            submit(g, again.pop(g, group_pieces), rows, where)  # rebuilt pieces, if any: the first may be lost

        rebuilt, again, done = 0, {}, set()

        def pieces_again(g: int, why: str) -> list:
            """Group g's pieces from one re-read of every partition still needed (shared by the groups).

            The pieces they replace (a previous rebuild's, and the originals of the groups not yet
            submitted) are dropped first: the rows of the write are never held twice.
            """
            nonlocal rebuilt, again
            if g not in again or any(is_lost(f) for f in again[g]):
                note("the write", rebuilt, f"group {g} lost its pieces ({why})")
                rebuilt += 1
                groups = [h for h in range(plan.n_groups) if h not in done]
                again = {}
                for h in range(next_group, plan.n_groups):
                    pieces[h] = ([], pieces[h][1])
                again = rebuild(groups)
            return again.pop(g)

        try:
            slots = self.initial_slots()
            while next_group < min(window, plan.n_groups):
                submit_next(slots[next_group % len(slots)] if slots else None)
            for future in queue:
                g = in_flight.pop(future)
                if rebuild is not None and is_lost(future):
                    submit(g, pieces_again(g, lost_cause(future)), plan.group_pieces(g)[1])
                    continue
                files = future.result()
                done.add(g)
                again.pop(g, None)
                written += files
                completed = sum(f.last for f in plan.group_files(g))  # centroids whose last file this was
                self.progress.centroids_written(completed, sum(r for _, _, r in files))
                if next_group < plan.n_groups:
                    submit_next(self.freed_slot(future))
        except BaseException:
            self.client.cancel([f for item in pieces if item is not None for f in item[0]])
            submitted_files = [f.path for g in range(next_group) for f in plan.group_files(g)]
            self.remove_after_failure(list(in_flight), submitted_files)
            raise
        remove_attempts(self.out.fs, self.out.root)  # what attempts killed with their worker left
        return written

    def initial_slots(self) -> list[dict]:
        """Submit options for the first groups: the workers in turn, each as many times as it has
        threads (a worker given two at the start would otherwise keep two while another had none)."""
        return [{"workers": [address], "allow_other_workers": True}
                for address, threads in sorted(self.client.nthreads().items()) for _ in range(max(1, threads))]

    def freed_slot(self, done) -> dict:
        """Submit options for the next group: the worker whose write task `done` just ended, loosely.

        The clusters this tool starts do not steal work (`cluster.SCHEDULER_CONFIG`), so a group stays
        where it was first put; left to Dask (by the bytes it would move: every worker holds pieces of
        every group) a worker kept two groups in flight while another had none (2M x 128: the write's
        CPU +0.4-1.4 s, docs/benchmarks.md).
        """
        holders = self.client.who_has([done]).get(done.key, ())
        return {"workers": [next(iter(holders))], "allow_other_workers": True} if holders else {}

    def remove_after_failure(self, running: list, paths: list[str]) -> None:
        """Let the write tasks still running end, then delete this run's `paths` that exist.

        Errors here are logged, never raised: the write's own error is the one to report.
        """
        try:
            wait(running, timeout=CLEANUP_WAIT_S)
        except Exception as err:  # a timeout: remove what is there now
            log.warning("write tasks still running after %d s: %s", CLEANUP_WAIT_S, err)
        try:
            removed = remove_planned(self.out.fs, self.out.root, paths)
            remove_attempts(self.out.fs, self.out.root)
            log.info("removed %d file(s) of the failed write", len(removed))
        except Exception as err:
            log.warning("could not remove the failed write's files under %s: %s", self.out.uri, err)


def remove_attempts(fs, root: str) -> None:
    """Remove `ATTEMPTS_DIR` (write attempts killed before their rename) under `root` (fsspec).

    Only local filesystems have one (`write_group`): nothing is listed on an object store.
    """
    if not is_local(fs):
        return
    path = posixpath.join(root, ATTEMPTS_DIR)
    fs.invalidate_cache()
    if fs.exists(path):
        fs.rm(path, recursive=True)


def remove_planned(fs, root: str, relative_paths: list[str]) -> list[str]:
    """After a failure: delete those of this run's planned files that exist, then their empty folders.

    Touches nothing else under `root` (an fsspec filesystem). Returns the deleted files.
    """
    fs.invalidate_cache()
    existing = set(fs.find(root, withdirs=True)) if fs.exists(root) else set()
    planned = [posixpath.join(root, rel) for rel in relative_paths]
    doomed = [path for path in planned if path in existing]
    if doomed:
        fs.rm(doomed)
    for folder in sorted({posixpath.dirname(path) for path in planned} & existing):
        try:
            if fs.isdir(folder) and not fs.ls(folder, detail=False):
                fs.rmdir(folder)
        except (OSError, NotImplementedError):
            pass
    return doomed
