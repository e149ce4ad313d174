"""Kill-a-worker matrix: SIGKILL one of 3 `dask worker` processes during read, init, Lloyd,
assign and write; per phase: did the run complete, is its output identical to an undisturbed
run's (files, centroids, manifest except timings and work counters), and how many seconds extra.

    python bench/faults.py --rows 2000000 --dim 128     # the issue's size
    python bench/faults.py --rows 200000 --dim 64       # what docs/reliability.md records

A real `dask scheduler` (with the operator's settings: no work stealing; `--stealing`: Dask's
defaults) and `--no-nanny` workers on 127.0.0.1 (tests/fault_support.py); the kill
lands while a task of the phase runs on the victim (polled from the scheduler). A killed worker
is replaced before the next phase, so every run starts with 3 workers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fault_support import PHASES, VARYING_KEYS, KillWorker, connect, dask_processes  # noqa: E402
from kmeans_partition.operator.builders import SCHEDULER_SETTINGS_ENV  # noqa: E402
from kmeans_partition.runner.progress import Progress  # noqa: E402
from kmeans_partition.runner.sample import write_sample  # noqa: E402
from kmeans_partition.runner.stage import KMeansStage  # noqa: E402


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--sample-clusters", type=int, default=100)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--max-iter", type=int, default=10)
    p.add_argument("--batch", type=int, default=8192, help="max_samples_per_batch (smaller: longer phases)")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--phases", default=",".join(PHASES))
    p.add_argument("--stealing", action="store_true",
                   help="a scheduler with Dask's defaults (work stealing on), not the operator's settings")
    return p.parse_args(argv)


def comparable(out: Path) -> dict:
    manifest = json.loads((out / "_manifest.json").read_text())
    manifest["spec"].pop("output_path")
    for step in manifest.get("iterations", []):
        step.pop("seconds")
        step.pop("rows_computed")
    files = {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*")) if p.is_file() and p.name != "_manifest.json"
    }
    return {"files": files, "manifest": {k: v for k, v in manifest.items() if k not in VARYING_KEYS}}


class Recoveries(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        if "lost worker" in record.getMessage():
            self.count += 1


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="kmp-faults-"))
    write_sample(str(tmp / "in"), args.rows, args.dim, args.sample_clusters, files=args.files, seed=7)
    recoveries = Recoveries()
    logging.getLogger("kmeans_partition").addHandler(recoveries)

    def job(out: Path) -> KMeansStage:
        return KMeansStage(
            n_clusters=args.k, id_field="id", embedding_field="embedding", input_path=str(tmp / "in"),
            output_path=str(out), metadata_fields=["text"], max_iter=args.max_iter, tol=0.0,
            max_samples_per_batch=args.batch, report=False,
        )

    rows = []
    # The scheduler as the operator starts it (no work stealing), unless --stealing.
    scheduler_env = None if args.stealing else {item["name"]: item["value"] for item in SCHEDULER_SETTINGS_ENV}
    with dask_processes(args.workers, tmp, scheduler_env) as cluster:
        with connect(cluster.address, args.workers) as client:
            job(tmp / "ref").run(client=client)  # also warms the workers up (imports)
            started = time.perf_counter()
            job(tmp / "again").run(client=client)  # undisturbed, timed: the baseline
            base = time.perf_counter() - started
        reference = comparable(tmp / "ref")
        rows.append(("none", False, True, comparable(tmp / "again") == reference, 0.0, 0))
        for phase in args.phases.split(","):
            cluster.replenish(args.workers)
            recoveries.count = 0
            with connect(cluster.address, args.workers) as client:
                killer = KillWorker(client, cluster.workers, *PHASES[phase])
                started = time.perf_counter()
                try:
                    job(tmp / phase).run(client=client, progress=Progress([killer]))
                    done, same = True, comparable(tmp / phase) == reference
                except Exception as err:  # reported in the table
                    done, same = False, False
                    print(f"{phase}: {type(err).__name__}: {err}", file=sys.stderr)
                seconds = time.perf_counter() - started
                if killer.watcher is not None:
                    killer.watcher.join()
            rows.append((phase, killer.killed is not None, done, same, seconds - base, recoveries.count))
    print(f"rows={args.rows} dim={args.dim} k={args.k} max_iter={args.max_iter} batch={args.batch} "
          f"workers={args.workers} work stealing {'on' if args.stealing else 'off'}; undisturbed run {base:.1f} s")
    print("| phase | worker killed | completed | identical to undisturbed | extra s | rebuilds logged |")
    print("| --- | --- | --- | --- | --- | --- |")
    for phase, killed, done, same, extra, rebuilt in rows:
        print(f"| {phase} | {'yes' if killed else '-'} | {'yes' if done else 'no'} | {'yes' if same else 'no'} "
              f"| {extra:+.1f} | {rebuilt} |")
    return 0 if all((r[1] or r[0] == "none") and r[2] and r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
