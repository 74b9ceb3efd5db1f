"""Contention: the base stage's step beside other medtune pipelines (issue 17, item 2, "steady under load").

    .venv/bin/python benchmarks/contention.py                      # K = 1 and 4, 60 s windows
    .venv/bin/python benchmarks/contention.py --k 1 --seconds 20   # a quick check
    GOMP_SPINCOUNT=300000 .venv/bin/python benchmarks/contention.py  # libgomp's default spin: the stall

One temp workspace holds the measured dataset (``medtune data build``, ``--subjects`` phantom subjects). The
measured process does what ``medtune run``'s base stage does, in a fresh process per window: it resolves the
workspace (so :func:`components.runtime.configure_environment` sets the environment before torch loads), applies
``train.threads`` (:func:`pipelines.context.apply_threads`) and runs :func:`components.training.base.bootstrap_base`
(no vision warm-up: the base steps are what is timed), with the stage's progress lines (:mod:`pipelines.progress`,
every ``--every`` seconds, as without a terminal), for ``--seconds`` after its first steps. Windows: quiet, then for
each K beside K other pipelines, each a ``medtune run`` in its own temp workspace (smoke sizes but a long base, so
it trains through the window; with ``--federated`` and K >= 2 the last one is ``-c configs/federated.yaml`` with
short stages before a long federated simulation). The window opens when each competitor has printed its marker
line (it is training), or after ``--settle`` seconds.

Printed per window: mean and median base step, their ratio to the fair share ``(K + 1) x`` the quiet mean (issue 17
target: <= 1.5), the longest step, the longest gap between the measured process's progress lines (target: they
keep coming, about every ``--every`` seconds), the one-minute load average at the window's end and the per-core
speed (one single-thread 512^3 float32 matmul, GFLOP/s, measured by the measured process just before its window:
under load it shows the share of a core the process gets). Every child runs in its own process group and carries
a marker in its environment; on exit (also Ctrl-C or SIGTERM) every process carrying it is ended and the temp
folders are removed. Copy the table into benchmarks/README.md with the date, the machine and ``nproc``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
MARK = "MEDTUNE_CONTENTION_RUN"  # in every child's environment: how cleanup finds them (Ray re-parents its own)

#: Competitors: smoke-size data and later stages, a base long enough to train through any window.
RUN_OVERRIDES = [
    "data.sources.phantom.subjects=40",
    "validate.min_records=50",
    "base.vision_warmup=100",
    "base.steps=20000",
    "base.batch_size=16",
    "progress.every_seconds=5",
]
#: The federated competitor: short stages, then a long Flower simulation.
FEDERATED_OVERRIDES = [
    "data.sources.phantom.subjects=40",
    "validate.min_records=50",
    "base.vision_warmup=20",
    "base.steps=40",
    "rank_search.enabled=false",
    "vq.steps=20",
    "train.stage1.steps=5",
    "train.stage2.steps=5",
    "train.stage3.steps=5",
    "federated.rounds_sparse=20",
    "federated.rounds_lora=40",
    "federated.local_steps=20",
    "progress.every_seconds=5",
]

RUNNER = r"""
import json, sys, time
from pathlib import Path
from pipelines.context import apply_threads, resolve   # no torch yet: the environment is set first
ws, seconds, every, overrides = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
ctx = resolve(None, overrides, workspace=ws)
threads = apply_threads(ctx)["runtime.threads"]
import torch
from components.training.base import bootstrap_base
from components.runtime import thread_governor
from pipelines.progress import stage_progress
from pipelines.stages import model_args

a = torch.randn(512, 512); b = torch.randn(512, 512)
torch.set_num_threads(1); best = float("inf")
for _ in range(3):
    t = time.perf_counter(); torch.mm(a, b); best = min(best, time.perf_counter() - t)
torch.set_num_threads(threads)
gflops = 2 * 512**3 / best / 1e9

class Done(Exception):
    pass

steps, lines, opened = [], [], [None]
def write(line):
    lines.append(time.perf_counter()); print(line, flush=True)

