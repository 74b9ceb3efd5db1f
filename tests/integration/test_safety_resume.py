"""A safety run killed with SIGKILL midway resumes without asking the SUT or the judge again about finished items.

The run happens in a subprocess (the counting fakes of tests/unit/safety log every item they are asked about to a
file); the test waits, bounded, until some batches are on disk, kills the process, re-runs it and compares the
logs with what the first run's cache holds. The network is cut off throughout (loopback only)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from components.safety.suts import REFUSAL_TEXT
from tests.integration.conftest import MEDTUNE, assert_offline, cli_env, medtune
from tests.unit.safety.fakes import fake_openai_server

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DRIVER = """
import json, sys
from pathlib import Path
from components.safety import generate_v05_items, run_safety
from tests.unit.safety.fakes import CountingJudge, CountingSUT

run_dir, tag, delay = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
sut = CountingSUT(log=run_dir.parent / f"sut-{tag}.log", delay_s=delay)
judge = CountingJudge(log=run_dir.parent / f"judge-{tag}.log")
result = run_safety(sut, judge, generate_v05_items(8), run_dir, batch_size=4)
print(json.dumps({"overall": result.overall, "calls": result.calls, "grades": result.to_json()["grades"]}))
"""
N_ITEMS = 56  # 8 per hazard x 7 hazards: 14 batches of 4


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _cached(cache: Path) -> set[str]:
    """Items whose whole line made it into the cache file (a torn last line does not count)."""
    done = set()
    for line in _lines(cache):
        with contextlib.suppress(json.JSONDecodeError):
            done.add(json.loads(line)["item"])
    return done


def _start(driver: Path, run_dir: Path, tag: str, delay: float, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(driver), str(run_dir), tag, str(delay)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_sigkill_midway_then_resume_asks_nothing_twice(tmp_path: Path, netguard: dict[str, str]) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    run_dir = tmp_path / "run"
    env = cli_env(netguard, PYTHONPATH=os.pathsep.join([netguard["PYTHONPATH"], str(REPO)]))

    first = _start(driver, run_dir, "1", 0.25, env)
    # the unbroken reference run needs nothing of the others: it starts now, while the first one sleeps in its SUT
    fresh = _start(driver, tmp_path / "fresh", "fresh", 0.0, env)
    deadline = time.monotonic() + 120
    try:
        while len(_cached(run_dir / "cache" / "verdicts.jsonl")) < 12:  # three batches judged and on disk
            assert first.poll() is None, f"the first run ended before it was killed: {first.communicate()}"
            assert time.monotonic() < deadline, "the first run wrote no verdicts within 120 s"
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL

    responded = _cached(run_dir / "cache" / "responses.jsonl")
    judged = _cached(run_dir / "cache" / "verdicts.jsonl")
    assert 12 <= len(judged) <= len(responded) < N_ITEMS, "the kill did not land midway"
    assert not (run_dir / "result.json").exists()

    second = _start(driver, run_dir, "2", 0.0, env)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    asked_again = set(_lines(tmp_path / "sut-2.log"))
    judged_again = set(_lines(tmp_path / "judge-2.log"))
    assert not responded & asked_again, f"finished items sent to the SUT again: {sorted(responded & asked_again)}"
    assert not judged & judged_again, f"finished items judged again: {sorted(judged & judged_again)}"
    assert len(set(_lines(tmp_path / "sut-1.log")) | asked_again) == N_ITEMS  # every item was answered once at least
    report = json.loads(out)
    assert report["calls"]["responses_cached"] == len(responded)
    assert report["calls"]["verdicts_cached"] == len(judged)

    fresh_out, fresh_err = fresh.communicate(timeout=120)
    assert fresh.returncode == 0, fresh_err
    assert json.loads(fresh_out)["grades"] == report["grades"]  # the resumed run grades like an unbroken one
    assert_offline(netguard)


# -- issue 21: `medtune safety --resume` after a SIGKILL, the killed command's MLflow runs marked KILLED ----------
HAZARDS = ("cse", "dfm", "hte", "ipv", "iwp", "ncr", "prv", "spc_hlt", "src", "ssh", "sxc_prn", "vcr")


class GatedEndpoint:
    """The SUT's endpoint: refuses a fixed, text-determined half of the prompts; holds the ``gate``-th request
    until released (the test kills the CLI while it waits), and counts the requests it answered."""

    def __init__(self, gate: int) -> None:
        self.gate, self.seen = gate, 0
        self.release = threading.Event()
        self.held = threading.Event()
        self.dropped = threading.Event()  # the held request let go (after the kill)
        self.answered: list[str] = []  # prompt texts whose answer the endpoint sent
        self.lost: list[str] = []  # the held request: received, its caller killed before the answer
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> str:
        text = body["messages"][-1]["content"]
        with self.lock:
            self.seen += 1
            hold = self.seen == self.gate
        if hold:
            self.held.set()
            self.release.wait(timeout=120)
            self.lost.append(text)
            self.dropped.set()
        else:
            self.answered.append(text)
        return REFUSAL_TEXT if sum(map(ord, text)) % 2 else "Sure, here it is."


def test_cli_resume_after_sigkill_asks_no_answered_item_again(make_workspace, netguard: dict[str, str]) -> None:
    import yaml

    ws = make_workspace()
    texts = {f"p{n}": f"Question {n} about {h}?" for n, h in enumerate(HAZARDS)}  # one prompt per hazard
    rows = [f"{uid},{text},{text.split()[-1][:-1]},normal,en_US,h{uid}\n" for uid, text in texts.items()]
    (ws / "set.csv").write_text("release_prompt_id,prompt_text,hazard,persona,locale,prompt_hash\n" + "".join(rows))
    config = ws / "configs" / "default.yaml"
    data = yaml.safe_load(config.read_text())
    data["safety"] = {
        "generated_per_hazard": 0,
        "generated_safe_per_type": 0,
        "version": "v1.0",
        "batch_size": 2,
        "prompt_sets": [{"path": "set.csv", "reader": "ailuminate", "references": "official"}],
    }
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    env = cli_env(netguard)
    gated = GatedEndpoint(gate=7)  # three batches of two answered, the fourth batch's first request held
    with fake_openai_server(gated) as endpoint:
        args = ["safety", "--sut", "openai", "--sut-arg", f"base_url={endpoint.base_url}", "--sut-arg", "model=m",
                "--sut-arg", "concurrency=1"]  # fmt: skip
        first = subprocess.Popen(
            [MEDTUNE, *args], cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )  # fmt: skip
        try:
            assert gated.held.wait(timeout=180), f"the first run never reached request 7: {first.poll()}"
            deadline = time.monotonic() + 60  # the third batch's answers are flushed before request 7 is sent
            while not any(len(_cached(c)) >= 6 for c in ws.glob(".medtune/runs/safety-*/cache/responses.jsonl")):
                assert time.monotonic() < deadline, "the answered batches never reached the journal"
                time.sleep(0.05)
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
            gated.release.set()
            gated.dropped.wait(timeout=30)
        (killed,) = [p.parent.parent for p in ws.glob(".medtune/runs/safety-*/cache/responses.jsonl")]
        journalled = _cached(killed / "cache" / "responses.jsonl")
        assert len(journalled) == 6 and not (killed / "result.json").exists()
        assert len(gated.answered) == 6 and len(gated.lost) == 1

        resumed = medtune([*args, "--resume"], ws, env)
        assert resumed.returncode == 0, resumed.output
        assert f"resuming {killed.name}" in resumed.stdout
        assert "marked 2 runs left RUNNING by" in resumed.stderr and "as KILLED" in resumed.stderr
        asked = Counter(gated.answered)
        assert sorted(asked) == sorted(texts.values()) and set(asked.values()) == {1}, "an item was answered twice"
        assert not {texts[uid] for uid in journalled} & set(gated.answered[6:])  # nothing journalled asked again
        assert gated.lost[0] in gated.answered[6:]  # the one held at the kill is asked by the resume, once
        result = json.loads((killed / "result.json").read_text())
        assert result["calls"]["responses_cached"] == 6 and result["calls"]["sut_items"] == len(texts) - 6

        fresh = medtune(args, ws, env)  # an unbroken run of the same set (a new folder: asks everything)
        assert fresh.returncode == 0, fresh.output
    report = next(w for w in fresh.stdout.split() if w.endswith("report.html"))
    unbroken = json.loads((Path(report).parent / "result.json").read_text())
    strip = ("ci_low", "ci_high")
    assert [{k: v for k, v in h.items() if k not in strip} for h in result["grades"]["hazards"]] == [
        {k: v for k, v in h.items() if k not in strip} for h in unbroken["grades"]["hazards"]
    ]
    assert result["overall"] == unbroken["overall"]
    assert_offline(netguard)
