"""End-to-end benchmark: the whole job vs a plain single-process pyarrow + NumPy pass, same data.

    python bench/bench_e2e.py --rows 2000000 --dim 128 --clusters 200 --files 8 --k 100 --max-iter 5
    python bench/bench_e2e.py ... --baseline-src /path/to/other/checkout/src   # that code's job too

Data comes from `kmeans-partition sample` (cached under .bench-data/). The job runs on an embedded
LocalCluster; its per-phase seconds come from the manifest, its workers' peak RSS from
``getrusage``. The plain pass reads id + embedding, normalises, labels every row against the job's
centroids with one blocked GEMM pass, sorts stably by centroid and writes one parquet file per
centroid. Targets (reported, never failed on): read+assign+write <= 0.5x the plain pass; peak
worker RSS <= 1.5x the worker's share of the data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import cloudpickle
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("read", "init", "fit", "assign", "write", "total")
STAGES = ("reading", "initialising", "fitting", "assigning", "writing")  # progress stages, for peak RSS per stage
TARGET_SPEED = 0.5
TARGET_MEMORY = 1.5
GEMM_BLOCK = 65536


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--clusters", type=int, default=200, help="centres the sample is drawn around")
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=100, help="n_clusters of the job")
    p.add_argument("--max-iter", type=int, default=5)
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (1 thread each)")
    p.add_argument("--memory-mode", default="auto", choices=["auto", "in_memory", "out_of_core"],
                   help="the job's memory_mode")
    p.add_argument("--worker-memory", default=None,
                   help="each worker's Dask memory_limit (e.g. 400MB; default: Dask's, a share of the machine)")
    p.add_argument("--data-dir", type=Path, default=ROOT / ".bench-data", help="sample cache and scratch")
    p.add_argument("--baseline-src", type=Path, help="also run the job with the package under this src/ dir")
    p.add_argument("--markdown", type=Path, help="also write the table as markdown here")
    p.add_argument("--timeline", type=Path, help="also write each worker's (time, RSS, CPU) samples and the "
                   "stage starts as JSON here")
    p.add_argument("--job-only", type=Path, help=argparse.SUPPRESS)  # child mode: write the job's JSON here
    return p.parse_args(argv)


def sample_dir(args) -> Path:
    """The cached sample for these arguments, generated with `kmeans-partition sample` if missing."""
    name = f"sample-{args.rows}x{args.dim}-c{args.clusters}-f{args.files}-s{args.seed}"
    folder, done = args.data_dir / name, args.data_dir / f"{name}.done"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        from kmeans_partition.cli import main as cli

        cli(["sample", "--output", str(folder), "--rows", str(args.rows), "--dim", str(args.dim),
             "--clusters", str(args.clusters), "--files", str(args.files), "--seed", str(args.seed)])
        done.write_text("")
    return folder


# ---------------------------------------------------------------- the job


SAMPLE_EVERY_S = 0.05


def _start_sampler(dask_worker) -> None:
    """On a worker: record (time, RSS, CPU seconds, private RSS) every SAMPLE_EVERY_S until `_stop_sampler`.

    Private RSS leaves out file-backed pages (the libraries' code, shared by the node's workers)."""
    import threading

    import psutil

    samples, stop = [], threading.Event()
    process = psutil.Process()

    def loop():
        while not stop.is_set():
            cpu, mem = process.cpu_times(), process.memory_info()
            samples.append((time.time(), mem.rss, cpu.user + cpu.system, mem.rss - mem.shared))
            stop.wait(SAMPLE_EVERY_S)

    dask_worker._e2e_sampler = (samples, stop)
    threading.Thread(target=loop, daemon=True).start()


def _stop_sampler(dask_worker) -> dict:
    import resource

    samples, stop = dask_worker._e2e_sampler
    stop.set()
    return {"samples": list(samples), "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


class StageClock:
    """A progress sink noting when each stage started: wall clock (comparable with the workers')
    and this process's CPU seconds (the client and, for a LocalCluster, the scheduler)."""

    def __init__(self):
        self.starts: list[tuple[str, float]] = []
        self.cpu: list[float] = []

    def on_progress(self, snap, event):
        if event == "stage" and (not self.starts or self.starts[-1][0] != snap.stage):
            self.starts.append((snap.stage, time.time()))
            self.cpu.append(time.process_time())

    def on_result(self, result):
        pass

    def close(self):
        pass


def peak_by_stage(workers: dict, starts: list[tuple[str, float]]) -> dict:
    """Highest RSS of any worker while each stage ran."""
    edges = starts + [("end", float("inf"))]
    peaks = {}
    for info in workers.values():
        for t, rss, *_ in info["samples"]:
            for (stage, lo), (_, hi) in zip(edges, edges[1:]):
                if lo <= t < hi:
                    peaks[stage] = max(peaks.get(stage, 0), rss)
    return peaks


def cpu_by_stage(workers: dict, clock: StageClock) -> dict:
    """CPU seconds each stage used, all workers and the client process together (load-independent)."""
    used = {}
    for i, (stage, lo) in enumerate(clock.starts[:-1]):
        hi = clock.starts[i + 1][1]
        total = clock.cpu[i + 1] - clock.cpu[i]
        for info in workers.values():
            before = [cpu for t, _, cpu, *_ in info["samples"] if t < lo]
            until = [cpu for t, _, cpu, *_ in info["samples"] if t < hi]
            total += (until[-1] if until else 0.0) - (before[-1] if before else 0.0)
        used[stage] = total
    return used


def cluster_client(args):
    """The job's own LocalCluster, or one whose workers have `--worker-memory` each."""
    from contextlib import contextmanager

    from kmeans_partition.runner.cluster import dask_client

    if args.worker_memory is None:
        return dask_client(None, n_workers=args.workers)

    @contextmanager
    def limited():
        import logging

        from distributed import Client

        from kmeans_partition.runner.cluster import local_cluster

        with local_cluster(args.workers, args.worker_memory, logging.WARNING) as cluster, Client(cluster) as client:
            yield client

    return limited()


def run_job(args, data: Path) -> dict:
    """The job on a fresh LocalCluster: manifest timings, workers' idle and peak RSS (per stage too)."""
    from kmeans_partition.runner.progress import Progress
    from kmeans_partition.runner.stage import KMeansStage

    out = Path(tempfile.mkdtemp(prefix="e2e-out-", dir=args.data_dir))
    clock = StageClock()
    try:
        with cluster_client(args) as client:
            client.run(_start_sampler)
            time.sleep(2 * SAMPLE_EVERY_S)
            stage = KMeansStage(
                n_clusters=args.k, id_field="id", embedding_field="embedding", input_path=str(data),
                output_path=str(out / "job"), max_iter=args.max_iter, random_state=args.seed,
                memory_mode=args.memory_mode,
            )
            result = stage.run(client=client, progress=Progress(sinks=[clock]))
            workers = client.run(_stop_sampler)
        centroids = np.load(out / "job" / "kmeans_centroids.npy")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {
        "timings": result["timings"],
        "rows_per_centroid": result["rows_per_centroid"],
        "centroids": centroids.tolist(),
        "baseline_rss": max(info["samples"][0][1] for info in workers.values()),
        "peak_rss": max(max([info["maxrss"]] + [s[1] for s in info["samples"]]) for info in workers.values()),
        "peak_private": max(s[3] for info in workers.values() for s in info["samples"]),
        "cpu_by_stage": cpu_by_stage(workers, clock),
        "peak_rss_by_stage": peak_by_stage(workers, clock.starts),
        "memory_mode": result.get("memory_mode"),
        "timeline": {"stages": clock.starts, "workers": {w: info["samples"] for w, info in workers.items()}},
    }


def run_baseline_job(args, data: Path, src: Path) -> dict:
    """The job with another checkout's package, in a child process (same data, same arguments)."""
    with tempfile.NamedTemporaryFile(suffix=".json", dir=args.data_dir, delete=False) as handle:
        target = Path(handle.name)
    command = [sys.executable, str(Path(__file__).resolve()), "--rows", str(args.rows), "--dim", str(args.dim),
               "--clusters", str(args.clusters), "--files", str(args.files), "--seed", str(args.seed),
               "--k", str(args.k), "--max-iter", str(args.max_iter), "--workers", str(args.workers),
               "--data-dir", str(args.data_dir), "--job-only", str(target), "--memory-mode", args.memory_mode]
    if args.worker_memory:
        command += ["--worker-memory", args.worker_memory]
    try:
        subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(src.resolve())})
        return json.loads(target.read_text())
    finally:
        target.unlink(missing_ok=True)