governor = thread_governor()   # as medtune's stages: None with a fixed count or MEDTUNE_ADAPT_THREADS=0
with stage_progress("base", write, every_seconds=every, live=False, between_steps=governor) as progress:
    report = progress.phase("training")
    def on_step(step, total, loss):
        report(step, total, loss)
        if loss is None:
            return
        now = time.perf_counter()
        steps.append(now)
        if len(steps) == 4:
            opened[0] = now   # the first steps (allocation, first checkpoint folder) stay out of the window
        elif opened[0] is not None and now - opened[0] >= seconds:
            raise Done
    b = ctx.config.base
    try:
        bootstrap_base(ctx.path(ctx.config.data.out), ws / ".medtune" / f"bench-{time.time_ns()}",
                       args=model_args(ctx), vocab_size=ctx.config.model.lm.vocab_size, steps=1_000_000,
                       batch_size=b.batch_size, lr=b.lr, vision_warmup=0, seed=ctx.config.seed, progress=on_step)
    except Done:
        pass
window = [t for t in steps if t >= opened[0]]
durations = [b - a for a, b in zip(window, window[1:])]
inside = [t for t in lines if t >= opened[0]]
gaps = [b - a for a, b in zip([opened[0], *inside], [*inside, window[-1]])]
used = torch.get_num_threads() if governor is None else governor.threads
print("RESULT " + json.dumps({"durations": durations, "longest_gap": max(gaps), "gflops": gflops,
                              "threads": threads, "threads_at_end": used}), flush=True)
"""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[str]
    marker: str
    log: Path
    seen: threading.Event = field(default_factory=threading.Event)


class Children:
    """Every process this benchmark starts; :meth:`close` ends them all, their descendants included."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.children: list[Child] = []

    def env(self) -> dict[str, str]:
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", MARK: self.token}
        env.pop("MEDTUNE_HOME", None)
        env.pop("MEDTUNE_WORKSPACE", None)
        return env

    def start(self, name: str, cmd: list[str], cwd: Path, marker: str, log: Path) -> Child:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        child = Child(name, proc, marker, log)
        threading.Thread(target=self._pump, args=(child,), daemon=True).start()
        self.children.append(child)
        return child

    @staticmethod
    def _pump(child: Child) -> None:
        assert child.proc.stdout is not None
        with child.log.open("w") as out:
            for line in child.proc.stdout:
                out.write(line)
                out.flush()
                if re.search(child.marker, line):
                    child.seen.set()

    def close(self) -> None:
        for child in self.children:
            _signal_group(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in self.children:
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child.proc, signal.SIGKILL)
                child.proc.wait(timeout=10)
        self.children = []
        for pid in _marked(self.token):  # anything that left its group (Ray's workers, a daemonised server)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen[str], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _marked(token: str) -> list[int]:
    found, needle = [], f"{MARK}={token}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def medtune(*args: str) -> list[str]:
    return [str(BIN / "medtune"), *args]


