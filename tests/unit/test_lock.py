"""The workspace lock (issue 19): busy message, waiting, a dead holder taken over, children passing through, the
watchdog, MLflow runs a dead command left RUNNING, the store's creation lock.

    .venv/bin/pytest tests/unit/test_lock.py
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.tracking.runs import LOCK_ENV, RECONCILED_TAG, Owner, TrackingSession, process_start, store_lock
from pipelines.lock import Holder, WorkspaceBusy, acquire, hold, reconcile

REPO = Path(__file__).resolve().parents[2]
MEDTUNE = str(Path(sys.executable).parent / "medtune")

#: A holder in another process: takes the lock (watchdog on), starts `sleep` under it, prints both pids, then waits
#: for a line on stdin ("release" releases and exits; EOF just exits).
HOLDER = """
import subprocess, sys
from pathlib import Path
from pipelines.lock import hold
lock = hold(Path(sys.argv[1]), "medtune run", echo=print)
child = subprocess.Popen(["sleep", "60"])
print("held", lock.holder.pid, child.pid, flush=True)
if sys.stdin.readline().strip() == "release":
    lock.release()
    print("released", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture(autouse=True)
def _no_inherited_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOCK_ENV, raising=False)


class Other:
    """A holder process (see HOLDER)."""

    def __init__(self, state: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop(LOCK_ENV, None)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(state)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        line = self.proc.stdout.readline().split()
        assert line[:1] == ["held"], line
        self.pid, self.child = int(line[1]), int(line[2])

    def release(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("release\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "released"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        with_child = [self.child] if process_start(self.child) else []
        for pid in with_child:
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def other(tmp_path: Path) -> Iterator[Other]:
    holder = Other(tmp_path)
    yield holder
    holder.close()


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not process_start(pid):
            return True
        time.sleep(0.1)
    return False


def test_busy_names_the_holder_in_one_line(tmp_path: Path, other: Other) -> None:
    with pytest.raises(WorkspaceBusy) as e:
        acquire(tmp_path / "lock", "medtune train")
    message = str(e.value)
    assert re.fullmatch(
        rf"workspace busy: medtune run \(pid {other.pid}, since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC\); "
        r"wait for it or pass --wait",
        message,
    ), message
    holder = json.loads((tmp_path / "lock").read_text())
    assert (holder["command"], holder["pid"]) == ("medtune run", other.pid)


def test_a_waiting_command_takes_the_lock_once_it_is_released(tmp_path: Path, other: Other) -> None:
    lines: list[str] = []
    threading.Timer(1.0, other.release).start()
    started = time.monotonic()
    lock = acquire(tmp_path / "lock", "medtune train", wait_s=30, echo=lines.append)
    try:
        assert 0.8 < time.monotonic() - started < 20
        assert lines == [f"waiting up to 30 s for the workspace: {lines[0].split(': ', 1)[1]}"]
        assert f"medtune run (pid {other.pid}" in lines[0]
        assert json.loads((tmp_path / "lock").read_text())["command"] == "medtune train"
        assert lock.took_over is None  # released properly: nobody died
    finally:
        lock.release()
    assert (tmp_path / "lock").read_text() == ""


def test_a_short_wait_still_ends_busy(tmp_path: Path, other: Other) -> None:
    started = time.monotonic()
    with pytest.raises(WorkspaceBusy, match=r"^workspace busy after waiting 1 s: medtune run"):
        acquire(tmp_path / "lock", "medtune train", wait_s=1)
    assert time.monotonic() - started >= 1


def test_a_dead_holder_is_taken_over_once_and_its_processes_stopped(tmp_path: Path, other: Other) -> None:
    dead_pid = other.pid
    other.kill()  # SIGKILL: no release, the file still names it; its watchdog stops its `sleep`
    assert gone_within(other.child, 15), "the watchdog left the dead holder's child running"
    lines: list[str] = []
    lock = hold(tmp_path, "medtune train", echo=lines.append, watchdog=False)
    lock.release()
    assert len(lines) == 1 and re.fullmatch(
        rf"took over the lock of a medtune run \(pid {dead_pid}, since .* UTC\) that died", lines[0]
    ), lines
    again: list[str] = []
    hold(tmp_path, "medtune train", echo=again.append, watchdog=False).release()
    assert again == []


def test_a_child_of_the_holder_passes_through_and_a_stranger_does_not(tmp_path: Path) -> None:
    lock = hold(tmp_path, "medtune run", echo=print, watchdog=False)
    probe = (
        "import sys; from pathlib import Path; from pipelines.lock import acquire, WorkspaceBusy\n"
        "try:\n    print('inherited' if acquire(Path(sys.argv[1]), 'medtune data build').inherited else 'own')\n"
        "except WorkspaceBusy as e:\n    print(e)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        assert os.environ[LOCK_ENV] == lock.holder.token
        assert acquire(tmp_path / "lock", "medtune train").inherited  # a second command in the same process
        child = subprocess.run(
            [sys.executable, "-c", probe, str(tmp_path / "lock")], env=env, capture_output=True, text=True, timeout=60
        )
        assert child.stdout.strip() == "inherited", child.stderr
        stranger = subprocess.run(
            [sys.executable, "-c", probe, str(tmp_path / "lock")],
            env=env | {LOCK_ENV: "not-the-token"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stranger.stdout.startswith("workspace busy: medtune run"), stranger.stderr
    finally:
        lock.release()
    assert LOCK_ENV not in os.environ


def test_owner_tells_a_reused_pid_and_a_dead_process_apart() -> None:
    me = Owner.current()
    assert me.alive() is True
    assert Owner(me.pid, me.host, "1").alive() is False  # same pid, another start time: a reused pid
    done = subprocess.Popen(["true"])
    done.wait()
    assert Owner(done.pid, me.host, "").alive() is False
    assert Owner(me.pid, "another-host", me.start).alive() is None


def test_reconcile_kills_runs_of_dead_processes_and_untagged_ones(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    session = TrackingSession.connect(uri, "retrain", tmp_path / "artifacts")
    dead = subprocess.Popen(["true"])
    dead.wait()
    me = Owner.current()
    crashed = Owner(dead.pid, me.host, "12345", lock="tok")
    holder = Holder("medtune run", dead.pid, me.host, time.time(), "12345", "tok")
    parent = session.client.create_run(session.experiment_id, run_name="retrain", tags=crashed.tags()).info.run_id
    child = session.client.create_run(
        session.experiment_id, run_name="register", tags=crashed.tags() | {"mlflow.parentRunId": parent}
    ).info.run_id
    session.finish(child)  # the register child finished; its parent never did (the report)
    train = session.client.create_run(
        session.experiment_id, run_name="train", tags=crashed.tags() | {"mlflow.parentRunId": parent}
    ).info.run_id
    untagged = session.client.create_run(session.experiment_id, run_name="old").info.run_id
    other = Owner(dead.pid + 1_000_000, me.host, "1")  # a pid that cannot exist: dead, not the lock's holder
    stray = session.client.create_run(session.experiment_id, run_name="stray", tags=other.tags()).info.run_id
    live = session.start_run("live")  # this process's own run: alive, untouched
    remote = session.client.create_run(
        session.experiment_id, run_name="remote", tags=Owner(1, "another-host", "1").tags()
    ).info.run_id

    lines = reconcile(uri, holder)

    assert sorted(lines) == sorted(
        [
            f"marked 2 runs left RUNNING by a dead medtune run (pid {dead.pid}) as KILLED",
            "marked 1 run left RUNNING by an earlier medtune command (no owner recorded) as KILLED",
            f"marked 1 run left RUNNING by a dead process (pid {other.pid}) as KILLED",
        ]
    )
    runs = {r: session.client.get_run(r) for r in (parent, child, train, untagged, stray, live, remote)}
    status = {r: run.info.status for r, run in runs.items()}
    assert [status[r] for r in (parent, train, untagged, stray)] == ["KILLED"] * 4
    assert (status[child], status[live], status[remote]) == ("FINISHED", "RUNNING", "RUNNING")
    assert runs[parent].data.tags[RECONCILED_TAG] == f"medtune run (pid {dead.pid}) died"
    assert RECONCILED_TAG not in runs[child].data.tags
    assert reconcile(uri, None) == []  # nothing left to close
    assert reconcile(f"sqlite:///{tmp_path / 'none.db'}", None) == [] and not (tmp_path / "none.db").exists()


def test_every_run_names_its_owner(tmp_path: Path) -> None:
    session = TrackingSession.connect(f"sqlite:///{tmp_path / 'mlflow.db'}", "x", tmp_path / "artifacts")
    run = session.client.get_run(session.start_run("r"))
    assert Owner.from_tags(run.data.tags) == Owner.current()


def test_the_first_connection_to_a_sqlite_store_waits_for_the_creation_lock(tmp_path: Path) -> None:
    db = tmp_path / "store" / "mlflow.db"
    uri = f"sqlite:///{db}"
    connected = threading.Event()
    with store_lock(uri):  # another process creating the store, as far as the kernel's lock goes

        def connect() -> None:
            TrackingSession.connect(uri, "x")
            connected.set()

        worker = threading.Thread(target=connect)
        worker.start()
        time.sleep(1.5)
        assert not connected.is_set() and not db.exists()
    worker.join(timeout=120)
    assert connected.is_set() and db.exists()
    with open(db.with_name("mlflow.db.lock")) as fh:  # released after creation
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / "configs").mkdir(parents=True)
    (ws / "dvc.yaml").write_text("stages: {}\n")
    (ws / "configs" / "default.yaml").write_text((REPO / "configs" / "default.yaml").read_text())
    return ws


def test_the_cli_exits_2_with_one_line_when_busy_and_readers_take_no_lock(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    other = Other(ws / ".medtune")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDTUNE_", "PREFECT_", "MLFLOW_"))}
        busy = subprocess.run(
            [MEDTUNE, "data", "build", "--wait", "0"], cwd=ws, env=env, capture_output=True, text=True, timeout=120
        )
        assert busy.returncode == 2, busy.stdout + busy.stderr
        assert busy.stdout == ""
        assert re.fullmatch(
            rf"workspace busy: medtune run \(pid {other.pid}, since .* UTC\); wait for it or "
            r"pass --wait\n",
            busy.stderr,
        ), busy.stderr
        show = subprocess.run([MEDTUNE, "config", "show"], cwd=ws, env=env, capture_output=True, text=True, timeout=120)
        assert show.returncode == 0, show.stderr
    finally:
        other.close()


def test_a_scheduled_run_takes_the_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`medtune schedule` holds nothing; each run it starts (a Prefect subprocess, no CLI) takes the lock itself."""
    monkeypatch.setattr(os, "environ", dict(os.environ))  # resolve() sets tool homes for the process: keep them here
    from pipelines.schedule import scheduled_retrain

    assert scheduled_retrain.name == "retrain"
    ws = _workspace(tmp_path)
    other = Other(ws / ".medtune")
    try:
        with pytest.raises(WorkspaceBusy, match=rf"^workspace busy: medtune run \(pid {other.pid}, since "):
            scheduled_retrain.fn(str(ws), str(ws / "configs" / "default.yaml"), [])
    finally:
        other.close()