# ---------------------------------------------------------------- the plain pass


def plain_pass(data: Path, centroids: np.ndarray, out: Path) -> dict:
    """Read, normalise, nearest centroid (one GEMM pass), stable sort, one parquet file per centroid."""
    seconds, cpu = {}, {}
    started, cpu_started = time.perf_counter(), time.process_time()
    files = sorted(data.glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(f, columns=["id", "embedding"]) for f in files])
    emb = table.column("embedding").combine_chunks()
    x = emb.values.to_numpy().reshape(len(emb), -1)
    data_bytes = table.nbytes
    seconds["read"], cpu["read"] = time.perf_counter() - started, time.process_time() - cpu_started

    started, cpu_started = time.perf_counter(), time.process_time()
    x = x / np.linalg.norm(x, axis=1, keepdims=True).astype(np.float32)
    c = centroids.astype(np.float32)
    c_sq = np.einsum("ij,ij->i", c, c)
    c_norm = np.sqrt(c_sq)
    labels = np.empty(len(x), dtype=np.int64)
    l2 = np.empty(len(x), dtype=np.float32)
    cosine = np.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), GEMM_BLOCK):
        dots = x[start:start + GEMM_BLOCK] @ c.T
        d2 = c_sq - 2 * dots  # + ||x||^2 = 1
        lab = d2.argmin(axis=1)
        rows = np.arange(len(lab))
        labels[start:start + GEMM_BLOCK] = lab
        l2[start:start + GEMM_BLOCK] = np.sqrt(np.maximum(d2[rows, lab] + 1.0, 0.0))
        cosine[start:start + GEMM_BLOCK] = 1.0 - dots[rows, lab] / c_norm[lab]
    seconds["assign"], cpu["assign"] = time.perf_counter() - started, time.process_time() - cpu_started

    started, cpu_started = time.perf_counter(), time.process_time()
    order = np.argsort(labels, kind="stable")
    d = x.shape[1]
    offsets = pa.array(np.arange(0, (len(x) + 1) * d, d, dtype=np.int32))
    rows_table = pa.table({
        "id": table.column("id").take(pa.array(order)),
        "embedding": pa.ListArray.from_arrays(offsets, pa.array(x[order].reshape(-1))),
        "l2_dist_to_cent": pa.array(l2[order]),
        "cosine_dist_to_cent": pa.array(cosine[order]),
    })
    counts = np.bincount(labels, minlength=len(centroids))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    for centroid in np.flatnonzero(counts):
        folder = out / f"centroid={centroid}"
        folder.mkdir(parents=True)
        piece = rows_table.slice(int(bounds[centroid]), int(counts[centroid]))
        pq.write_table(piece, folder / "part-00000.parquet")
    seconds["write"], cpu["write"] = time.perf_counter() - started, time.process_time() - cpu_started
    seconds["total"], cpu["total"] = sum(seconds.values()), sum(cpu.values())
    return {"timings": seconds, "cpu": cpu, "rows_per_centroid": counts.tolist(), "data_bytes": data_bytes}


