"""`medtune run` without a terminal prints progress lines during every long stage (issue 17, item 3 and its
acceptance line: "a progress line at least every 30 s during every training stage", here with a short interval)."""

from __future__ import annotations

import re

import pytest

from tests.integration.conftest import assert_offline, cli_env, medtune

pytestmark = pytest.mark.integration

EVERY = 0.25  # seconds between lines (progress.every_seconds)
SLACK = 1.75  # the heartbeat's poll, a busy machine, a call that holds the GIL (the base's tokenizer training)
#: Smoke size, with each phase longer than the interval; 24 phantom subjects give the vision warm-up its tasks
#: (questions asked of >= 32 train images).
OVERRIDES = [
    f"progress.every_seconds={EVERY}",
    "data.sources.phantom.subjects=24",
    "base.vision_warmup=10",
    "train.stage1.steps=6",
    "train.stage2.steps=6",
    "train.stage3.steps=6",
]
LINE = re.compile(r"^(?P<stage>[a-z_]+): (?P<text>.*), t=(?P<t>\d+\.\d)s$")
#: (stage, phase) of every phase that reports steps, and the unit of the others.
TRAINING = [
    ("base", "vision warm-up"),
    ("base", "training"),
    ("rank_search", ""),
    ("train", "VQ tokenizer"),
    ("train", "stage 1"),
    ("train", "stage 2"),
    ("train", "stage 3"),
]
COUNTED = [("evaluate", "records"), ("safety", "items")]


@pytest.mark.timeout(900)  # ~80 s on an idle 2-core machine
def test_a_non_tty_run_shows_progress_lines_in_every_long_stage(make_workspace, netguard) -> None:
    ws = make_workspace()
    r = medtune(["run", "--config", "configs/smoke.yaml", *OVERRIDES], ws, cli_env(netguard), timeout=900)
    assert r.returncode == 0, r.output
    lines = [(m["stage"], m["text"], float(m["t"])) for m in map(LINE.match, r.stdout.splitlines()) if m]

    for stage, phase in TRAINING:
        label = f"{stage}: {phase} " if phase else f"{stage}: "
        texts = [f"{stage}: {text}" for s, text, _ in lines if s == stage]
        running = [t for t in texts if re.match(rf"{re.escape(label)}\d+/\d+ steps, loss \d+\.\d{{4}}, ", t)]
        assert running, f"no progress line of {label!r} while it ran:\n{r.stdout}"
        assert any(re.search(r"steps/s, ETA \d", t) for t in running), running
        done = [t for t in texts if t.startswith(f"{label}done, ")]
        assert len(done) == 1 and re.search(r"\d+/\d+ steps in \d+ s \(\d+\.?\d* steps/s\), loss ", done[0]), done
    for stage, unit in COUNTED:
        assert any(s == stage and re.fullmatch(rf"done, (\d+)/\1 {unit} in .*", text) for s, text, _ in lines), (
            f"no final line of {stage}:\n{r.stdout}"
        )

    # while a stage runs, no gap between its lines is longer than the interval (plus slack)
    for stage in ("base", "rank_search", "train", "evaluate"):
        stamps = [t for s, _, t in lines if s == stage]
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        assert stamps and max(gaps) <= EVERY + SLACK, (stage, max(gaps), r.stdout)

    assert "resumed from step" not in r.stdout  # a fresh workspace resumes nothing
    assert "Traceback" not in r.stderr and not any(map(LINE.match, r.stderr.splitlines())), r.stderr
    assert_offline(netguard)
