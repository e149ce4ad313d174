"""One field list: the `run` flags, `KMeansStage.__init__` and the engine default all follow the spec model."""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path
from typing import Literal, get_args

import pytest
from dask_support import dask_client  # noqa: F401  (fixture)
from pydantic.fields import FieldInfo

from kmeans_partition import cli_flags
from kmeans_partition.cli import build_parser, job_fields, main
from kmeans_partition.runner import engine as engine_module, worker_probe
from kmeans_partition.runner.stage import KMeansStage
from kmeans_partition.spec import DEFAULT_ENGINE, Engine, JobSpec, KMeansPartitionSpec, parse_job_spec

README = Path(__file__).resolve().parents[1] / "README.md"
REQUIRED = dict(n_clusters=3, id_field="id", embedding_field="e", input_path="in", output_path="out")


def run_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["run"]


def run_options() -> dict[str, list[str]]:
    """dest -> option strings of the `run` subcommand."""
    return {action.dest: action.option_strings for action in run_parser()._actions if action.option_strings}


def test_every_job_field_has_a_run_flag_of_the_documented_name():
    options = run_options()
    renamed = {"input_path": "--input", "output_path": "--output", "scheduler_address": "--scheduler",
               "storage_options": "--storage-option"}
    for name in JobSpec.model_fields:
        assert name in options, f"JobSpec.{name} has no `run` flag"
        expected = renamed.get(name, "--" + name.replace("_", "-"))
        assert expected in options[name], (name, options[name])
    assert options["engine"] == ["--engine"]


def test_choices_come_from_the_model():
    actions = {action.dest: action for action in run_parser()._actions}
    for name, info in JobSpec.model_fields.items():
        if getattr(info.annotation, "__origin__", None) is Literal:
            assert actions[name].choices == list(get_args(info.annotation)), name
    assert actions["engine"].choices == [e.value for e in Engine]


def test_help_is_the_description_plus_the_default():
    actions = {action.dest: action for action in run_parser()._actions}
    for name, info in JobSpec.model_fields.items():
        text = actions[name].help % {}  # argparse expands %-escapes the same way
        assert info.description.rstrip(".") in text, name
        default = info.get_default(call_default_factory=True)
        if info.is_required():
            assert "required unless set by -f" in text
        elif default not in (None, {}, []):
            shown = str(default).lower() if isinstance(default, bool) else str(default)
            assert f"default: {shown}" in text, (name, text)
    assert f"default: {DEFAULT_ENGINE.value}" in actions["engine"].help


def test_each_flag_lands_in_its_field_with_the_model_type():
    argv = ["run", "--n-clusters", "5", "--id-field", "doc", "--embedding-field", "vec", "--input", "a",
            "--input", "b", "--output", "o", "--metadata-fields", "x,y", "--verbose", "--embedding-dim", "8",
            "--input-filetype", "jsonl", "--max-iter", "9", "--tol", "0.5", "--random-state", "7",
            "--init", "random", "--oversampling-factor", "3", "--max-samples-per-batch", "64",
            "--storage-option", "anon=true", "--storage-option", "endpoint_url=http://127.0.0.1:9",
            "--overwrite", "--scheduler", "tcp://127.0.0.1:1", "--write-second-centroid", "--no-report",
            "--distance-precision", "tf32", "--checkpoint-seconds", "30", "--checkpoint-iterations", "4",
            "--memory-mode", "out_of_core"]
    spec = parse_job_spec(job_fields(build_parser().parse_args(argv)))
    assert spec.model_dump() == {
        "n_clusters": 5, "id_field": "doc", "embedding_field": "vec", "input_path": ["a", "b"], "output_path": "o",
        "metadata_fields": ["x", "y"], "verbose": True, "embedding_dim": 8, "input_filetype": "jsonl",
        "max_iter": 9, "tol": 0.5, "random_state": 7, "init": "random", "oversampling_factor": 3.0,
        "max_samples_per_batch": 64, "storage_options": {"anon": True, "endpoint_url": "http://127.0.0.1:9"},
        "overwrite": True, "scheduler_address": "tcp://127.0.0.1:1", "write_second_centroid": True, "report": False,
        "distance_precision": "tf32", "checkpoint_seconds": 30.0, "checkpoint_iterations": 4,
        "memory_mode": "out_of_core",
    }
    assert set(spec.model_dump()) == set(JobSpec.model_fields)  # the argv above covers every field