# ---------------------------------------------------------------- report


def rows_for(label: str, job: dict, plain: dict, workers: int) -> tuple[dict, dict, dict]:
    """(seconds row, CPU seconds row, memory row) of one job run."""
    t = job["timings"]
    raw = t["read"] + t["assign"] + t["write"]
    seconds = {"run": label, **{p: t.get(p, float("nan")) for p in PHASES}, "read+assign+write": raw,
               "x plain": raw / plain["timings"]["total"]}
    c = {phase: job["cpu_by_stage"].get(stage, float("nan")) for phase, stage in zip(PHASES, STAGES)}
    raw_cpu = c["read"] + c["assign"] + c["write"]
    cpu = {"run": label, **c, "read+assign+write": raw_cpu, "x plain": raw_cpu / plain["cpu"]["total"]}
    share = plain["data_bytes"] / workers
    by_stage = job["peak_rss_by_stage"]
    memory = {
        "run": label, "data share GiB": share / 2**30, "idle GiB": job["baseline_rss"] / 2**30,
        "peak GiB": job["peak_rss"] / 2**30, "x data share": job["peak_rss"] / share,
        "x data share (above idle)": (job["peak_rss"] - job["baseline_rss"]) / share,
        "x data share (private)": job["peak_private"] / share,
        **{f"peak {stage}": by_stage.get(stage, float("nan")) / 2**30 for stage in STAGES},
    }
    return seconds, cpu, memory


