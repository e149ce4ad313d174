"""One writer per output: the lease object ``<output>/_lease.json``.

Taken with a conditional create before any work (local: a hard link of a written temporary file,
exclusive like ``O_EXCL`` and never seen half-written; S3: a PUT with ``If-None-Match: *``;
GCS: an upload with ``ifGenerationMatch=0`` (`gcs_lease`); other stores: fsspec's
``pipe_file(mode="create")``, which each implementation makes atomic or not), renewed by a
background thread every third of its lifetime, checked before the manifest is committed and
deleted afterwards (also after a failure). The lease names its holder (owner uid, host, pid,
run id) and when it expires.

A lease held by another run refuses the run, naming the holder. An expired lease (its holder
died without deleting it), or one whose owner uid is ours (an earlier pod of the same
resource: a Job starts the next pod only after the last one failed), is taken over by
replacing it conditionally on what was read: S3 ``If-Match: <etag>``, GCS
``ifGenerationMatch=<generation>`` (renewals and the release's delete too); local:
under a lock file created exclusively (``_lease.json.lock``), re-read, then replaced by an
atomic rename (renewals too); other stores: delete and create (not atomic: two takers of one
stale lease might both win there).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Optional

from . import gcs_lease
from .output import OutputError, OutputLocation, is_local

log = logging.getLogger("kmeans_partition")

LEASE = "_lease.json"
#: A local replacement lock older than this was left by a process that died holding it.
STALE_LOCK_S = 10.0


class LeaseError(OutputError):
    """The output is held by another run (the message names it), or our lease was lost."""


@dataclass
class Holder:
    run_id: str
    owner_uid: Optional[str]
    host: str
    pid: int
    expires: float  # unix seconds

    def describe(self) -> str:
        owner = f"resource uid {self.owner_uid}, " if self.owner_uid else ""
        left = self.expires - time.time()
        expiry = f"expires in {left:.0f}s" if left > 0 else f"expired {-left:.0f}s ago"
        return f"run {self.run_id} ({owner}host {self.host}, pid {self.pid}; {expiry})"


def _is_s3(out: OutputLocation) -> bool:
    proto = out.fs.protocol
    return "s3" in (proto if isinstance(proto, (tuple, list)) else (proto,))


class Lease:
    """The lease on one output for one run; `take`, then `start_renewing`, `check`, `release`."""

    def __init__(self, out: OutputLocation, owner_uid: Optional[str], seconds: float):
        self.out = out
        self.path = out.path(LEASE)
        self.seconds = seconds
        self.holder = Holder(uuid.uuid4().hex[:12], owner_uid, socket.gethostname(), os.getpid(), 0.0)
        self.taken_over: Optional[Holder] = None  # the stale holder we replaced
        self._etag: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.lost: Optional[str] = None  # why a renewal failed
        self._made_folder: Optional[str] = None
        self._renewing = threading.Lock()  # the renewal thread and `check`

    # -- store operations
    def _body(self) -> bytes:
        self.holder.expires = time.time() + self.seconds
        return json.dumps(asdict(self.holder), sort_keys=True).encode()

    def _create(self) -> bool:
        """Conditional create; False when the object exists."""
        data = self._body()
        if is_local(self.out.fs):
            folder = os.path.dirname(self.path)
            if not os.path.isdir(folder):
                try:
                    os.makedirs(folder)
                    self._made_folder = folder  # removed on release when nothing else was written
                except FileExistsError:
                    pass
            tmp = f"{self.path}.{self.holder.run_id}.tmp"
            with open(tmp, "wb") as handle:
                handle.write(data)
            try:
                os.link(tmp, self.path)  # atomic and exclusive (like O_EXCL), and never seen half-written
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            return True
        if gcs_lease.is_gcs(self.out.fs):
            try:
                self._etag = gcs_lease.put(self.out.fs, self.path, data, if_generation_match=0)
            except FileExistsError:  # 412: the object exists
                return False
            return True
        try:
            reply = self.out.fs.pipe_file(self.path, data, mode="create")
        except (FileExistsError, OSError) as err:
            if self._read() is not None:
                return False
            raise LeaseError(f"output_path: could not create the lease {self.path!r}: {err}") from err
        self._etag = (reply or {}).get("ETag") if isinstance(reply, dict) else None
        return True

    def _read(self) -> Optional[tuple[Holder, Optional[str]]]:
        """(holder, etag) of the lease object, or None when there is none."""
        self.out.fs.invalidate_cache(self.path)  # a listing's cached etag may be old
        try:
            info = self.out.fs.info(self.path)
            raw = self.out.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        try:
            holder = Holder(**json.loads(raw))
        except (ValueError, TypeError) as err:
            raise LeaseError(f"output_path: {self.path!r} is not a lease of this tool ({err})") from err
        if gcs_lease.is_gcs(self.out.fs):  # GCS preconditions compare generations, not etags
            return holder, info.get("generation")
        return holder, info.get("ETag") or info.get("etag")

    @contextlib.contextmanager
    def _local_guard(self) -> Iterator[bool]:
        """Local replacements (takeover, renewal) one at a time: a ``_lease.json.lock`` created
        exclusively; yields False when another process holds it (one left by a process that died
        mid-replacement is removed after `STALE_LOCK_S`)."""
        lock = f"{self.path}.lock"
        try:
            os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            try:
                if time.time() - os.path.getmtime(lock) > STALE_LOCK_S:
                    os.unlink(lock)
            except FileNotFoundError:
                pass
            yield False
            return
        try:
            yield True
        finally:
            os.unlink(lock)

    def _write_local(self) -> None:
        tmp = f"{self.path}.{self.holder.run_id}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(self._body())
        os.replace(tmp, self.path)  # atomic: readers see the old or the new lease

    def _replace(self, stale: Holder, etag: Optional[str]) -> bool:
        """Replace the lease `stale` read (with `etag`); False when someone changed it since."""
        if is_local(self.out.fs):
            with self._local_guard() as mine:
                found = self._read() if mine else None
                if found is None or found[0].run_id != stale.run_id:
                    return False
                self._write_local()
                return True
        if gcs_lease.is_gcs(self.out.fs) and etag:
            try:
                self._etag = gcs_lease.put(self.out.fs, self.path, self._body(), if_generation_match=etag)
            except FileExistsError:  # 412: replaced since we read it
                return False
            return True
        if _is_s3(self.out) and etag:
            try:
                reply = self.out.fs.pipe_file(self.path, self._body(), IfMatch=etag)
            except OSError:
                return False
            self._etag = (reply or {}).get("ETag") if isinstance(reply, dict) else None
            return True
        self.out.fs.rm_file(self.path)  # no conditional replace known for this store: delete + create
        return self._create()

    # -- the run's lease
    def take(self) -> None:
        """Take the lease or raise `LeaseError` naming its holder."""
        for _ in range(3):
            if self._create():
                return
            found = self._read()
            if found is None:
                continue  # released meanwhile: try again
            holder, etag = found
            if holder.run_id == self.holder.run_id:  # our own create, its reply lost and the request retried
                self._etag = etag
                return
            ours = holder.owner_uid is not None and holder.owner_uid == self.holder.owner_uid
            if holder.expires > time.time() and not ours:
                raise LeaseError(
                    f"output_path: {self.out.uri!r} is being written by another run: {holder.describe()}; "
                    f"wait for it to finish, or if it died, for its lease to expire ({LEASE})"
                )
            if self._replace(holder, etag):
                self.taken_over = holder
                log.warning("took over the output lease of %s (%s)", holder.describe(),
                            "same resource" if ours else "expired")
                return
        raise LeaseError(f"output_path: could not take the lease {self.path!r}: it keeps changing")

    def start_renewing(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="kmp-lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.renew()
            except LeaseError as err:  # taken by another run: reported by check()
                self.lost = str(err)
                log.error("lost the output lease: %s", err)
            except Exception as err:  # noqa: BLE001 - a store error: try again at the next renewal
                log.warning("renewing the output lease failed (will retry): %s", err)

    def renew(self) -> None:
        with self._renewing:
            if is_local(self.out.fs):
                for _ in range(50):
                    with self._local_guard() as mine:
                        if mine:
                            self._own_or_raise(self._read())
                            self._write_local()
                            return
                    time.sleep(0.01)
                raise LeaseError(f"output_path: could not renew the lease {self.path!r}: {self.path}.lock stays")
            found = self._own_or_raise(self._read())
            if gcs_lease.is_gcs(self.out.fs) and found[1]:
                try:
                    self._etag = gcs_lease.put(self.out.fs, self.path, self._body(), if_generation_match=found[1])
                except FileExistsError as err:  # 412: replaced between our read and our write
                    raise LeaseError(f"output_path: the lease {self.path!r} was replaced while renewing") from err
            elif _is_s3(self.out) and found[1]:
                self.out.fs.pipe_file(self.path, self._body(), IfMatch=found[1])
            else:
                self.out.fs.pipe_file(self.path, self._body())

    def _own_or_raise(self, found):
        if found is None or found[0].run_id != self.holder.run_id:
            raise LeaseError(f"output_path: the lease {self.path!r} was taken by "
                             f"{found[0].describe() if found else 'nobody (it is gone)'}")
        return found

    def check(self) -> None:
        """Before the manifest commit: the lease must still be ours (raises `LeaseError`)."""
        if self.lost:
            raise LeaseError(f"output_path: lost the output lease while running: {self.lost}")
        self.renew()

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            found = self._read()
            if found is not None and found[0].run_id == self.holder.run_id:
                if gcs_lease.is_gcs(self.out.fs) and found[1]:
                    gcs_lease.delete(self.out.fs, self.path, if_generation_match=found[1])
                else:
                    self.out.fs.rm_file(self.path)
            if self._made_folder:
                os.rmdir(self._made_folder)
        except OSError as err:  # not empty: the run wrote its output there
            if not os.path.isdir(self._made_folder or ""):
                log.warning("could not release the output lease %s: %s", self.path, err)
        except Exception as err:  # noqa: BLE001 - the run's own outcome matters more
            log.warning("could not release the output lease %s: %s", self.path, err)

    def describe(self) -> dict[str, Any]:
        return asdict(self.holder)
