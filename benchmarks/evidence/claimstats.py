"""Statistics shared by the evidence scripts (issue 23): mean and 95% t-interval over seeds, a learning rate chosen
on a validation split, a markdown table and a verdict that says what the intervals support.

    from claimstats import interval, select_lr, verdict
    best, scores = select_lr({1e-3: 0.71, 3e-3: 0.78, 1e-2: 0.80, 3e-2: 0.42})    # the best validation score
    print(interval([0.81, 0.83, 0.80, 0.82, 0.84]))                             # 0.820 ± 0.020 (n=5)
    print(verdict("ElaLoRA > LoRA", treated, baseline, paired=True))             # from the interval of the gain

The interval of a mean is ``mean ± t(0.975, n-1) · s / sqrt(n)`` (``scipy.stats.t``); the interval of a gain is
that of the per-seed differences where the arms share their seeds (paired), else Welch's. Nothing here knows any
claim's outcome: a verdict is computed from the numbers it is given.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scipy import stats as _stats

BENCHMARKS = Path(__file__).resolve().parents[1]
if str(BENCHMARKS) not in sys.path:  # the sibling benchmark scripts whose task code the evidence scripts reuse
    sys.path.insert(0, str(BENCHMARKS))

LEVEL = 0.95
_MODE = {"quick": False}  # set by preamble(): verdicts of a quick run say so


@dataclass(frozen=True)
class Interval:
    mean: float
    half: float  # half-width of the interval; nan with fewer than 2 values
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:.3f} (n={self.n}, no interval)"
        return f"{self.mean:.3f} ± {self.half:.3f}"

    def to_json(self) -> dict[str, float]:
        return {**asdict(self), "low": self.low, "high": self.high}


def t_quantile(df: float, level: float = LEVEL) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom."""
    return float(_stats.t.ppf(0.5 + level / 2, df))


def interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and ``level`` t-interval half-width of ``values`` (one value per seed)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("interval of no values")
    n = len(vals)
    mean = statistics.fmean(vals)
    if n < 2:
        return Interval(mean, float("nan"), n)
    return Interval(mean, t_quantile(n - 1, level) * statistics.stdev(vals) / math.sqrt(n), n)


def gain_interval(
    treated: Sequence[float], baseline: Sequence[float], *, paired: bool, level: float = LEVEL
) -> Interval:
    """Interval of ``mean(treated) - mean(baseline)``: of the per-seed differences when ``paired`` (same seeds, same
    order), else Welch's (unequal variances, Welch-Satterthwaite degrees of freedom)."""
    if paired:
        if len(treated) != len(baseline):
            raise ValueError(f"paired arms need as many values: {len(treated)} vs {len(baseline)}")
        return interval([a - b for a, b in zip(treated, baseline, strict=True)], level)
    a, b = [float(v) for v in treated], [float(v) for v in baseline]
    mean = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return Interval(mean, float("nan"), min(len(a), len(b)))
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(mean, 0.0, min(len(a), len(b)))
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return Interval(mean, t_quantile(df, level) * se, min(len(a), len(b)))


def verdict(claim: str, treated: Sequence[float], baseline: Sequence[float], *, paired: bool) -> str:
    """One line stating what the interval of the gain (treated - baseline, higher is better) supports."""
    gain = gain_interval(treated, baseline, paired=paired)
    how = "paired by seed" if paired else "Welch"
    span = f"gain {gain.mean:+.3f}, 95% interval [{gain.low:+.3f}, {gain.high:+.3f}], n={gain.n}, {how}"
    if _MODE["quick"]:
        claim = f"QUICK run, not evidence: {claim}"
    if gain.n < 2 or math.isnan(gain.half):
        return f"{claim}: not testable here: fewer than 2 seeds per arm ({span})"
    if gain.low > 0:
        return f"{claim}: reproduced: the interval lies above zero ({span})"
    if gain.high < 0:
        return f"{claim}: not reproduced: the interval lies below zero, the baseline is better ({span})"
    return f"{claim}: not reproduced: the interval includes no gain ({span})"


