"""KMeansPartitionSpec rules a resource must follow beyond the runner's JobSpec."""

from __future__ import annotations

import pytest

from kmeans_partition.spec import JobSpec, SpecError, parse_job_spec, parse_resource_spec

BASE = {"nClusters": 2, "idField": "id", "embeddingField": "emb", "inputPath": ["s3://b/in/"],
        "outputPath": "s3://b/out/"}


@pytest.mark.parametrize("field, value", [("schedulerAddress", "tcp://elsewhere:8786"),
                                          ("storageOptions", {"anon": True}),
                                          ("scheduler_address", "tcp://elsewhere:8786")])
def test_resource_may_not_set_runner_only_fields(field, value):
    with pytest.raises(SpecError) as err:
        parse_resource_spec({**BASE, field: value})
    assert err.value.field == field and str(err.value).startswith(f"{field}: ")  # named as written
    assert "not allowed in a KMeansPartition" in str(err.value)


def test_dumped_defaults_of_those_fields_still_parse():
    spec = parse_resource_spec({**BASE, "schedulerAddress": None, "storageOptions": {}})
    assert spec.scheduler_address is None and spec.storage_options == {}


def test_runner_job_spec_keeps_both_fields_and_the_resource_view_still_works():
    job = parse_job_spec({**BASE, "schedulerAddress": "tcp://s:8786", "storageOptions": {"anon": True}})
    assert job.scheduler_address == "tcp://s:8786" and job.storage_options == {"anon": True}
    resource = parse_resource_spec({**BASE, "storage": {"options": {"endpoint_url": "http://minio:9000"}}})
    view = resource.job_spec()
    assert isinstance(view, JobSpec) and view.storage_options == {"endpoint_url": "http://minio:9000"}


@pytest.mark.parametrize("options, named", [
    ({"key": "AKIA"}, "key"),
    ({"secret": "s"}, "secret"),
    ({"token": "t"}, "token"),
    ({"password": "p"}, "password"),
    ({"AWS_SECRET_ACCESS_KEY": "s"}, "AWS_SECRET_ACCESS_KEY"),
    ({"client_kwargs": {"aws_secret_access_key": "s", "region_name": "x"}}, "client_kwargs.aws_secret_access_key"),
    ({"client_kwargs": {"aws_session_token": "t"}}, "client_kwargs.aws_session_token"),
])
def test_secret_looking_storage_options_are_rejected(options, named):
    with pytest.raises(SpecError) as err:
        parse_resource_spec({**BASE, "storage": {"options": options}})
    assert err.value.field == "storage.options" and named in str(err.value) and "secretRef" in str(err.value)


def test_non_secret_storage_options_pass():
    options = {"endpoint_url": "http://minio:9000", "anon": False, "client_kwargs": {"region_name": "us-east-1"}}
    assert parse_resource_spec({**BASE, "storage": {"options": options}}).storage.options == options


@pytest.mark.parametrize("quantity", ["8 GB", "8GB", "lots", "-", "1.5.2Gi", -1])
def test_bad_resource_quantities_are_rejected(quantity):
    with pytest.raises(SpecError) as err:
        parse_resource_spec({**BASE, "cluster": {"resources": {"worker": {"limits": {"memory": quantity}}}}})
    assert err.value.field == "cluster.resources.worker.limits.memory"


@pytest.mark.parametrize("quantity", ["8Gi", "500m", "1.5", "1e3", "2k", 4, "0"])
def test_kubernetes_quantities_pass(quantity):
    spec = parse_resource_spec({**BASE, "cluster": {"resources": {"runner": {"requests": {"cpu": quantity}}}}})
    assert spec.cluster.resources.runner.requests == {"cpu": quantity}
