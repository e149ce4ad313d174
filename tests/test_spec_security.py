"""Spec rules that keep data and credentials safe: exact remote output paths, no credentials in
paths or `storage.options` (an allowlist per protocol), recursive redaction."""

from __future__ import annotations

import pytest

from kmeans_partition.credentials import option_problems, protocol_of, redact, url_credentials
from kmeans_partition.spec import SpecError, parse_job_spec, parse_resource_spec

BASE = {"nClusters": 2, "idField": "id", "embeddingField": "emb", "inputPath": ["s3://b/in/"],
        "outputPath": "s3://b/out/"}


def _error(data: dict, **kwargs) -> SpecError:
    with pytest.raises(SpecError) as err:
        parse_resource_spec({**BASE, **data}, **kwargs)
    return err.value


@pytest.mark.parametrize("path", ["s3://bkt/out*", "s3://bkt/run[1]", "s3://bkt/out?", "s3://bkt/{a,b}"])
def test_glob_characters_in_the_output_are_refused_for_resources_and_the_cli(path):
    err = _error({"outputPath": path})
    assert err.field == "outputPath" and "glob characters" in str(err)
    with pytest.raises(SpecError, match="output_path: .*glob characters"):
        parse_job_spec({"n_clusters": 2, "id_field": "id", "embedding_field": "e", "input_path": "in",
                        "output_path": path})


def test_inputs_may_still_be_globs():
    assert parse_resource_spec({**BASE, "inputPath": ["s3://b/in/*.parquet"]}).input_paths == ["s3://b/in/*.parquet"]


@pytest.mark.parametrize("field, value", [
    ("outputPath", "/data/out"), ("outputPath", "file:///data/out"), ("outputPath", "memory://out"),
    ("inputPath", ["s3://b/in/", "/data/in"]), ("inputPath", ["local:///data/in"]),
])
def test_a_resource_needs_remote_paths(field, value):
    err = _error({field: value})
    assert err.field == field and "is not a remote URI" in str(err)


def test_the_cli_may_run_a_resource_manifest_on_local_paths():
    spec = parse_resource_spec({**BASE, "inputPath": ["/data/in"], "outputPath": "/data/out"}, allow_local_paths=True)
    assert spec.output_path == "/data/out"
    assert parse_job_spec({**BASE, "inputPath": "in", "outputPath": "out"}).output_path == "out"


@pytest.mark.parametrize("field, value", [
    ("outputPath", "s3://alice:hunter2@bkt/out"),
    ("inputPath", ["https://alice:hunter2@host/in.parquet"]),
    ("inputPath", ["https://hunter2@host/in.parquet"]),
    ("inputPath", ["https://host/in.parquet?X-Amz-Signature=hunter2&X-Amz-Credential=k"]),
    ("inputPath", ["https://acct.blob.core.windows.net/c/in.parquet?sv=2022&sig=hunter2"]),
])
def test_credentials_in_paths_are_refused(field, value):
    err = _error({field: value})
    assert err.field == field and "put credentials in the storage Secret" in str(err)
    assert "hunter2" not in str(err)  # the secret is not repeated


@pytest.mark.parametrize("options, key_path", [
    ({"credential": "hunter2"}, "storage.options.credential"),  # adlfs
    ({"account_key": "x"}, "storage.options.account_key"),
    ({"s3_additional_kwargs": {"SSECustomerKey": "k"}}, "storage.options.s3_additional_kwargs.SSECustomerKey"),
    ({"client_kwargs": {"headers": {"Authorization": "Bearer x"}}}, "storage.options.client_kwargs.headers"),
    ({"client_kwargs": {"aws_secret_access_key": "s"}}, "storage.options.client_kwargs.aws_secret_access_key"),
    ({"endpoint_url": "http://alice:hunter2@minio:9000"}, "storage.options.endpoint_url"),
    ({"client_kwargs": {"endpoint_url": "https://alice:hunter2@minio"}}, "storage.options.client_kwargs.endpoint_url"),
    ({"config_kwargs": {"proxies": {"https": "http://alice:hunter2@proxy:3128"}}}, "storage.options.config_kwargs.proxies.https"),
    ({"token": "hunter2"}, "storage.options.token"),
])
def test_secret_options_are_refused_naming_the_key_path(options, key_path):
    err = _error({"storage": {"options": options}})
    assert err.field == "storage.options" and f"{key_path}:" in str(err) and "secretRef" in str(err)
    assert "hunter2" not in str(err)