def make_workspace(children: Children, root: Path, name: str, build: list[str] | None = None) -> Path:
    ws = root / name
    subprocess.run(medtune("init", str(ws)), check=True, capture_output=True, env=children.env())
    if build is not None:
        done = subprocess.run(
            medtune("data", "build", "--no-progress", *build), cwd=ws, env=children.env(), capture_output=True,
            text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"medtune data build failed in {ws}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return ws


def measure(children: Children, ws: Path, seconds: float, every: float, overrides: list[str]) -> dict[str, float]:
    cmd = [sys.executable, "-c", RUNNER, str(ws), str(seconds), str(every), json.dumps(overrides)]
    child = children.start("measured", cmd, ws, "^RESULT ", ws.parent / f"measured-{time.time_ns()}.log")
    code = child.proc.wait(timeout=seconds + 900)
    text = child.log.read_text() if child.log.exists() else ""
    for _ in range(50):  # the pump thread may still be writing the last lines
        if "RESULT " in text or code != 0:
            break
        time.sleep(0.1)
        text = child.log.read_text()
    result = next((json.loads(line[7:]) for line in text.splitlines() if line.startswith("RESULT ")), None)
    children.children.remove(child)
    if code != 0 or result is None:
        raise SystemExit(f"the measured process failed ({code}):\n{text[-3000:]}")
    d = result["durations"]
    return {
        "mean": statistics.fmean(d),
        "median": statistics.median(d),
        "longest": max(d),
        "steps": len(d),
        "gap": result["longest_gap"],
        "gflops": result["gflops"],
        "threads": result["threads"],
        "threads_at_end": result["threads_at_end"],
        "load": os.getloadavg()[0],
    }


def start_competitors(children: Children, root: Path, k: int, federated: bool, extra: list[str]) -> list[Child]:
    started = []
    for i in range(k):
        ws = make_workspace(children, root, f"competitor-{k}-{i}")
        if federated and k >= 2 and i == k - 1:
            cmd = medtune("run", "-c", "configs/federated.yaml", *FEDERATED_OVERRIDES, *extra)
            marker = r"^train: stages"  # training done: the Flower simulation starts
        else:
            cmd = medtune("run", *RUN_OVERRIDES, *extra)
            marker = r"^base: training"
        started.append(children.start(f"competitor {i}", cmd, ws, marker, root / f"competitor-{k}-{i}.log"))
    return started


def wait_busy(competitors: list[Child], settle: float) -> str:
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        if all(c.seen.is_set() for c in competitors):
            return "all training"
        dead = [c for c in competitors if c.proc.poll() is not None]
        if dead:
            tail = "\n".join(dead[0].log.read_text().splitlines()[-30:]) if dead[0].log.exists() else ""
            raise SystemExit(f"{dead[0].name} exited {dead[0].proc.returncode} before training; its log ends:\n{tail}")
        time.sleep(1)
    return f"{sum(c.seen.is_set() for c in competitors)}/{len(competitors)} training after {settle:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4], help="numbers of other pipelines")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window per row")
    parser.add_argument("--every", type=float, default=5.0, help="progress line interval of the measured process")
    parser.add_argument("--subjects", type=int, default=40, help="phantom subjects of the measured dataset")
    parser.add_argument("--settle", type=float, default=600.0, help="longest wait for the competitors to train")
    parser.add_argument("--federated", action=argparse.BooleanOptionalAction, default=True,
                        help="with K >= 2, the last competitor is a federated retrain")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs) and print its path")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every medtune process, e.g. train.threads=1")
    args = parser.parse_args()

    token = uuid.uuid4().hex
    children = Children(token)
    root = Path(tempfile.mkdtemp(prefix="medtune-contention-"))
    signal.signal(signal.SIGTERM, _interrupt)  # a kill cleans up (and prints what was measured) as Ctrl-C does
    rows = []
    failure: SystemExit | None = None
    try:
        build = [f"data.sources.phantom.subjects={args.subjects}", *args.overrides]
        ws = make_workspace(children, root, "measured", build)
        measured = [f"data.sources.phantom.subjects={args.subjects}", *args.overrides]
        quiet = measure(children, ws, args.seconds, args.every, measured)
        rows.append((0, quiet, "quiet"))
        for k in args.k:
            competitors = start_competitors(children, root, k, args.federated, args.overrides)
            state = wait_busy(competitors, args.settle)
            rows.append((k, measure(children, ws, args.seconds, args.every, measured), state))
            children.close()
    except KeyboardInterrupt:
        print("interrupted: cleaning up; the rows measured so far follow", file=sys.stderr)
    except SystemExit as e:  # a failed child: its message after the rows measured so far
        failure = e
    finally:
        children.close()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    if rows:
        print_table(rows, args)
    if failure is not None:
        raise failure


def print_table(rows: list[tuple[int, dict[str, float], str]], args: argparse.Namespace) -> None:
    base = rows[0][1]["mean"]
    from components.runtime import usable_cpus

    governor = "off" if os.environ.get("MEDTUNE_ADAPT_THREADS") == "0" else "on"
    waits = os.environ.get("OMP_WAIT_POLICY", "unset")
    waits += f", GOMP_SPINCOUNT {os.environ.get('GOMP_SPINCOUNT', 'unset (medtune sets 1000)')}"
    print(
        f"base step beside K other medtune pipelines; {os.cpu_count()} CPUs ({usable_cpus()} usable), "
        f"{rows[0][1]['threads']:.0f} threads (governor {governor}), OMP_WAIT_POLICY {waits}, "
        f"{args.seconds:.0f} s windows; "
        f"{' '.join(args.overrides)}"
    )
    print()
    print("| K | mean step (ms) | median (ms) | / fair share | longest step (s) | longest progress gap (s) | "
          "load (1 min) | GFLOP/s per core | threads at end | competitors |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k, r, state in rows:
        ratio = r["mean"] / ((k + 1) * base)
        print(
            f"| {k} | {1e3 * r['mean']:.0f} | {1e3 * r['median']:.0f} | {ratio:.2f} | {r['longest']:.2f} | "
            f"{r['gap']:.1f} | {r['load']:.1f} | {r['gflops']:.1f} | {r['threads_at_end']:.0f} | {state} |"
        )


if __name__ == "__main__":
    main()