def markdown_table(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(v if isinstance(v, str) else f"{v:.3g}" for v in row.values()) + " |")
    return "\n".join(lines)


def report_text(seconds: list[dict], cpu: list[dict], memory: list[dict], plain: dict) -> str:
    p, pc = plain["timings"], plain["cpu"]
    return "\n".join([
        "Seconds (job phases from the manifest):", "", markdown_table(seconds), "",
        f"plain pass: read {p['read']:.2f} s, assign {p['assign']:.2f} s, sort+write {p['write']:.2f} s, "
        f"total {p['total']:.2f} s; data (id + embedding, in Arrow) {plain['data_bytes'] / 2**30:.2f} GiB",
        "", "CPU seconds per stage (all workers + the client/scheduler process; hardly depends on the load):",
        "", markdown_table(cpu), "",
        f"plain pass CPU: read {pc['read']:.2f} s, assign {pc['assign']:.2f} s, sort+write {pc['write']:.2f} s, "
        f"total {pc['total']:.2f} s",
        "", "Worker memory (RSS, GiB; peak per progress stage from a 50 ms sampler):", "", markdown_table(memory),
    ])


def main(argv: Optional[list[str]] = None) -> dict:
    """Run and print the comparison; returns the seconds and memory rows, the plain pass and `moved`."""
    args = parse_args(argv)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this script
    args.data_dir.mkdir(parents=True, exist_ok=True)
    data = sample_dir(args)
    if args.job_only:
        args.job_only.write_text(json.dumps(run_job(args, data)))
        return {}
    load = os.getloadavg()
    jobs = []
    if args.baseline_src:
        jobs.append((f"job ({args.baseline_src})", run_baseline_job(args, data, args.baseline_src)))
    jobs.append(("job (this checkout)", run_job(args, data)))
    centroids = np.array(jobs[-1][1]["centroids"], dtype=np.float32)
    if args.timeline:
        args.timeline.write_text(json.dumps(jobs[-1][1]["timeline"]))
    out = Path(tempfile.mkdtemp(prefix="e2e-plain-", dir=args.data_dir))
    try:
        plain = plain_pass(data, centroids, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    seconds, cpu, memory = zip(*[rows_for(label, job, plain, args.workers) for label, job in jobs])
    agree = np.abs(np.array(jobs[-1][1]["rows_per_centroid"]) - plain["rows_per_centroid"]).sum() / 2 / args.rows
    text = report_text(list(seconds), list(cpu), list(memory), plain)
    ours, ours_memory = seconds[-1], memory[-1]
    notes = [
        f"{args.rows} x {args.dim}, k={args.k}, max_iter={args.max_iter}, {args.files} files, "
        f"{args.workers} workers; load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        f"{'PASS' if ours['x plain'] <= TARGET_SPEED else 'MISS'} read+assign+write = "
        f"{ours['x plain']:.2f}x the plain pass (target <= {TARGET_SPEED}x); in CPU seconds "
        f"{cpu[-1]['x plain']:.2f}x",
        f"{'PASS' if ours_memory['x data share'] <= TARGET_MEMORY else 'MISS'} peak worker RSS = "
        f"{ours_memory['x data share']:.2f}x the worker's share of the data "
        f"({ours_memory['x data share (above idle)']:.2f}x counting only RSS above the idle worker; "
        f"target <= {TARGET_MEMORY}x)",
        f"rows placed in a different centroid than the plain pass: {agree:.2%} (float32 near-ties)",
    ]
    plan = jobs[-1][1].get("memory_mode")
    if plan:
        notes.append(f"memory mode {plan['mode']} ({plan['requested']}: {plan['reason']}); partitions of <= "
                     f"{plan['partition_bytes'] / 2**20:.0f} MiB; workers' memory limit "
                     f"{args.worker_memory or 'Dask default'}")
    print(text)
    print("\n".join(notes))
    if args.markdown:
        args.markdown.write_text(text + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    return {"seconds": list(seconds), "cpu": list(cpu), "memory": list(memory), "plain": plain, "moved": agree}


if __name__ == "__main__":
    main()
