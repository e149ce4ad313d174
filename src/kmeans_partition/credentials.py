"""Keeping credentials out of specs: URL checks, the `storage.options` allowlist, redaction.

A KMeansPartition resource is stored by the API server, copied into a ConfigMap and
into ``_manifest.json``; none of them may carry a secret. Credentials come only from
the Secret named by ``storage.secretRef`` (as environment variables). So:

- `url_credentials` finds a password or token in a URL (``user:pass@`` in its authority,
  any user part of an http(s)/ftp URL, or a signature/token query parameter); paths and
  option values holding one are refused. ``abfs://container@account...`` names no secret.
- `option_problems` checks ``storage.options`` against an allowlist of non-secret keys
  per protocol (`ALLOWED_OPTIONS`), nested dicts included; every problem names its key path.
- `redact` replaces secret-looking keys' values and URL credentials, recursively, wherever
  a spec is shown (the manifest).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional
from urllib.parse import parse_qsl

_URL = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<rest>[^?#]*)(\?(?P<query>[^#]*))?")
# Query parameters that carry a signature or token (presigned S3/GCS URLs, Azure SAS).
_SECRET_QUERY = re.compile(r"(^sig$|signature|token|secret|password|credential|^key$)", re.IGNORECASE)
_SECRET_KEY = re.compile(r"(secret|key|token|password|passwd|credential|session|auth|signature|sas)", re.IGNORECASE)
_USERINFO_SCHEMES = frozenset({"http", "https", "ftp", "ftps"})  # any user part is a credential there
REDACTED = "***"

_S3_CONFIG_KWARGS = frozenset({
    "connect_timeout", "read_timeout", "max_pool_connections", "retries", "signature_version",
    "s3", "proxies", "tcp_keepalive", "request_checksum_calculation", "response_checksum_validation",
    "user_agent", "user_agent_extra",
})
# Non-secret keys per fsspec protocol: None allows any value, a dict the nested keys it lists,
# a tuple only those literal values.
ALLOWED_OPTIONS: dict[str, dict[str, Any]] = {
    "s3": {
        "anon": None, "endpoint_url": None, "requester_pays": None, "default_block_size": None,
        "default_fill_cache": None, "default_cache_type": None, "version_aware": None, "use_ssl": None,
        "cache_regions": None, "max_concurrency": None, "fixed_upload_size": None, "listings_expiry_time": None,
        "use_listings_cache": None, "skip_instance_cache": None,
        "client_kwargs": {"region_name": None, "endpoint_url": None, "verify": None, "use_ssl": None},
        "config_kwargs": {key: None for key in _S3_CONFIG_KWARGS},
        # Server-side encryption with S3- or KMS-managed keys; SSECustomerKey (the key itself) is a secret.
        "s3_additional_kwargs": {"ServerSideEncryption": None, "SSEKMSKeyId": None, "ACL": None,
                                 "StorageClass": None, "RequestPayer": None},
    },
    "gcs": {
        "project": None, "access": None, "token": ("anon", "google_default", "cloud"), "requester_pays": None, "endpoint_url": None, "default_location": None,
        "consistency": None, "cache_timeout": None, "version_aware": None, "block_size": None,
        "check_connection": None, "timeout": None, "session_kwargs": {"trust_env": None},
    },
    "abfs": {
        "account_name": None, "anon": None, "blocksize": None, "default_fill_cache": None,
        "default_cache_type": None, "version_aware": None, "assume_container_exists": None,
        "max_concurrency": None, "location_mode": None, "account_host": None,
    },
    "http": {"block_size": None, "simple_links": None, "same_scheme": None, "client_kwargs": {"trust_env": None}},
}
PROTOCOL_ALIASES = {"s3a": "s3", "gs": "gcs", "az": "abfs", "abfss": "abfs", "adl": "abfs", "https": "http"}


def protocol_of(path: str) -> Optional[str]:
    """The fsspec protocol of `path` (its last link in a ``cache::s3://`` chain; aliases folded:
    gs -> gcs, s3a -> s3, ...); None when local."""
    match = _URL.match(path.rsplit("::", 1)[-1])
    if not match:
        return None
    scheme = match.group("scheme").lower()
    return PROTOCOL_ALIASES.get(scheme, scheme)


def url_credentials(value: str) -> Optional[str]:
    """What in URL `value` (any link of a ``::`` chain) is a credential, or None."""
    for link in value.split("::"):
        found = _link_credentials(link.strip())
        if found:
            return found
    return None


def _link_credentials(value: str) -> Optional[str]:
    match = _URL.match(value)
    if not match:
        return None
    user, at, _ = match.group("authority").rpartition("@")
    if at and (":" in user or match.group("scheme").lower() in _USERINFO_SCHEMES):
        return "a user name or password (user:pass@)"
    for name, _ in parse_qsl(match.group("query") or "", keep_blank_values=True):
        if _SECRET_QUERY.search(name):
            return f"query parameter {name!r}"
    return None


def _walk_values(value: Any, path: str) -> Iterable[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _walk_values(inner, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, inner in enumerate(value):
            yield from _walk_values(inner, f"{path}[{index}]")
    else:
        yield path, value


def _allowed_for(protocols: Iterable[Optional[str]]) -> dict[str, Any]:
    """The union of the allowlists of `protocols`; all of them when none has a list (local paths)."""
    chosen = [ALLOWED_OPTIONS[p] for p in protocols if p in ALLOWED_OPTIONS] or list(ALLOWED_OPTIONS.values())
    merged: dict[str, Any] = {}
    for allowed in chosen:
        for key, nested in allowed.items():
            if isinstance(nested, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **nested}
            else:
                merged.setdefault(key, nested)
    return merged


def option_problems(options: dict[str, Any], protocols: Iterable[Optional[str]], prefix: str = "storage.options") -> list[str]:
    """Every key of `options` that is not an allowed non-secret option, and every value holding a URL
    credential, as ``<key path>: <why>`` (values are never repeated in the message)."""
    problems = []
    allowed = _allowed_for(list(protocols))
    for key, value in options.items():
        path = f"{prefix}.{key}"
        if key not in allowed:
            problems.append(f"{path}: not an allowed option (credentials go in the storage.secretRef Secret; "
                            f"allowed: {', '.join(sorted(allowed))})")
        elif isinstance(allowed[key], tuple) and value not in allowed[key]:
            problems.append(f"{path}: only {', '.join(map(repr, allowed[key]))} may be given here "
                            "(credentials go in the storage.secretRef Secret)")
        elif isinstance(allowed[key], dict):
            if not isinstance(value, dict):
                problems.append(f"{path}: must be a mapping")
                continue
            for inner in value:
                if inner not in allowed[key]:
                    problems.append(f"{path}.{inner}: not an allowed option (credentials go in the "
                                    f"storage.secretRef Secret; allowed: {', '.join(sorted(allowed[key]))})")
    for path, value in _walk_values(options, prefix):
        found = url_credentials(value) if isinstance(value, str) else None
        if found:
            problems.append(f"{path}: the URL holds {found}; put credentials in the storage.secretRef Secret")
    return problems


def redact(value: Any) -> Any:
    """`value` with secret-looking keys' values and URL credentials replaced by ``***``, recursively."""
    if isinstance(value, dict):
        return {
            key: (REDACTED if _SECRET_KEY.search(str(key)) and not isinstance(inner, (dict, list)) else redact(inner))
            for key, inner in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(inner) for inner in value]
    if isinstance(value, str) and url_credentials(value):
        return redact_url(value)
    return value


def redact_url(value: str) -> str:
    """URL `value` with its user part and any query string replaced by ``***``."""
    match = _URL.match(value)
    if not match:
        return value
    user, at, host = match.group("authority").rpartition("@")
    authority = f"{REDACTED}@{host}" if at else host
    query = f"?{REDACTED}" if match.group("query") is not None else ""
    return f"{match.group('scheme')}://{authority}{match.group('rest')}{query}"
