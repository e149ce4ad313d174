"""A run's hold on its output: lease, the "may I write here" check, checkpoint and resume.

`OutputGuard.prepare` (before any work): take the lease (`lease.py`), then decide what the
run may replace. An output holding only the lease and nothing else is empty. Anything else
(a previous output, or a partial one: written files or a checkpoint) is replaced only with
``overwrite``, or when it is this resource's own partial output: the checkpoint's owner uid
equals ``KMP_OWNER_UID`` (a Job retry of the same resource) and there is no manifest. Someone
else's partial output is refused, naming its owner.

`clear_previous` deletes those files once the fit is done, after checking the lease.
`checkpoint` (after the inputs are listed) returns the `Checkpoint` to save to and, when the
saved state matches the spec and the input listing, the state to resume from; a checkpoint
of another spec or input listing is deleted (the run may replace it). `commit` checks the
lease before the manifest is written; `committed` deletes the checkpoint; `close` releases
the lease.
"""

from __future__ import annotations

import logging
from typing import Optional

from kmeans_partition import settings

from .checkpoint import FOLDER, Checkpoint, State, clear_stale, input_listing, listing_hash, spec_hash
from .lease import LEASE, Lease
from .output import (
    MANIFEST,
    OutputError,
    OutputLocation,
    check_not_inside_inputs,
    clear_previous,
    existing_entries,
    open_output,
    owned_listing,
)

log = logging.getLogger("kmeans_partition")

#: Names this tool keeps while running (never part of what `overwrite` replaces).
RUN_STATE = (LEASE, FOLDER)


def _run_state(relative: str) -> bool:
    top = relative.split("/", 1)[0].rstrip("/")
    return top in RUN_STATE or top.startswith(LEASE + ".")


class OutputGuard:
    """The output of one run: its lease, what it may replace, its checkpoint."""

    def __init__(self, spec, out: OutputLocation, lease: Lease):
        self.spec = spec
        self.out = out
        self.lease = lease
        self.owner_uid = lease.holder.owner_uid
        self.replace: list[str] = []
        self.saved: Optional[State] = None  # the checkpoint found at start
        self.checkpoint_: Optional[Checkpoint] = None

    @classmethod
    def prepare(cls, spec) -> "OutputGuard":
        out = open_output(spec.output_path, spec.storage_options)
        check_not_inside_inputs(out, spec.input_paths, spec.storage_options)
        existing_entries(out)  # a file there: a clear error before the lease is tried
        lease = Lease(out, settings.owner_uid(), settings.lease_seconds())
        lease.take()
        guard = cls(spec, out, lease)
        try:
            guard.replace = guard._writable()
        except BaseException:
            lease.release()
            raise
        lease.start_renewing()
        return guard

    def _writable(self) -> list[str]:
        """The files `overwrite` (or a retry of our own partial output) will delete."""
        entries = [name for name in existing_entries(self.out) if not _run_state(name)]
        self.saved = Checkpoint.read_state(self.out)
        if not entries and self.saved is None:
            return []
        own = (self.owner_uid is not None and self.saved is not None and self.saved.owner_uid == self.owner_uid
               and MANIFEST not in entries)
        if not (self.spec.overwrite or own):
            if self.saved is not None and MANIFEST not in entries:
                owner = f"resource uid {self.saved.owner_uid}" if self.saved.owner_uid else "a CLI run"
                raise OutputError(
                    f"output_path: {self.out.uri!r} holds a partial output of {owner} (checkpoint at iteration "
                    f"{self.saved.iteration}); only that resource's retries resume it; pass overwrite=True "
                    "(--overwrite) to replace it (a run of the same spec and inputs resumes from its checkpoint)"
                )
            example = entries[0] if entries else FOLDER
            raise OutputError(
                f"output_path: {self.out.uri!r} is not empty ({len(entries)} entries, e.g. {example!r}); "
                "choose an empty location or pass overwrite=True (--overwrite) to replace a previous output"
            )
        owned, foreign = owned_listing(self.out)
        foreign = [name for name in foreign if not _run_state(name)]
        if foreign:
            raise OutputError(
                f"output_path: {self.out.uri!r} holds entries this tool did not write ({', '.join(foreign[:5])}); "
                "refusing to overwrite it"
            )
        if own:
            log.info("output %s is this resource's own partial output (uid %s): replacing it",
                     self.out.uri, self.owner_uid)
        return [name for name in owned if not _run_state(name)]

    def checkpoint(self, files: list[str]) -> tuple[Checkpoint, Optional[State]]:
        """The checkpoint to save to and the state to resume from (None: start afresh)."""
        spec = self.spec
        listing = input_listing(files, spec.storage_options)
        state = State(self.owner_uid, self.lease.holder.run_id, spec_hash(spec), listing_hash(listing), len(listing))
        saved = self.saved
        resume = None
        if saved is not None:
            if (saved.spec_hash, saved.inputs_hash) == (state.spec_hash, state.inputs_hash):
                resume = saved
                state.centroids_file = saved.centroids_file  # deleted at the next save
            else:
                log.info("the checkpoint in %s is of another spec or input listing: starting afresh", self.out.uri)
                clear_stale(self.out)
        self.checkpoint_ = Checkpoint(self.out, spec.checkpoint_seconds, spec.checkpoint_iterations, state)
        if resume is not None:
            log.warning("resuming from the checkpoint at iteration %d%s (saved by run %s)", resume.iteration,
                        ", fit finished" if resume.finished or resume.converged
                        else f"; redoing iteration {resume.iteration} to rebuild the labels", resume.run_id)
        return self.checkpoint_, resume

    def clear_previous(self) -> None:
        """Delete what `overwrite` (or our own retry) replaces, while the lease is still ours."""
        self.lease.check()
        clear_previous(self.out, self.replace)

    def commit(self) -> None:
        """Before writing the manifest: the lease must still be ours."""
        self.lease.check()

    def committed(self) -> None:
        if self.checkpoint_ is not None:
            self.checkpoint_.delete()

    def close(self) -> None:
        self.lease.release()