def select_lr(scores: Mapping[float, float], *, min_grid: int = 4) -> tuple[float, dict[float, float]]:
    """The learning rate with the best validation score (the smallest rate among equals), and the scores.
    A grid of fewer than ``min_grid`` rates is refused (quick modes pass a smaller ``min_grid`` and say so)."""
    if len(scores) < min_grid:
        raise ValueError(f"a learning-rate grid needs at least {min_grid} rates, got {len(scores)}")
    finite = {lr: s for lr, s in scores.items() if math.isfinite(s)}
    if not finite:
        raise ValueError("no learning rate gave a finite validation score")
    best = max(finite.values())
    return min(lr for lr, s in finite.items() if s == best), dict(scores)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; cells are str()-ed."""
    bad = [r for r in rows if len(r) != len(headers)]
    if bad:
        raise ValueError(f"a row has {len(bad[0])} cells for {len(headers)} columns")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def preamble(name: str, quick: bool) -> dict[str, Any]:
    """Print and return what every evidence table needs beside it: the command, the date, the mode, the machine's
    per-core speed (the figure of ``benchmarks/main_job.py``) and the load average."""
    from machine import per_core_gflops

    _MODE["quick"] = quick
    info = {
        "script": name,
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "mode": "QUICK (fewer seeds / rates / steps: not evidence)" if quick else "full",
        "per_core_gflops": round(per_core_gflops(), 1),
        "load_average": round(os.getloadavg()[0], 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "commit": _commit(),
    }
    print(f"# {name}: {info['mode']}")
    for key in ("command", "commit", "date", "per_core_gflops", "load_average", "machine"):
        print(f"  {key}: {info[key]}")
    return info


class RunCache:
    """Finished runs kept in a JSON-lines file (``--resume FILE``), so that a full run stopped on a shared machine
    (a quiet window, a deadline) picks up where it stopped. Each line holds the script's settings (``identity``), a
    run's key and its measured values; lines of other settings are ignored, so one file can serve several."""

    def __init__(self, path: Path | None, identity: Mapping[str, Any]) -> None:
        self.path = path
        self.identity = json.dumps(dict(identity), sort_keys=True, default=str)
        self.done: dict[str, Any] = {}
        if path is not None and path.is_file():
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: that run simply runs again
                    print(f"  {path}:{number}: not a complete record, ignored")
                    continue
                if record.get("identity") == self.identity:
                    self.done[record["key"]] = record["value"]
            print(f"  resuming from {path}: {len(self.done)} finished runs of these settings")

    def get_or_run(self, key: str, run: Callable[[], Any]) -> Any:
        if key in self.done:
            return self.done[key]
        value = run()
        self.done[key] = value
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as out:
                out.write(json.dumps({"identity": self.identity, "key": key, "value": value}, default=str) + "\n")
        return value


def settings_of(ns: Any, *, leave_out: Sequence[str] = ("json", "resume", "threads")) -> dict[str, Any]:
    """The parsed arguments that decide a run's results (not where they are written, nor the thread count)."""
    return {k: v for k, v in sorted(vars(ns).items()) if k not in leave_out}


def _commit() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCHMARKS, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "benchmarks"],
                               cwd=BENCHMARKS.parent, capture_output=True, text=True).stdout.strip()  # fmt: skip
    except OSError:
        return "unknown"
    return out.stdout.strip() + (" (benchmarks/ modified)" if dirty else "") if out.returncode == 0 else "unknown"


def finish(info: dict[str, Any], payload: dict[str, Any], json_path: Path | None) -> None:
    """Add the closing per-core speed and write ``payload`` (with ``info``) to ``json_path`` if given."""
    from machine import per_core_gflops

    info["per_core_gflops_after"] = round(per_core_gflops(), 1)
    info["load_average_after"] = round(os.getloadavg()[0], 2)
    print(f"\nper-core speed {info['per_core_gflops']} GFLOP/s before, {info['per_core_gflops_after']} after; "
          f"load average {info['load_average']} before, {info['load_average_after']} after")  # fmt: skip
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"info": info, **payload}, indent=1, default=str) + "\n")
        print(f"wrote {json_path}")


def lr_text(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")
