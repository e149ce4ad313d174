"""Uneven load: the job with one of two workers sharing its CPU with a busy loop, with and without
Dask's work stealing (`cluster.SCHEDULER_CONFIG` turns it off on the clusters this tool starts).

    python bench/uneven_load.py --rows 500000 --dim 384 --clusters 1500 --files 8 --k 1000

Prints, for each setting: the job's seconds, each worker's peak RSS (getrusage), the bytes of
partitions a worker received from another (``load_partition`` keys in its transfer log) and the
scheduler's steal events. Needs Linux's ``taskset`` and two CPUs; data as bench_e2e's (cached).
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e import sample_dir  # noqa: E402


def worker_report(dask_worker) -> dict:
    """Peak RSS and bytes received per task prefix (MiB) of this worker."""
    import resource

    received = collections.Counter()
    for transfer in dask_worker.transfer_incoming_log:
        for key, nbytes in transfer["keys"].items():
            name = key[0] if isinstance(key, tuple) else key
            received[str(name).split("-")[0]] += nbytes
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "received_mib": {k: round(v / 2**20, 1) for k, v in received.items()}}


def steal_events(dask_scheduler=None) -> int:
    return sum(1 for _, event in dask_scheduler.get_events("stealing") if event[0] == "confirm")


def run(data: Path, k: int, max_iter: int, stealing: bool) -> dict:
    from distributed import Client

    from kmeans_partition.runner import cluster
    from kmeans_partition.runner.stage import KMeansStage

    configured = cluster.SCHEDULER_CONFIG
    cluster.SCHEDULER_CONFIG = {**configured, "distributed.scheduler.work-stealing": stealing}
    try:
        local = cluster.local_cluster(2)  # reads SCHEDULER_CONFIG as it starts the scheduler
    finally:
        cluster.SCHEDULER_CONFIG = configured
    with tempfile.TemporaryDirectory(dir=data.parent) as out, local, Client(local) as client:
        slow, fast = sorted(client.run(os.getpid).values())
        subprocess.run(["taskset", "-p", "-c", "0", str(slow)], check=True, capture_output=True)
        subprocess.run(["taskset", "-p", "-c", "1", str(fast)], check=True, capture_output=True)
        busy = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", "while True: pass"])
        try:
            start = time.perf_counter()
            KMeansStage(n_clusters=k, id_field="id", embedding_field="embedding", input_path=str(data),
                        output_path=f"{out}/o", max_iter=max_iter).run(client=client)
            seconds = time.perf_counter() - start
        finally:
            busy.kill()
            busy.wait()
        return {"stealing": stealing, "seconds": round(seconds, 1), "workers": client.run(worker_report),
                "steals": client.run_on_scheduler(steal_events)}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("rows", 500_000), ("dim", 384), ("clusters", 1500), ("files", 8), ("seed", 0),
                          ("k", 1000), ("max-iter", 5)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[1] / ".bench-data")
    args = parser.parse_args(argv)
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this script
    data = sample_dir(args)
    results = [run(data, args.k, args.max_iter, stealing) for stealing in (False, True)]
    for r in results:
        print(f"work stealing {'on ' if r['stealing'] else 'off'}: {r['seconds']} s, steals {r['steals']}")
        for address, w in sorted(r["workers"].items()):
            print(f"  {address}: peak RSS {w['peak_rss_mib']:.0f} MiB, received {w['received_mib']}")
    return results


if __name__ == "__main__":
    main()