def test_a_wrong_type_is_refused_by_argparse():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--max-iter", "many"])


def test_a_field_type_without_a_rule_is_an_error_naming_the_field():
    with pytest.raises(TypeError, match="'weights'"):
        cli_flags.field_flag("weights", FieldInfo(annotation=dict[str, int], description="w"))


def test_readme_lists_exactly_the_run_flags():
    text = README.read_text(encoding="utf-8")
    paragraph = text[text.index("Every field has a flag:"): text.index("The same job as a file")]
    documented = set(re.findall(r"--[a-z][a-z-]*", paragraph))
    flags = {option for options in run_options().values() for option in options if option.startswith("--")}
    assert documented <= flags, documented - flags
    assert flags - documented <= {"--help", "--file", "--no-verbose"}, flags - documented


def test_stage_signature_equals_the_model_fields():
    """NeMo Curator's KMeansStage signature: names, order and defaults are the model's fields."""
    params = list(inspect.signature(KMeansStage.__init__).parameters.values())[1:]
    assert [p.name for p in params] == list(JobSpec.model_fields)
    for param in params:
        info = JobSpec.model_fields[param.name]
        if info.is_required():
            assert param.default is inspect.Parameter.empty, param.name
        elif info.default_factory is not None:  # no mutable default in a signature: None means the factory's
            assert param.default is None, param.name
            stage = KMeansStage(**REQUIRED)
            assert getattr(stage.spec, param.name) == info.default_factory(), param.name
        else:
            assert param.default == info.default and type(param.default) is type(info.default), param.name


def test_one_engine_default_for_python_cli_and_resource(monkeypatch, tmp_path):
    assert inspect.signature(KMeansStage.run).parameters["engine"].default is DEFAULT_ENGINE
    assert KMeansPartitionSpec.model_fields["engine"].default is DEFAULT_ENGINE
    seen = []
    monkeypatch.setattr(KMeansStage, "run", lambda self, progress=None, engine=None: seen.append(engine) or {})
    base = ["run", "--quiet", "--input", "in", "--output", "out", "--n-clusters", "2", "--id-field", "id",
            "--embedding-field", "e"]
    assert main(base) == 0
    manifest = tmp_path / "kmp.yaml"
    manifest.write_text(
        "apiVersion: kmeanspartition.dev/v1alpha1\nkind: KMeansPartition\nmetadata: {name: x}\n"
        "spec: {nClusters: 2, idField: id, embeddingField: e, inputPath: [in], outputPath: out, engine: dask}\n"
    )
    assert main(["run", "--quiet", "-f", str(manifest)]) == 0
    assert main(["run", "--quiet", "-f", str(manifest), "--engine", "raft"]) == 0
    assert seen == [DEFAULT_ENGINE, Engine.dask, "raft"]


class FakeClient:
    """`client.run(probe_worker)` answers with a probe per worker holding the given GPU identity."""

    def __init__(self, identities):
        self.answers = {w: engine_module.WorkerProbe("node", gpu, None, False) for w, gpu in identities.items()}

    def run(self, fn):
        assert fn is engine_module.probe_worker
        return dict(self.answers)


@pytest.mark.parametrize(
    "identities, usable",
    [({"w1": "node-a/0000:01:00.0", "w2": "node-b/0000:01:00.0"}, True),
     ({"w1": "node-a/0000:01:00.0", "w2": "node-a/0000:02:00.0"}, True),
     ({"w1": "node-a/0000:01:00.0", "w2": "node-a/0000:01:00.0"}, False),  # a LocalCluster on one GPU
     ({"w1": "node-a/0000:01:00.0", "w2": None}, False),
     ({}, False)],
)
def test_auto_wants_a_gpu_of_its_own_per_worker(identities, usable):
    assert engine_module.workers_have_gpus(FakeClient(identities)) is usable


def test_the_default_engine_is_dask_on_cpu_workers(dask_client):
    if worker_probe.gpu_count():
        pytest.skip("this machine has a GPU")
    assert engine_module.choose_engine(DEFAULT_ENGINE, dask_client).chosen is Engine.dask
