"""Conditional writes of the lease object on Google Cloud Storage, through gcsfs's request API.

GCS preconditions are query parameters of the JSON API: ``ifGenerationMatch=0`` creates only
when no live object has that name; ``ifGenerationMatch=<generation>`` writes or deletes only
while the object is still that generation. A failed precondition is HTTP 412, which gcsfs raises
as `FileExistsError`. The upload is a single-request media upload (``uploadType=media``), the
same endpoint gcsfs's own ``pipe_file`` uses; the generation written comes back in the reply.
"""

from __future__ import annotations

from typing import Union
from urllib.parse import quote


def is_gcs(fs) -> bool:
    """True for a gcsfs filesystem (protocol ``gs``/``gcs``)."""
    proto = fs.protocol
    return bool({"gs", "gcs"} & set(proto if isinstance(proto, (tuple, list)) else (proto,)))


def put(fs, path: str, data: bytes, if_generation_match: Union[int, str]) -> str:
    """Upload `data` to `path` (``bucket/key``) only if its generation is `if_generation_match`
    (0: only if absent). Returns the new generation; `FileExistsError` when the precondition fails."""
    bucket, key, _ = fs.split_path(path)
    reply = fs.call(
        "POST", f"{fs._location}/upload/storage/v1/b/{quote(bucket)}/o",
        uploadType="media", name=key, ifGenerationMatch=str(if_generation_match),
        headers={"Content-Type": "application/octet-stream"}, data=data, json_out=True,
    )
    fs.invalidate_cache(path)
    return str(reply["generation"])


def delete(fs, path: str, if_generation_match: Union[int, str]) -> None:
    """Delete `path` only while it is generation `if_generation_match` (`FileExistsError` if not)."""
    bucket, key, _ = fs.split_path(path)
    fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=str(if_generation_match))
    fs.invalidate_cache(path)
