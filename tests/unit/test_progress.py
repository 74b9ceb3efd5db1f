"""Progress lines (issue 17, item 3): the throttle on a fake clock, the heartbeat, and the setting that keys nothing.
Run::

    .venv/bin/pytest tests/unit/test_progress.py
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from components.config import config_hash, load_config
from pipelines.context import Context
from pipelines.progress import ProgressLog, stage_progress
from pipelines.stages import RANK_SEARCH_KEY, TRAIN_KEY, _section_hash

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(every: float = 10.0, *, periodic: bool = True) -> tuple[ProgressLog, Clock, list[str]]:
    clock, lines = Clock(), []
    return ProgressLog("train", lines.append, every_seconds=every, periodic=periodic, clock=clock), clock, lines


def test_a_line_every_n_seconds_while_steps_come_and_a_final_line() -> None:
    log, clock, lines = make(every=10)
    step = log.phase("stage 1")
    step(0, 100, None)  # the start announcement writes nothing
    for k in range(1, 101):
        clock.now = float(k)
        step(k, 100, 1.0 / k)
    assert len(lines) == 10  # t = 10, 20, ..., 90, and the final line at 100
    assert lines[0] == "train: stage 1 10/100 steps, loss 0.1000, 1.00 steps/s, ETA 1m 30s, t=10.0s"
    assert [line.rsplit("t=", 1)[1] for line in lines[:9]] == [f"{10.0 * k:.1f}s" for k in range(1, 10)]
    assert lines[-1] == "train: stage 1 done, 100/100 steps in 1m 40s (1.00 steps/s), loss 0.0100, t=100.0s"


def test_the_heartbeat_repeats_a_stalled_step_and_the_gap_between_phases() -> None:
    log, clock, lines = make(every=10)
    step = log.phase("", unit="records")
    step(0, 40, None)
    clock.now = 9.9
    log.tick()
    assert lines == []  # not due yet
    clock.now = 10.0
    log.tick()
    assert lines == ["train: 0/40 records, waiting 10 s for the first batch, t=10.0s"]
    clock.now = 12.0
    step(8, 40, None)  # 2 s after the line: nothing
    clock.now = 30.0
    log.tick()
    assert lines[-1] == "train: 8/40 records, 0.27 records/s, ETA 2m 00s, 18 s since the last batch, t=30.0s"
    clock.now = 31.0
    step(40, 40, None)
    assert lines[-1] == "train: done, 40/40 records in 31 s (1.29 records/s), t=31.0s"
    clock.now = 45.0
    log.tick()
    assert lines[-1] == "train: working, 14 s since the last batch, t=45.0s"
    assert len(lines) == 4


def test_a_resumed_phase_says_so_once_and_counts_its_rate_from_there() -> None:
    log, clock, lines = make(every=10)
    log.named("stage 3", 40, 100, None)
    assert lines == ["train: stage 3 resumed from step 40/100, t=0.0s"]
    for k in range(41, 101):
        clock.now = float(k - 40) / 2  # 2 steps/s
        log.named("stage 3", k, 100, 0.5)
    assert sum("resumed" in line for line in lines) == 1
    assert lines[-1] == (
        "train: stage 3 done, 100/100 steps (60 since the resume) in 30 s (2.00 steps/s), loss 0.5000, t=30.0s"
    )


def test_a_phase_that_does_not_announce_starts_at_its_first_step() -> None:
    """train_vq reports (step, total, loss) from step 1 on: no resume line, the rate counts from the first call."""
    log, clock, lines = make(every=10)
    vq = log.phase("VQ tokenizer")
    clock.now = 1.0
    vq(1, 21, 0.3)
    clock.now = 11.0
    vq(21, 21, 0.1)
    assert lines == ["train: VQ tokenizer done, 21/21 steps in 10 s (2.00 steps/s), loss 0.1000, t=11.0s"]


def test_on_a_terminal_only_resumed_and_final_lines_are_written() -> None:
    log, clock, lines = make(every=1, periodic=False)
    step = log.phase("vision warm-up")
    step(0, 10, None)
    for k in range(1, 10):
        clock.now = float(k) * 5
        step(k, 10, 0.2)
        log.tick()
    assert lines == []
    assert log.status() == "train: vision warm-up 9/10 steps, loss 0.2000, 0.20 steps/s, ETA 5 s"
    assert log.fraction() == pytest.approx(0.9)
    clock.now = 50.0
    step(10, 10, 0.1)
    assert lines == ["train: vision warm-up done, 10/10 steps in 50 s (0.20 steps/s), loss 0.1000, t=50.0s"]
    assert log.fraction() is None


def test_a_phase_resumed_at_its_end_an_empty_one_and_resumed_items() -> None:
    log, _, lines = make()
    log.phase("vision warm-up")(2000, 2000, None)  # the saved warm-up was loaded
    log.phase("stage 1")(0, 0, None)  # a stage of 0 steps: nothing to say
    log.phase("", unit="items")(40, 120, None)  # a safety run's journal had 40 items graded
    assert lines == [
        "train: vision warm-up resumed from step 2000/2000 (finished before), t=0.0s",
        "train: resumed from 40/120 items, t=0.0s",
    ]


def test_stage_progress_keeps_lines_coming_without_steps() -> None:
    lines: list[str] = []
    with stage_progress("safety", lines.append, every_seconds=0.05, live=False) as log:
        log.phase(unit="items")(0, 10, None)
        time.sleep(0.4)
    assert len(lines) >= 3 and all(line.startswith("safety: 0/10 items, waiting") for line in lines), lines
    count = len(lines)
    time.sleep(0.2)
    assert len(lines) == count  # the heartbeat stops with the stage
    quiet: list[str] = []
    with stage_progress("safety", quiet.append, every_seconds=0.05, live=False, enabled=False):
        time.sleep(0.2)
    assert quiet == []


def test_every_seconds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="every_seconds"):
        ProgressLog("base", print, every_seconds=0)


def test_progress_every_seconds_keys_no_work_folder(tmp_path: Path) -> None:
    """Changing how often progress is printed re-trains nothing: it is in no section that keys a work folder."""
    smoke = REPO / "configs" / "smoke.yaml"

    def ctx(*overrides: str) -> Context:
        return Context(tmp_path, None, load_config(smoke, list(overrides)), smoke)  # type: ignore[arg-type]

    a, b = ctx(), ctx("progress.every_seconds=2.5")
    assert config_hash(a.config) != config_hash(b.config)  # the setting is there ...
    for sections in (RANK_SEARCH_KEY, TRAIN_KEY, ("model",)):  # ... and keys nothing
        assert _section_hash(a, *sections, data_version="v") == _section_hash(b, *sections, data_version="v")
    assert _section_hash(a, *TRAIN_KEY) != _section_hash(ctx("train.batch_size=3"), *TRAIN_KEY)
