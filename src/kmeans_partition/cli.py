"""`kmeans-partition`: run the job, report on its output, generate a sample, run the operator, or render its children."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Optional

import yaml

from . import settings
from .cli_flags import add_job_flags, apply_job_flags, parse_storage_options
from .operator.builders import DEFAULT_IMAGE
from .spec import API_GROUP, API_VERSION, DEFAULT_ENGINE, KIND, KMeansPartitionSpec, SpecError, parse_resource_spec


def _add_run(sub) -> None:
    run = sub.add_parser(
        "run",
        help="cluster embeddings and write centroid=N/ partitions",
        description="Cluster embeddings and write them partitioned by centroid. Every job field has a flag; "
        "flags override the fields of the -f manifest, and a field set by neither takes the default shown.",
    )
    run.add_argument("-f", "--file", help="a KMeansPartition manifest (YAML); its spec is the job")
    add_job_flags(run)
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


def _add_report(sub) -> None:
    report = sub.add_parser("report", help="summarise a finished output: sizes, convergence, boundary rows")
    report.add_argument("output", metavar="OUTPUT", help="output directory/URI of a finished run")
    report.add_argument("--html", metavar="FILE", help="also write the HTML page (plots) to FILE")
    report.add_argument("--open", action="store_true", help="open the HTML page in a browser")
    report.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE")


def _add_operator(sub) -> None:
    op = sub.add_parser("operator", help="run the KMeansPartition Kubernetes operator (kopf)")
    scope = op.add_mutually_exclusive_group()
    scope.add_argument("--namespace", action="append", help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", action="store_true")
    op.add_argument("--liveness", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")


def _add_render(sub) -> None:
    render = sub.add_parser(
        "render",
        help="print the children the operator would create for a KMeansPartition (YAML)",
        description="Print, as YAML documents, every child the operator would create for the resource "
        "(from the builders the reconcile uses). A preview: ownerReferences carry a placeholder uid.",
    )
    render.add_argument("-f", "--file", required=True, help="a KMeansPartition manifest (YAML)")
    render.add_argument("--namespace", help="namespace of the resource (default: metadata.namespace, else default)")
    render.add_argument("--name", help="name of the resource (default: metadata.name)")
    render.add_argument("--default-image", metavar="IMAGE",
                        help="image when spec.cluster.image is unset, as the operator's KMP_DEFAULT_IMAGE "
                        f"(default: {DEFAULT_IMAGE})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kmeans-partition", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_report(sub)
    _add_sample(sub)
    _add_operator(sub)
    _add_render(sub)
    return parser


def read_manifest(path: str) -> dict[str, Any]:
    """A KMeansPartition manifest file as a dict, its kind and apiVersion checked."""
    with open(path, encoding="utf-8") as handle:
        doc = yaml.safe_load(handle)
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise SpecError("kind", f"{path}: expected a {KIND} manifest")
    api_version = str(doc.get("apiVersion", ""))
    if api_version != f"{API_GROUP}/{API_VERSION}":
        raise SpecError("apiVersion", f"{path}: expected {API_GROUP}/{API_VERSION}, got {api_version!r}")
    return doc


def load_manifest(path: str) -> KMeansPartitionSpec:
    """The validated spec of a KMeansPartition manifest."""
    return parse_resource_spec(read_manifest(path).get("spec") or {}, allow_local_paths=True)


def job_fields(args: argparse.Namespace, manifest: Optional[KMeansPartitionSpec] = None) -> dict[str, Any]:
    """The manifest's fields (if -f), overridden by every flag given."""
    if manifest is None and args.file:
        manifest = load_manifest(args.file)
    fields = manifest.job_spec().model_dump() if manifest is not None else {}
    return apply_job_flags(args, fields)


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
    engine = args.engine or (manifest.engine if manifest is not None else DEFAULT_ENGINE)
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


def command_report(args: argparse.Namespace) -> int:
    from .runner.report import run_report

    html_path = args.html
    if args.open and not html_path:
        import tempfile

        html_path = tempfile.NamedTemporaryFile(prefix="kmeans-partition-", suffix=".html", delete=False).name
    lines, _ = run_report(args.output, parse_storage_options(args.storage_option), html_path)
    print("\n".join(lines))
    if html_path:
        print(f"  html: {html_path}")
    if args.open:
        import pathlib
        import webbrowser

        webbrowser.open(pathlib.Path(html_path).resolve().as_uri())
    return 0


def command_sample(args: argparse.Namespace) -> int:
    from .runner.sample import write_sample

    files = write_sample(
        args.output, rows=args.rows, dim=args.dim, clusters=args.clusters, fmt=args.format,
        duplicates=args.duplicates, files=args.files, seed=args.seed,
    )
    print(f"wrote {args.rows} rows in {len(files)} file(s) to {args.output}")
    return 0


def command_render(args: argparse.Namespace) -> int:
    from .operator.render import render_children, to_yaml

    children = render_children(read_manifest(args.file), namespace=args.namespace, name=args.name,
                               default_image=args.default_image)
    sys.stdout.write(to_yaml(children))
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
    commands = {
        "run": command_run, "report": command_report, "sample": command_sample,
        "operator": command_operator, "render": command_render,
    }
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
