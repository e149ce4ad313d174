"""The output location: where it is, whether it may be written, what `overwrite` replaces.

An output directory written by this tool holds only ``centroid=N/part-NNNNN.parquet``
files, ``kmeans_centroids.npy``, ``_manifest.json``, ``report.html`` and, while running,
``_tmp-*/`` folders, the lease ``_lease.json`` and the checkpoint ``_checkpoint/`` (both kept
by `guard.py`, never part of what is replaced). ``overwrite=True`` deletes exactly the files
of such a listing, by their full names (never a pattern, never a recursive delete); a directory holding anything else,
at any depth (``centroid=1/notes.txt``), is refused even with ``overwrite`` so that a
wrong path can never delete unrelated data. Glob characters are refused in the output
path: fsspec would expand them (``s3://bkt/out*`` matches ``out-prod``).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

import fsspec
from fsspec.core import url_to_fs

MANIFEST = "_manifest.json"
CENTROIDS = "kmeans_centroids.npy"
REPORT = "report.html"
TMP_PREFIX = "_tmp-"
GLOB_CHARACTERS = "*?[]{}"
# Top-level names this tool writes, and (relative to the output root) the files.
# While running: the lease (``_lease.json``, runner/lease.py) and the checkpoint (``_checkpoint/``,
# runner/checkpoint.py); local temporaries end in ``.<run id>.tmp``, the local lease lock is ``_lease.json.lock``.
_RUN_STATE_FILE = r"_lease\.json(\.\w+\.tmp|\.lock)?|_checkpoint/(state\.json|centroids-\d{6}(-final)?\.npy)(\.\w+\.tmp)?"
_OWNED = re.compile(r"^(centroid=\d+|_tmp-[\w.-]+|_manifest\.json|kmeans_centroids\.npy|report\.html|_checkpoint"
                    r"|_lease\.json(\.\w+\.tmp|\.lock)?)$")
_OWNED_DIR = re.compile(r"^(centroid=\d+|_tmp-[\w.-]+(/.+)?|_checkpoint)$")
_OWNED_FILE = re.compile(r"^(centroid=\d+/part-\d{5}\.parquet|_tmp-[\w.-]+/.+|_manifest\.json|kmeans_centroids\.npy"
                         r"|report\.html|" + _RUN_STATE_FILE + r")$")


class OutputError(ValueError):
    """The output path cannot be used; the message names it."""


@dataclass
class OutputLocation:
    fs: fsspec.AbstractFileSystem
    root: str  # path within fs, no trailing slash
    uri: str  # as the user gave it

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def url(self, *parts: str) -> str:
        return self.fs.unstrip_protocol(self.path(*parts))


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return _protocol(fs) in ("file", "local")


def _protocol(fs: fsspec.AbstractFileSystem) -> str:
    proto = fs.protocol
    return proto[0] if isinstance(proto, (tuple, list)) else proto


def _canonical(fs: fsspec.AbstractFileSystem, path: str) -> str:
    path = fs._strip_protocol(path).rstrip("/")
    if is_local(fs):
        import os

        path = os.path.realpath(path)
    return path


def _glob_base(path: str) -> str:
    """The directory part of a glob before its first wildcard."""
    match = re.search(r"[*?\[]", path)
    return path if match is None else posixpath.dirname(path[: match.start()])


def check_no_glob(uri: str) -> None:
    """Refuse glob characters in an output path (fsspec treats them as patterns)."""
    found = sorted({char for char in uri if char in GLOB_CHARACTERS})
    if found:
        raise OutputError(
            f"output_path: {uri!r} contains glob characters ({' '.join(found)}); "
            "the output must be one exact location"
        )


def open_output(uri: str, storage_options: dict) -> OutputLocation:
    check_no_glob(uri)
    fs, root = url_to_fs(uri, **storage_options)
    return OutputLocation(fs=fs, root=_canonical(fs, root), uri=uri)


def check_not_inside_inputs(out: OutputLocation, inputs: list[str], storage_options: dict) -> None:
    """Refuse an output equal to, inside, or containing an input path."""
    for item in inputs:
        fs, path = url_to_fs(item, **storage_options)
        if _protocol(fs) != _protocol(out.fs):
            continue
        base = _canonical(fs, _glob_base(path))
        if out.root == base or out.root.startswith(base + "/") or base.startswith(out.root + "/"):
            raise OutputError(
                f"output_path: {out.uri!r} overlaps input path {item!r}; "
                "write the output outside the input (inputs are never modified)"
            )


def existing_entries(out: OutputLocation) -> list[str]:
    """Names directly under the output root ([] when it does not exist)."""
    if not out.fs.exists(out.root):
        return []
    if not out.fs.isdir(out.root):
        raise OutputError(f"output_path: {out.uri!r} exists and is a file, not a directory")
    return sorted(posixpath.basename(p.rstrip("/")) for p in out.fs.ls(out.root, detail=False))


def _relative(out: OutputLocation, path: str) -> str:
    root = out.root.rstrip("/") + "/"
    stripped = out.fs._strip_protocol(path)
    if not stripped.startswith(root):
        raise OutputError(f"output_path: listing {out.uri!r} returned {path!r}, which is outside it")
    return stripped[len(root):] + ("/" if path.endswith("/") else "")


def owned_listing(out: OutputLocation) -> tuple[list[str], list[str]]:
    """(files this tool wrote, anything else), as paths relative to the output root.

    Directory markers of object stores (``centroid=1/``) are skipped when the folder is one
    of ours; empty local folders of ours are listed as ``name/`` so they can be removed."""
    owned, foreign = [], []
    for name in existing_entries(out):
        if not _OWNED.match(name):
            foreign.append(name)
        elif out.fs.isdir(out.path(name)) and not out.fs.find(out.path(name)):
            owned.append(f"{name}/")
    foreign_tops = set(foreign)
    for path in out.fs.find(out.root):
        relative = _relative(out, path)
        if relative.split("/", 1)[0].rstrip("/") in foreign_tops:
            continue  # already reported by its top-level name
        if relative.endswith("/"):
            if not _OWNED_DIR.match(relative.rstrip("/")):
                foreign.append(relative)
        elif _OWNED_FILE.match(relative):
            owned.append(relative)
        else:
            foreign.append(relative)
    return sorted(owned), sorted(foreign)


def check_writable(out: OutputLocation, overwrite: bool) -> list[str]:
    """Before any work: refuse a non-empty output unless `overwrite` and all of it is ours.

    Returns the exact files (relative paths; ``name/`` for an empty folder) `overwrite` will delete.
    """
    entries = existing_entries(out)
    if not entries:
        return []
    if not overwrite:
        raise OutputError(
            f"output_path: {out.uri!r} is not empty ({len(entries)} entries, e.g. {entries[0]!r}); "
            "choose an empty location or pass overwrite=True (--overwrite) to replace a previous output"
        )
    owned, foreign = owned_listing(out)
    if foreign:
        raise OutputError(
            f"output_path: {out.uri!r} holds entries this tool did not write ({', '.join(foreign[:5])}); "
            "refusing to overwrite it"
        )
    return owned


def _has_magic(path: str) -> bool:
    return any(char in GLOB_CHARACTERS for char in path)


def clear_previous(out: OutputLocation, owned: list[str]) -> None:
    """Delete a previous output by the exact names `check_writable` listed: its manifest first,
    so it never looks complete half-deleted, then the other files in one non-recursive call.
    A file written since the listing is left alone (and a local folder holding one stays)."""
    files = [out.path(name) for name in owned if not name.endswith("/")]
    bad = [path for path in files if _has_magic(path)]
    if bad:
        raise OutputError(f"output_path: refusing to delete {bad[0]!r}: a glob character would make it a pattern")
    manifest = out.path(MANIFEST)
    if manifest in files:
        out.fs.rm([manifest])
    rest = [path for path in files if path != manifest]
    if rest:
        out.fs.rm(rest)
    if is_local(out.fs):
        _remove_empty_folders(out, owned)


def _remove_empty_folders(out: OutputLocation, owned: list[str]) -> None:
    """Local filesystems keep folders: remove ours, deepest first, when nothing is left in them."""
    import os

    folders = set()
    for name in owned:
        parts = name.rstrip("/").split("/")
        stop = len(parts) if name.endswith("/") else len(parts) - 1
        folders.update("/".join(parts[:depth]) for depth in range(1, stop + 1))
    for folder in sorted(folders, key=lambda f: f.count("/"), reverse=True):
        try:
            os.rmdir(out.path(folder))
        except OSError:  # not empty (written since the listing) or already gone
            pass
