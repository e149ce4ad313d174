"""`kmeans-partition` command line: flags, manifest files, errors and termination messages."""

import json

import pytest
import yaml

from kmeans_partition.cli import job_fields, build_parser, main
from dask_support import blobs, dask_client, write_input  # noqa: F401


def manifest(tmp_path, **spec):
    doc = {
        "apiVersion": "kmeanspartition.dev/v1alpha1",
        "kind": "KMeansPartition",
        "metadata": {"name": "demo"},
        "spec": {"nClusters": 3, "idField": "id", "embeddingField": "embedding",
                 "inputPath": [str(tmp_path / "in")], "outputPath": str(tmp_path / "from-file"),
                 "cluster": {"workers": 4}, "storage": {"options": {"anon": False}}, **spec},
    }
    path = tmp_path / "kmp.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_flags_override_the_manifest(tmp_path):
    path = manifest(tmp_path, maxIter=7)
    args = build_parser().parse_args(["run", "-f", str(path), "--output", "elsewhere", "--tol", "0",
                                      "--storage-option", "use_ssl=false", "--metadata-fields", "a,b"])
    fields = job_fields(args)
    assert fields["output_path"] == "elsewhere" and fields["tol"] == 0.0 and fields["max_iter"] == 7
    assert fields["n_clusters"] == 3 and fields["input_path"] == [str(tmp_path / "in")]
    assert fields["storage_options"] == {"anon": False, "use_ssl": False}
    assert fields["metadata_fields"] == ["a", "b"]


def test_run_from_manifest_file(tmp_path, dask_client, capsys):
    write_input(tmp_path / "in", blobs(600, 8, 3, seed=1), files=2)
    path = manifest(tmp_path)
    code = main(["run", "-f", str(path), "--scheduler", dask_client.scheduler.address, "--quiet"])
    assert code == 0
    result = json.loads((tmp_path / "from-file" / "_manifest.json").read_text())
    assert result["n_rows"] == 600 and result["n_clusters"] == 3
    assert capsys.readouterr().err == ""


def test_run_with_flags_prints_summary(tmp_path, dask_client, capsys):
    write_input(tmp_path / "in", blobs(300, 8, 3, seed=2), files=1)
    code = main(["run", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--n-clusters", "4",
                 "--id-field", "id", "--embedding-field", "embedding", "--metadata-fields", "text",
                 "--init", "random", "--scheduler", dask_client.scheduler.address])
    assert code == 0
    assert "done: 300 rows -> 4 centroids" in capsys.readouterr().err
    assert (tmp_path / "out" / "_manifest.json").exists()


@pytest.mark.parametrize(
    "extra, needle",
    [(["--n-clusters", "0"], "n_clusters"), (["--max-iter", "0"], "max_iter"),
     (["--storage-option", "novalue"], "storage_options")],
)
def test_bad_value_exits_2_and_leaves_termination_message(tmp_path, monkeypatch, capsys, extra, needle):
    message_file = tmp_path / "termination-log"
    monkeypatch.setenv("KMP_TERMINATION_MESSAGE_PATH", str(message_file))
    base = ["run", "--input", "x", "--output", "y", "--n-clusters", "2", "--id-field", "id",
            "--embedding-field", "e"]
    assert main(base + extra) == 2
    assert needle in capsys.readouterr().err
    assert needle in message_file.read_text()


def test_wrong_kind_in_file_is_refused(tmp_path, capsys):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap"}))
    assert main(["run", "-f", str(path)]) == 2
    assert "expected a KMeansPartition manifest" in capsys.readouterr().err


def test_no_flag_overrides_a_true_in_the_file(tmp_path):
    path = manifest(tmp_path, overwrite=True)
    args = build_parser().parse_args(["run", "-f", str(path), "--no-overwrite"])
    assert job_fields(args)["overwrite"] is False


def test_manifest_of_another_version_is_refused(tmp_path, capsys):
    path = manifest(tmp_path)
    path.write_text(path.read_text().replace("v1alpha1", "v9"))
    assert main(["run", "-f", str(path)]) == 2
    assert "expected kmeanspartition.dev/v1alpha1" in capsys.readouterr().err


def test_scheduler_address_from_environment(monkeypatch):
    from kmeans_partition.runner.cluster import scheduler_address
    from kmeans_partition.settings import connect_timeout

    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://scheduler.example:8786")
    assert scheduler_address(None) == "tcp://scheduler.example:8786"
    assert scheduler_address("tcp://explicit:1") == "tcp://explicit:1"
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
    assert scheduler_address(None) is None
    monkeypatch.setenv("KMP_CONNECT_TIMEOUT", "600")
    assert connect_timeout() == 600.0


def test_runner_package_exports_the_stage():
    from kmeans_partition.runner import KMeansStage
    from kmeans_partition.runner.stage import KMeansStage as direct

    assert KMeansStage is direct
