"""One writer per workspace (issue 19), as users met it: two `medtune run` started together in a fresh workspace
(before: both failed on MLflow's migrations and left the store unusable), and a `medtune run` killed with SIGKILL
(before: its Prefect server stayed, its runs stayed RUNNING). The network is cut off throughout.

    .venv/bin/pytest -m integration tests/integration/test_concurrency.py
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import MEDTUNE, Result, assert_offline, cli_env, git_commit_all, medtune

pytestmark = pytest.mark.integration

SMOKE = ["run", "-c", "configs/smoke.yaml"]
BUSY = re.compile(r"workspace busy: medtune run \(pid (\d+), since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\); "
                  r"wait for it or pass --wait")  # fmt: skip


def start(args: list[str], ws: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [MEDTUNE, *args], cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout: float = 900) -> Result:
    out, err = proc.communicate(timeout=timeout)
    return Result(proc.returncode, out, err)


@dataclass
class Together:
    ws: Path
    env: dict[str, str]
    first: Result  # the run that took the workspace
    busy: Result  # the one started with it
    waited: Result  # a third, started later with --wait


@pytest.fixture(scope="module")
def together(tmp_path_factory: pytest.TempPathFactory, netguard: dict[str, str]) -> Iterator[Together]:
    """A fresh workspace; two smoke runs at the same moment; a third with --wait while the first still runs."""
    env = cli_env(netguard)
    ws = tmp_path_factory.mktemp("concurrency") / "ws"
    assert medtune(["init", str(ws)], ws.parent, env).returncode == 0
    git_commit_all(ws)
    a, b = start(SMOKE, ws, env), start(SMOKE, ws, env)
    deadline = time.monotonic() + 300
    while a.poll() is None and b.poll() is None:  # the loser exits within seconds
        assert time.monotonic() < deadline, "neither run exited: the second did not find the workspace busy"
        time.sleep(0.2)
    loser, winner = (a, b) if a.poll() is not None else (b, a)
    busy = finish(loser, 60)
    assert winner.poll() is None, "the winner ended first: nothing was left to wait for"
    waiting = start([*SMOKE, "--wait", "900"], ws, env)
    first = finish(winner)
    yield Together(ws, env, first, busy, finish(waiting))


@pytest.mark.timeout(1800)
def test_two_runs_at_once_one_is_busy_the_store_survives_and_a_waiting_run_succeeds(
    together: Together, netguard: dict[str, str]
) -> None:
    assert together.busy.returncode == 2, together.busy.output
    assert together.busy.stdout == "" and BUSY.fullmatch(together.busy.stderr.strip()), together.busy.stderr
    assert "Traceback" not in together.first.output + together.waited.output
    assert together.first.returncode == 0, together.first.output
    assert together.waited.returncode == 0, together.waited.output
    assert "waiting up to 900 s for the workspace: medtune run (pid " in together.waited.stderr
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{together.ws / '.medtune' / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("retrain")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.`medtune.flow` = 'retrain'")
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert len({r.data.tags["medtune.pid"] for r in runs}) == 2
    assert_offline(netguard)


def group(pgid: int) -> dict[int, str]:
    """The processes of a process group: pid -> command line."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    found[int(entry)] = Path(f"/proc/{entry}/cmdline").read_text().replace("\0", " ")
            except (OSError, ValueError):
                continue
    return found


@pytest.mark.timeout(900)
def test_sigkill_leaves_no_prefect_server_and_the_next_command_closes_its_runs(
    together: Together, netguard: dict[str, str]
) -> None:
    ws, env = together.ws, together.env
    log = ws.parent / "killed.log"
    with open(log, "w") as fh:
        run = subprocess.Popen([MEDTUNE, *SMOKE], cwd=ws, env=env, stdout=fh, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    # its Prefect server up and the parent MLflow run open (validate is the second stage; DVC re-uses both here)
    while not (any("uvicorn" in cmd for cmd in group(run.pid).values()) and "validate:" in log.read_text()):
        assert run.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    assert len(group(run.pid)) > 1
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    deadline = time.monotonic() + 15
    left: dict[int, str] = {}
    while time.monotonic() < deadline:
        try:
            os.killpg(run.pid, 0)
        except ProcessLookupError:
            break
        left = group(run.pid)
        time.sleep(0.2)
    else:
        raise AssertionError(f"still running 15 s after SIGKILL of medtune run: {left}")

    after = medtune(["data", "build", "-c", "configs/smoke.yaml", "--no-progress"], ws, env, timeout=300)
    assert after.returncode == 0, after.output
    lines = after.stderr.splitlines()
    assert re.fullmatch(rf"took over the lock of a medtune run \(pid {run.pid}, since .* UTC\) that died", lines[0])
    assert re.fullmatch(rf"marked \d+ runs? left RUNNING by a dead medtune run \(pid {run.pid}\) as KILLED", lines[1])
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{ws / '.medtune' / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("retrain")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], f"tags.`medtune.pid` = '{run.pid}'")
    assert runs and "RUNNING" not in {r.info.status for r in runs}, [(r.info.run_name, r.info.status) for r in runs]
    (parent,) = [r for r in runs if r.info.run_name == "retrain"]
    assert parent.info.status == "KILLED"
    assert parent.data.tags["medtune.reconciled"] == f"medtune run (pid {run.pid}) died"
    assert_offline(netguard)
