"""A real S3 protocol server for tests: moto's standalone server on 127.0.0.1.

`s3_server()` is a context manager yielding ``(endpoint_url, storage_options)``; the
options work for s3fs (and so for any fsspec ``s3://`` URI). `create_bucket` makes a
bucket on it. The server runs in a thread of this process, on a free port chosen by
the OS, and is stopped through its own handle on exit.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def storage_options_for(endpoint_url: str) -> dict:
    """s3fs options for the test server (dummy credentials, explicit endpoint and region)."""
    return {
        "key": DUMMY_ENV["AWS_ACCESS_KEY_ID"],
        "secret": DUMMY_ENV["AWS_SECRET_ACCESS_KEY"],
        "client_kwargs": {"endpoint_url": endpoint_url, "region_name": "us-east-1"},
    }


@contextlib.contextmanager
def _dummy_environment() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in DUMMY_ENV}
    os.environ.update(DUMMY_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def s3_server() -> Iterator[tuple[str, dict]]:
    """Start moto's server on 127.0.0.1 (free port); yield (endpoint_url, storage_options)."""
    from moto.server import ThreadedMotoServer

    with _dummy_environment():
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint_url = f"http://{host}:{port}"
            yield endpoint_url, storage_options_for(endpoint_url)
        finally:
            server.stop()


def create_bucket(endpoint_url: str, name: str) -> str:
    """Create bucket `name` on the server (idempotent); return ``s3://name``."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=DUMMY_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=DUMMY_ENV["AWS_SECRET_ACCESS_KEY"],
    )
    existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
    if name not in existing:
        client.create_bucket(Bucket=name)
    return f"s3://{name}"
