"""`kmeans-partition`: run the job, generate a sample, or run the operator."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Optional

import yaml

from . import settings
from .spec import API_GROUP, API_VERSION, KIND, KMeansPartitionSpec, SpecError, parse_resource_spec

#: CLI flag -> JobSpec field, for flags that take a value.
VALUE_FLAGS = {
    "output": "output_path",
    "n_clusters": "n_clusters",
    "id_field": "id_field",
    "embedding_field": "embedding_field",
    "embedding_dim": "embedding_dim",
    "input_filetype": "input_filetype",
    "max_iter": "max_iter",
    "tol": "tol",
    "random_state": "random_state",
    "init": "init",
    "oversampling_factor": "oversampling_factor",
    "max_samples_per_batch": "max_samples_per_batch",
    "scheduler": "scheduler_address",
}


def _add_run(sub) -> None:
    run = sub.add_parser("run", help="cluster embeddings and write centroid=N/ partitions")
    run.add_argument("-f", "--file", help="a KMeansPartition manifest (YAML); its spec is the job")
    run.add_argument("--input", action="append", help="input file/dir/glob/URI (repeatable)")
    run.add_argument("--output", help="output directory/URI")
    run.add_argument("--n-clusters", type=int)
    run.add_argument("--id-field")
    run.add_argument("--embedding-field")
    run.add_argument("--metadata-fields", help="comma-separated column names")
    run.add_argument("--embedding-dim", type=int)
    run.add_argument("--input-filetype", choices=["parquet", "jsonl"])
    run.add_argument("--max-iter", type=int)
    run.add_argument("--tol", type=float)
    run.add_argument("--random-state", type=int)
    run.add_argument("--init", choices=["k-means||", "random"])
    run.add_argument("--oversampling-factor", type=float)
    run.add_argument("--max-samples-per-batch", type=int)
    run.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=None,
                     help="replace a previous output of this tool (--no-overwrite overrides the file)")
    run.add_argument("--engine", choices=["auto", "dask", "raft"],
                     help="k-means engine (default: the manifest's, else auto: raft with cuML and GPUs, else dask)")
    run.add_argument("--scheduler", help="Dask scheduler address (else $DASK_SCHEDULER_ADDRESS, else local)")
    run.add_argument("--verbose", action=argparse.BooleanOptionalAction, default=None)
    run.add_argument("--quiet", action="store_true", help="no progress bars or summary")


def _add_sample(sub) -> None:
    sample = sub.add_parser("sample", help="write a synthetic embedding set")
    sample.add_argument("--output", required=True)
    sample.add_argument("--rows", type=int, default=10000)
    sample.add_argument("--dim", type=int, default=64)
    sample.add_argument("--clusters", type=int, default=20)
    sample.add_argument("--format", choices=["parquet", "jsonl"], default="parquet")
    sample.add_argument("--duplicates", type=float, default=0.05, metavar="FRACTION")
    sample.add_argument("--files", type=int, default=4)
    sample.add_argument("--seed", type=int, default=0)


def _add_operator(sub) -> None:
    op = sub.add_parser("operator", help="run the KMeansPartition Kubernetes operator (kopf)")
    scope = op.add_mutually_exclusive_group()
    scope.add_argument("--namespace", action="append", help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", action="store_true")
    op.add_argument("--liveness", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kmeans-partition", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_sample(sub)
    _add_operator(sub)
    return parser


def parse_storage_value(raw: str) -> Any:
    """`--storage-option` values: YAML scalars (true, 3, null) or strings."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return value if isinstance(value, (bool, int, float, type(None), str)) else raw


def load_manifest(path: str) -> KMeansPartitionSpec:
    """The validated spec of a KMeansPartition manifest."""
    with open(path, encoding="utf-8") as handle:
        doc = yaml.safe_load(handle)
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise SpecError("kind", f"{path}: expected a {KIND} manifest")
    api_version = str(doc.get("apiVersion", ""))
    if api_version != f"{API_GROUP}/{API_VERSION}":
        raise SpecError("apiVersion", f"{path}: expected {API_GROUP}/{API_VERSION}, got {api_version!r}")
    return parse_resource_spec(doc.get("spec") or {}, allow_local_paths=True)


def job_fields(args: argparse.Namespace, manifest: Optional[KMeansPartitionSpec] = None) -> dict[str, Any]:
    """The manifest's fields (if -f), overridden by every flag given."""
    if manifest is None and args.file:
        manifest = load_manifest(args.file)
    fields = manifest.job_spec().model_dump() if manifest is not None else {}
    for flag, name in VALUE_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            fields[name] = value
    if args.input:
        fields["input_path"] = args.input if len(args.input) > 1 else args.input[0]
    if args.metadata_fields is not None:
        fields["metadata_fields"] = [f for f in args.metadata_fields.split(",") if f]
    for flag in ("overwrite", "verbose"):
        if getattr(args, flag) is not None:
            fields[flag] = getattr(args, flag)
    for item in args.storage_option:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpecError("storage_options", f"--storage-option needs KEY=VALUE, got {item!r}")
        fields.setdefault("storage_options", {})[key] = parse_storage_value(raw)
    return fields


def command_run(args: argparse.Namespace) -> int:
    from .runner.progress import Progress, TerminalSink
    from .runner.stage import KMeansStage

    for noisy in ("distributed", "dask"):  # set after import: importing distributed configures its loggers
        logging.getLogger(noisy).setLevel(logging.INFO if args.verbose else logging.WARNING)
    manifest = load_manifest(args.file) if args.file else None
    stage = KMeansStage(**job_fields(args, manifest))
    sinks = [] if args.quiet else [TerminalSink()]
    status = _status_sink()
    if status is not None:
        sinks.append(status)
    progress = Progress(sinks=sinks)
    engine = args.engine or (manifest.engine.value if manifest is not None else "dask")
    try:
        stage.run(progress=progress, engine=engine)
    finally:
        progress.close()
    return 0


def _status_sink():
    """The resource-status sink when running as a KMeansPartition's Job (env KMP_NAME set)."""
    if not settings.resource_name():
        return None
    from .runner.k8s_status import status_sink_from_env

    return status_sink_from_env()


def command_sample(args: argparse.Namespace) -> int:
    from .runner.sample import write_sample

    files = write_sample(
        args.output, rows=args.rows, dim=args.dim, clusters=args.clusters, fmt=args.format,
        duplicates=args.duplicates, files=args.files, seed=args.seed,
    )
    print(f"wrote {args.rows} rows in {len(files)} file(s) to {args.output}")
    return 0


def command_operator(args: argparse.Namespace) -> int:
    from kmeans_partition.operator.main import run_operator

    run_operator(namespaces=args.namespace, all_namespaces=args.all_namespaces, liveness_endpoint=args.liveness)
    return 0


def report_failure(message: str) -> None:
    """Print the error and leave it where Kubernetes reads a termination message."""
    print(f"error: {message}", file=sys.stderr)
    path = settings.termination_message_path()
    if path:
        try:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(message[:4000])
        except OSError:
            pass


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "operator":  # the operator logs JSON through kopf's own configuration
        verbose = getattr(args, "verbose", None)
        logging.basicConfig(
            level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
        )
    commands = {"run": command_run, "sample": command_sample, "operator": command_operator}
    try:
        return commands[args.command](args)
    except (SpecError, ValueError, FileNotFoundError) as err:
        report_failure(str(err))
        return 2
    except KeyboardInterrupt:
        report_failure("interrupted")
        return 130
    except Exception as err:  # the runner's last word, for the Job's termination message
        report_failure(f"{type(err).__name__}: {err}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
