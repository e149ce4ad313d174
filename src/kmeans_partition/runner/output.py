"""The output location: where it is, whether it may be written, what `overwrite` replaces.

An output directory written by this tool holds only ``centroid=N/`` folders,
``kmeans_centroids.npy``, ``_manifest.json``, ``report.html`` and, while writing, ``_tmp-*``
folders. ``overwrite=True`` replaces exactly those; a directory holding
anything else is refused even with ``overwrite`` so that a wrong path can
never delete unrelated data.
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
_OWNED = re.compile(r"^(centroid=\d+|_tmp-[\w.-]+|_manifest\.json|kmeans_centroids\.npy|report\.html)$")


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


def open_output(uri: str, storage_options: dict) -> OutputLocation:
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


def check_writable(out: OutputLocation, overwrite: bool) -> list[str]:
    """Before any work: refuse a non-empty output unless `overwrite` and it is ours.

    Returns the entries `overwrite` will replace.
    """
    entries = existing_entries(out)
    if not entries:
        return []
    if not overwrite:
        raise OutputError(
            f"output_path: {out.uri!r} is not empty ({len(entries)} entries, e.g. {entries[0]!r}); "
            "choose an empty location or pass overwrite=True (--overwrite) to replace a previous output"
        )
    foreign = [name for name in entries if not _OWNED.match(name)]
    if foreign:
        raise OutputError(
            f"output_path: {out.uri!r} holds entries this tool did not write ({', '.join(foreign[:5])}); "
            "refusing to overwrite it"
        )
    return entries


def clear_previous(out: OutputLocation, entries: list[str]) -> None:
    """Delete a previous output: its manifest first, so it never looks complete half-deleted."""
    if MANIFEST in entries:
        out.fs.rm(out.path(MANIFEST))
    for name in entries:
        if name != MANIFEST:
            out.fs.rm(out.path(name), recursive=True)