def test_options_are_checked_against_the_protocols_of_the_paths():
    gcs = {"inputPath": ["gs://b/in/"], "outputPath": "gs://b/out/"}
    assert parse_resource_spec({**BASE, **gcs, "storage": {"options": {"project": "p", "token": "anon"}}})
    err = _error({"storage": {"options": {"project": "p"}}})  # s3 paths: a gcsfs option
    assert err.field == "storage" and "storage.options.project: not an allowed option" in str(err)
    err = _error({**gcs, "storage": {"options": {"client_kwargs": {"region_name": "x"}}}})
    assert "storage.options.client_kwargs: not an allowed option" in str(err)


def test_usual_non_secret_options_pass():
    options = {"endpoint_url": "https://s3.example:9000", "anon": False, "requester_pays": True,
               "client_kwargs": {"region_name": "us-east-1", "verify": False},
               "config_kwargs": {"connect_timeout": 5, "retries": {"max_attempts": 10}},
               "s3_additional_kwargs": {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/data"}}
    assert parse_resource_spec({**BASE, "storage": {"options": options}}).storage.options == options
    abfs = {"inputPath": ["abfs://c@acct.dfs.core.windows.net/in"], "outputPath": "az://c/out",
            "storage": {"options": {"account_name": "acct"}}}
    assert parse_resource_spec({**BASE, **abfs}).storage.options == {"account_name": "acct"}


def test_protocols_fold_aliases_and_chains():
    assert [protocol_of(p) for p in ("s3a://b", "gs://b", "simplecache::s3://b/x", "/local", "az://c")] == [
        "s3", "gcs", "s3", None, "abfs"]
    assert url_credentials("simplecache::https://u:p@host/x") is not None
    assert url_credentials("abfs://container@account.dfs.core.windows.net/p") is None
    assert option_problems({"anon": True}, [None]) == []  # local paths: every protocol's list


def test_redaction_is_recursive_and_covers_urls():
    options = {"key": "AKIA", "client_kwargs": {"endpoint_url": "http://u:p@minio:9000/x?sig=1",
                                                "headers": {"Authorization": "Bearer t", "X-Trace": "1"}},
               "list": [{"secret": "s"}, "https://tok@host/p"], "anon": False}
    assert redact(options) == {
        "key": "***",
        "client_kwargs": {"endpoint_url": "http://***@minio:9000/x?***",
                          "headers": {"Authorization": "***", "X-Trace": "1"}},
        "list": [{"secret": "***"}, "https://***@host/p"],
        "anon": False,
    }


def test_the_manifest_shows_no_credentials(tmp_path):
    """A CLI run may pass credentials in storage_options; `_manifest.json` never shows them."""
    import json

    from kmeans_partition.runner.manifest import RunResult, write_manifest
    from kmeans_partition.runner.output import open_output

    spec = parse_job_spec({"n_clusters": 2, "id_field": "id", "embedding_field": "e", "input_path": "in",
                           "output_path": str(tmp_path / "out"),
                           "storage_options": {"secret": "hunter2", "client_kwargs": {
                               "endpoint_url": "http://alice:hunter2@minio:9000",
                               "headers": {"Authorization": "Bearer hunter2"}}}})
    (tmp_path / "out").mkdir()
    out = open_output(spec.output_path, {})
    result = RunResult(output_path=spec.output_path, manifest_path="m", centroids_path="c", n_rows=1, n_clusters=2,
                       embedding_dim=2, n_iter=1, inertia=0.0, converged=True, rows_per_centroid=[1, 0], files=[],
                       input_files=["in/a.parquet"], n_duplicate_ids=0, n_reseeded=0)
    write_manifest(out, spec, result)
    text = (tmp_path / "out" / "_manifest.json").read_text()
    assert "hunter2" not in text
    options = json.loads(text)["spec"]["storage_options"]
    assert options["client_kwargs"]["endpoint_url"] == "http://***@minio:9000"
    assert options["secret"] == options["client_kwargs"]["headers"]["Authorization"] == "***"
