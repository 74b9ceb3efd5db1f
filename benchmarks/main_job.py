"""The main job as a new user meets it: `medtune run` on the embedded default in a fresh clone, after installation.

    .venv/bin/python benchmarks/main_job.py [--keep] [KEY=VALUE ...]

Clones the repository's committed HEAD into a temporary folder (a dirty working tree is reported: the clone runs the
committed config and data recipe, the venv's editable install runs this checkout's code), runs `medtune run` there
with this venv (nothing else running in the workspace: no cache, no MLflow database, no Prefect home) and prints:

- the wall time and each stage's seconds (from the run's MLflow runs), with this machine's per-core speed (GFLOP/s
  of one single-thread 512 x 512 matmul, before and after) and the load average, so that figures from machines of
  one kind that differ 3x in speed can be compared;
- closed-question accuracy on the held-out subjects, open recall and the CT->MRI SSIM;
- the safety grades (overall and per hazard), over-refusal, and the register stage's gate lines and decision;
- the longest gap between two output lines (progress must keep coming).

Copy the table into benchmarks/README.md with the date and the command.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import per_core_gflops  # the per-core figure every benchmark prints (a sibling module)

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def stage_seconds(workspace: Path) -> dict[str, float]:
    """Each stage's child run duration, from the workspace's MLflow database."""
    db = workspace / ".medtune" / "mlflow" / "mlflow.db"
    if not db.is_file():
        return {}
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT name, start_time, end_time FROM runs ORDER BY start_time").fetchall()
    return {name: ((end or start) - start) / 1000 for name, start, end in rows}


def run(workspace: Path, overrides: list[str]) -> tuple[float, str, float]:
    """`medtune run` in ``workspace``: (wall seconds, output, longest gap between output lines in seconds)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDTUNE_", "PREFECT_", "MLFLOW_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    started = last = time.perf_counter()
    gap, lines = 0.0, []
    proc = subprocess.Popen(
        [str(BIN / "medtune"), "run", *overrides],
        cwd=workspace,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.perf_counter()
        gap, last = max(gap, now - last), now
        lines.append(line)
        print(line, end="", flush=True)
    code = proc.wait(timeout=3600)
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"medtune run failed (exit {code})")
    return wall, "".join(lines), gap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone (its path is printed)")
    parser.add_argument("--nproc", type=int, default=1, help="medtune run --nproc N (N processes, train.distributed)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.stage3.steps=50")
    args = parser.parse_args()
    if args.nproc > 1:
        args.overrides = ["--nproc", str(args.nproc), *args.overrides]
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.strip()  # fmt: skip
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.strip()  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="medtune-main-job-"))
    try:
        workspace = tmp / "medtune"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(workspace)], check=True)
        load_before, gflops_before = os.getloadavg()[0], per_core_gflops()
        wall, output, gap = run(workspace, args.overrides)
        gflops_after, load_after = per_core_gflops(), os.getloadavg()[0]
        stages = stage_seconds(workspace)
        names = r"(closed/accuracy|open/recall|generation/ssim/modality_conversion/CT) ([0-9.]+)"
        metric = {k: float(v) for k, v in re.findall(names, output)}
        gates = [line for line in output.splitlines() if line.startswith("register:")]
        safety = [line for line in output.splitlines() if line.startswith("safety: overall")]
        how = f" --nproc {args.nproc}" if args.nproc > 1 else ""
        title = f"\n## `medtune run{how}` on the embedded default, fresh clone of {commit}"
        print(title, "(dirty tree)" if dirty else "")
        print(
            f"\nper-core speed {gflops_before:.1f} GFLOP/s before, {gflops_after:.1f} after; load average (1 min) "
            f"{load_before:.2f} before, {load_after:.2f} after\n"
        )
        print("| wall (s) | " + " | ".join(f"{k} (s)" for k in stages) + " | longest silence (s) |")
        print("|---|" + "---|" * len(stages) + "---|")
        print(f"| {wall:.0f} | " + " | ".join(f"{v:.1f}" for v in stages.values()) + f" | {gap:.1f} |")
        print("\n| closed accuracy | open recall | CT->MRI SSIM |\n|---|---|---|")
        keys = ("closed/accuracy", "open/recall", "generation/ssim/modality_conversion/CT")
        print("| " + " | ".join(f"{metric.get(k, float('nan')):.3f}" for k in keys) + " |")
        print("\n" + "\n".join(safety + gates))
        if args.keep:
            print(f"\nworkspace kept: {workspace}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
