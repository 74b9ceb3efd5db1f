"""Orchestration overhead: the `retrain` Prefect flow's wall time over the same stage functions called directly.

    .venv/bin/python benchmarks/orchestration.py [--config configs/default.yaml] [--repeats 1] [KEY=VALUE ...]

Each measurement runs in its own fresh process and workspace (`medtune init`), so both sides pay the same
imports and the same DVC work; the flow side also pays Prefect's temporary server and task bookkeeping, which
is the overhead measured. "cold" builds the dataset; "warm" re-runs with nothing changed (DVC re-uses the build).
Prints a markdown table; copy it into benchmarks/README.md with the date and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent
RUNNER = """
import json, sys, time
from pathlib import Path
from pipelines.context import resolve
overrides = json.loads(sys.argv[2])
ctx = resolve(Path(sys.argv[4]), overrides, workspace=Path(sys.argv[1]))
from pipelines.retrain import retrain, run_stages
t = time.perf_counter()
if sys.argv[3] == "flow":
    retrain(workspace=str(ctx.workspace), config=str(ctx.config_path), overrides=overrides)
else:
    run_stages(ctx, echo=lambda line: None)
print("ELAPSED", time.perf_counter() - t)
"""


def measure(ws: Path, mode: str, config: str, overrides: list[str]) -> float:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MEDTUNE_HOME", None)
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(ws), json.dumps(overrides), mode, str(ws / config)],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return float(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("ELAPSED")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.yaml", help="config, relative to the workspace")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.stage3.steps=50")
    args = parser.parse_args()
    overrides = list(args.overrides)
    rows = []
    with tempfile.TemporaryDirectory(prefix="medtune-bench-") as tmp:
        for rep in range(args.repeats):
            times: dict[tuple[str, str], float] = {}
            for mode in ("direct", "flow"):
                ws = Path(tmp) / f"{mode}-{rep}"
                subprocess.run([str(BIN / "medtune"), "init", str(ws)], check=True, capture_output=True)
                times[(mode, "cold")] = measure(ws, mode, args.config, overrides)
                times[(mode, "warm")] = measure(ws, mode, args.config, overrides)
            for phase in ("cold", "warm"):
                d, f = times[("direct", phase)], times[("flow", phase)]
                rows.append((phase, d, f, f / d))
    print(f"retrain, every stage; {args.config} {' '.join(overrides)}; {os.cpu_count()} cores")
    print()
    print("| phase | stages called directly (s) | retrain flow (s) | flow / direct |")
    print("|---|---|---|---|")
    for phase, d, f, ratio in rows:
        print(f"| {phase} | {d:.1f} | {f:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
