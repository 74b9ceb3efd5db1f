"""The statistics of the evidence scripts (benchmarks/evidence/claimstats.py, issue 23): intervals, the
learning-rate choice and the verdict are computed from the numbers, never fixed."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from typing import Any

import pytest

PATH = Path(__file__).resolve().parents[3] / "benchmarks" / "evidence" / "claimstats.py"


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("claimstats", PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("claimstats", module)
    spec.loader.exec_module(module)
    return module


cs = _load()


def test_interval_matches_the_t_formula() -> None:
    values = [0.80, 0.82, 0.81, 0.85, 0.79]
    got = cs.interval(values)
    # t(0.975, 4) = 2.776; stdev 0.02302; half = 2.776 * 0.02302 / sqrt(5)
    assert got.mean == pytest.approx(0.814)
    assert got.half == pytest.approx(2.7764451 * 0.0230217 / math.sqrt(5), rel=1e-4)
    assert got.n == 5 and got.low < got.mean < got.high
    assert math.isnan(cs.interval([0.5]).half)
    assert "no interval" in str(cs.interval([0.5]))


def test_paired_gain_uses_per_seed_differences() -> None:
    treated, baseline = [0.70, 0.80, 0.90], [0.69, 0.79, 0.89]  # a constant +0.01 under large seed spread
    paired = cs.gain_interval(treated, baseline, paired=True)
    welch = cs.gain_interval(treated, baseline, paired=False)
    assert paired.mean == pytest.approx(0.01) and paired.half == pytest.approx(0.0, abs=1e-12)
    assert welch.half > 0.1  # unpaired, the seed spread swamps the gain
    with pytest.raises(ValueError):
        cs.gain_interval([0.1, 0.2], [0.1], paired=True)


def test_verdict_follows_the_interval() -> None:
    up = cs.verdict("A > B", [0.80, 0.81, 0.82, 0.83, 0.84], [0.70, 0.71, 0.72, 0.73, 0.74], paired=True)
    assert "A > B: reproduced" in up
    down = cs.verdict("A > B", [0.70, 0.71, 0.72, 0.73, 0.74], [0.80, 0.81, 0.82, 0.83, 0.84], paired=True)
    assert "not reproduced" in down and "below zero" in down
    flat = cs.verdict("A > B", [0.80, 0.70, 0.82, 0.68, 0.75], [0.75, 0.76, 0.74, 0.73, 0.77], paired=True)
    assert "not reproduced: the interval includes no gain" in flat
    assert "not testable" in cs.verdict("A > B", [0.9], [0.1], paired=True)


def test_select_lr_takes_the_best_validation_score_and_refuses_a_small_grid() -> None:
    best, _ = cs.select_lr({1e-4: 0.60, 1e-3: 0.75, 1e-2: 0.81, 1e-1: float("nan")})
    assert best == 1e-2
    tie, _ = cs.select_lr({3e-3: 0.8, 1e-3: 0.8, 1e-2: 0.7, 3e-2: 0.1})
    assert tie == 1e-3
    with pytest.raises(ValueError, match="at least 4"):
        cs.select_lr({1e-3: 0.7, 1e-2: 0.8})
    assert cs.select_lr({1e-3: 0.7, 1e-2: 0.8}, min_grid=2)[0] == 1e-2


def test_table_checks_its_rows() -> None:
    text = cs.table(["a", "b"], [[1, "x"], [2, "y"]])
    assert text.splitlines()[1] == "|---|---|" and text.splitlines()[3] == "| 2 | y |"
    with pytest.raises(ValueError):
        cs.table(["a", "b"], [[1]])


def test_run_cache_resumes_only_runs_of_the_same_settings(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    calls: list[str] = []

    def run(key: str) -> dict[str, float]:
        calls.append(key)
        return {"acc": float(len(calls))}

    first = cs.RunCache(path, {"lr": 1e-3, "seeds": 5})
    assert first.get_or_run("a", lambda: run("a")) == {"acc": 1.0}
    assert first.get_or_run("b", lambda: run("b")) == {"acc": 2.0}
    with path.open("a") as out:
        out.write('{"identity": "cut by a ki')  # a kill mid-write: ignored
    again = cs.RunCache(path, {"seeds": 5, "lr": 1e-3})  # same settings, another order
    assert again.get_or_run("a", lambda: run("a-again")) == {"acc": 1.0}
    other = cs.RunCache(path, {"lr": 3e-3, "seeds": 5})
    assert other.get_or_run("a", lambda: run("a-other")) == {"acc": 3.0}
    assert calls == ["a", "b", "a-other"]
