"""Kill the runner mid-fit and resume it; the cost of checkpoints.

    python bench/faults_resume.py --rows 200000 --dim 64 --k 256 --max-iter 40

Three `kmeans-partition run` processes (each with its own LocalCluster) on one `sample` data set,
``tol=0`` so every run does ``--max-iter`` Lloyd iterations:

1. no periodic checkpoints (``--checkpoint-seconds 0``: only the save after the fit);
2. a checkpoint after every iteration (the most a run can pay: per-save seconds and the fit
   time difference, so the overhead at any interval follows);
3. checkpoints every ``--every`` iterations, SIGKILLed (process group) ``--kill-after`` iterations'
   worth of seconds after the checkpoint at iteration >= ``--kill-at``, then started again: prints
   the iteration it resumed from, the fit seconds lost (kill time - checkpoint time) and the
   iterations redone (those lost plus the one redone to rebuild the labels), and whether its
   output (parquet bytes, centroids, manifest without timings) equals run 1's.

Prints one block of numbers; docs/reliability.md records a run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).with_name("kmeans-partition")


def _run_args(inp: Path, out: Path, args, *extra: str) -> list[str]:
    return [str(BIN), "run", "--input", str(inp), "--output", str(out), "--n-clusters", str(args.k),
            "--id-field", "id", "--embedding-field", "embedding", "--tol", "0", "--max-iter", str(args.max_iter),
            "--init", "random", "--no-report", "--quiet", *extra]


def _env() -> dict:
    return dict(os.environ, KMP_OWNER_UID="bench-resume")  # a retry of the same "resource"


def _manifest(out: Path) -> dict:
    return json.loads((out / "_manifest.json").read_text())


def _comparable(out: Path) -> tuple[dict, dict]:
    files = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(out.rglob("*")) if p.is_file() and p.name != "_manifest.json"}
    manifest = _manifest(out)
    for key in ("timings", "created", "manifest_path", "centroids_path", "report_path", "files"):
        manifest.pop(key, None)
    for key in ("output_path", "checkpoint_seconds", "checkpoint_iterations"):  # differ between the runs
        manifest["spec"].pop(key)
    manifest["engine"].pop("reason", None)
    for item in manifest["iterations"]:
        item.pop("seconds")
        item.pop("rows_computed")
    return files, manifest


def first_difference(got: tuple[dict, dict], want: tuple[dict, dict]) -> str:
    """Where a resumed output first differs from the undisturbed one (for the log of a failure)."""
    (got_files, got_manifest), (want_files, want_manifest) = got, want
    for a, b in zip(got_manifest["iterations"], want_manifest["iterations"]):
        if a != b:
            return f"iteration {b['iteration']}: resumed {a} vs undisturbed {b}"
    keys = sorted(k for k in set(got_manifest) | set(want_manifest) if got_manifest.get(k) != want_manifest.get(k))
    files = sorted(k for k in set(got_files) | set(want_files) if got_files.get(k) != want_files.get(k))
    return f"manifest keys {keys}; files {files[:5]}{' ...' if len(files) > 5 else ''}"


def _timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=_env(), check=True)
    return time.perf_counter() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--max-iter", type=int, default=40)
    parser.add_argument("--every", type=int, default=5, help="checkpoint interval (iterations) of the killed run")
    parser.add_argument("--kill-at", type=int, default=10, help="kill after the checkpoint at this iteration or later")
    parser.add_argument("--kill-after", type=float, default=2.5, help="...and this many iterations' seconds later")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="kmp-resume-") as tmp:
        root = Path(tmp)
        subprocess.run([str(BIN), "sample", "--output", str(root / "in"), "--rows", str(args.rows), "--dim",
                        str(args.dim), "--clusters", str(args.k * 4), "--files", str(args.files)], check=True)
        inp = root / "in"
        wall_plain = _timed(_run_args(inp, root / "plain", args, "--checkpoint-seconds", "0"))
        plain = _manifest(root / "plain")
        wall_each = _timed(_run_args(inp, root / "each", args, "--checkpoint-seconds", "0",
                                     "--checkpoint-iterations", "1"))
        each = _manifest(root / "each")
        per_iter = plain["timings"]["fit"] / max(plain["n_iter"], 1)

        out = root / "killed"
        cmd = _run_args(inp, out, args, "--checkpoint-seconds", "0", "--checkpoint-iterations", str(args.every))
        started = time.perf_counter()
        runner = subprocess.Popen(cmd, env=_env(), start_new_session=True)
        state_file, state = out / "_checkpoint" / "state.json", {}
        while runner.poll() is None and state.get("iteration", 0) < args.kill_at:
            try:
                state = json.loads(state_file.read_text())
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.02)
        time.sleep(args.kill_after * per_iter)
        killed_at = time.time()
        if runner.poll() is not None:
            sys.exit(f"the run ended (exit {runner.returncode}) before it could be killed: raise --max-iter")
        os.killpg(runner.pid, signal.SIGKILL)  # the runner and its LocalCluster: our own process group
        runner.wait()
        wall_killed = time.perf_counter() - started
        state = json.loads(state_file.read_text())
        lost_s = killed_at - state["saved_at"]
        wall_resumed = _timed(cmd)
        resumed = _manifest(out)
        same = _comparable(out) == _comparable(root / "plain")
        difference = "" if same else first_difference(_comparable(out), _comparable(root / "plain"))

    ckpt_plain, ckpt_each = plain["timings"].get("checkpoint", 0.0), each["timings"].get("checkpoint", 0.0)
    saves = each["n_iter"] + 1
    per_save = ckpt_each / saves
    print(f"data: {args.rows} x {args.dim}, k={args.k}, {plain['n_iter']} iterations (tol=0), "
          f"{os.cpu_count()} local workers")
    print(f"fit without periodic checkpoints: {plain['timings']['fit']:.2f}s ({per_iter:.3f}s/iteration); "
          f"its one save after the fit {ckpt_plain:.3f}s")
    print(f"fit with a checkpoint every iteration: {each['timings']['fit']:.2f}s, {saves} saves, "
          f"{ckpt_each:.3f}s saving = {100 * ckpt_each / each['timings']['fit']:.2f}% of the fit "
          f"({per_save * 1000:.1f} ms per save); fit time difference "
          f"{100 * (each['timings']['fit'] - plain['timings']['fit']) / plain['timings']['fit']:+.1f}%")
    print(f"default (every 60 s): {100 * per_save / 60:.3f}% of fit time at this size; every iteration: "
          f"{100 * per_save / per_iter:.1f}%")
    print(f"killed {lost_s:.2f}s after the checkpoint at iteration {state['iteration']} "
          f"(~{lost_s / per_iter:.1f} iterations lost); resumed from iteration {state['iteration']}, "
          f"redid iteration {state['iteration']} (labels) and continued: ~{lost_s / per_iter + 1:.1f} "
          f"iterations redone")
    print(f"wall: undisturbed {wall_plain:.1f}s, killed run {wall_killed:.1f}s + resumed run {wall_resumed:.1f}s "
          f"(resumed fit {resumed['timings']['fit']:.2f}s); output identical to the undisturbed run: {same}")
    if difference:
        print(f"first difference: {difference}")


if __name__ == "__main__":
    main()
