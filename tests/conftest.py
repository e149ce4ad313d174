"""Shared fixtures. Puts tests/ on sys.path (importlib mode) for `import <topic>_support` and `k8s.*`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402

import s3_support  # noqa: E402


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1: yields (endpoint_url, storage_options)."""
    with s3_support.s3_server() as (endpoint_url, storage_options):
        yield endpoint_url, storage_options
