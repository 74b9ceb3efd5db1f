"""One writer per workspace (issue 19): an exclusive lock file in the state folder, ``<state>/lock``.

    lock = hold(state, "medtune run", wait_s=0, echo=print, tracking_uri=uri)   # raises WorkspaceBusy
    ...                                                                         # the command's work
    lock.release()                                                              # or the process exits

The lock is the kernel's (``fcntl.flock`` on an open file): it goes when the process dies, however it dies, so a
dead holder never blocks anyone. The file holds its holder as JSON (command, pid, host, start time, a token) for the
busy message, and is emptied on release: a file still naming a holder when the lock was free means the holder died.
Whoever takes the lock then (``hold``):

1. says once that it took over the lock of the dead command, and stops processes that command left behind (they
   carry its token in their environment: the Prefect server, DVC and the stage commands DVC ran);
2. closes the MLflow runs left RUNNING by dead processes as KILLED (:func:`components.tracking.runs.stale_runs`);
3. starts a watchdog: a small process that, when this command's process dies (SIGKILL included), stops every
   process carrying its token, so Prefect's temporary server never outlives it.

Child processes inherit ``MEDTUNE_LOCK_HELD=<token>``: a medtune command started under a holder (DVC's ``medtune
data build --no-ingest``) finds its token in the lock file and goes on without locking. The watchdog runs as
``python -m pipelines.lock PARENT_PID TOKEN``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

from components.tracking.runs import LOCK_ENV, Owner, process_start

if TYPE_CHECKING:
    from pipelines.context import Context

Echo = Callable[[str], None]
POLL_S = 0.2  # how often a waiting command tries the lock again
WATCH_S = 0.5  # how often the watchdog looks at its parent
STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long


@dataclass(frozen=True)
class Holder:
    """What the lock file says about its holder."""

    command: str
    pid: int
    host: str
    since: float  # epoch seconds
    start: str  # the process's kernel start time (components.tracking.runs.process_start)
    token: str

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        where = "" if self.host == socket.gethostname() else f" on {self.host}"
        return f"{self.command} (pid {self.pid}{where}, since {since})"

    def alive(self) -> bool | None:
        return Owner(self.pid, self.host, self.start).alive()


class WorkspaceBusy(Exception):
    """Another command holds the workspace; the message is the one line the user sees."""

    def __init__(self, holder: Holder | None, waited_s: float) -> None:
        self.holder = holder
        who = holder.describe() if holder else "another medtune command"
        if holder is not None and holder.alive() is False:  # its children still hold the inherited lock
            who = f"processes left by {who}, which died"
        waited = f" after waiting {waited_s:.0f} s" if waited_s >= 1 else ""
        super().__init__(f"workspace busy{waited}: {who}; wait for it or pass --wait")


@dataclass
class WorkspaceLock:
    """A held workspace (or one held by an ancestor process: ``inherited``)."""

    path: Path
    holder: Holder
    inherited: bool = False
    took_over: Holder | None = None  # the dead holder whose lock this replaced
    _fh: IO[str] | None = None
    _watchdog: subprocess.Popen[bytes] | None = None

    def release(self) -> None:
        """Empty the file and unlock (idempotent). The watchdog stays until this process exits: it then stops
        whatever the command left running (Prefect stops its server at exit)."""
        fh, self._fh = self._fh, None
        if fh is None:
            return
        import fcntl

        with contextlib.suppress(OSError):
            os.ftruncate(fh.fileno(), 0)
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()
        if os.environ.get(LOCK_ENV) == self.holder.token:
            del os.environ[LOCK_ENV]


def read_holder(path: Path) -> Holder | None:
    try:
        data = json.loads(path.read_text())
        return Holder(**data)
    except (OSError, ValueError, TypeError):  # missing, empty (released), half written
        return None


def acquire(path: Path, command: str, *, wait_s: float = 0, echo: Echo | None = None) -> WorkspaceLock:
    """Take the lock at ``path`` for ``command``, waiting up to ``wait_s`` seconds; raises :class:`WorkspaceBusy`.
    Under an ancestor holding it (its token in ``MEDTUNE_LOCK_HELD``) returns an ``inherited`` lock at once."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")  # noqa: SIM115 - held open until release (or exit): the open file is the lock
    started = time.monotonic()
    told = False
    while True:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = read_holder(path)
            token = os.environ.get(LOCK_ENV)
            if token and holder is not None and holder.token == token:
                fh.close()
                return WorkspaceLock(path, holder, inherited=True)
            waited = time.monotonic() - started
            if waited >= wait_s:
                fh.close()
                raise WorkspaceBusy(holder, wait_s) from None
            if echo is not None and not told:
                who = holder.describe() if holder else "another medtune command"
                echo(f"waiting up to {wait_s:.0f} s for the workspace: {who} holds it")
                told = True
            time.sleep(min(POLL_S, max(0.0, wait_s - waited)))
    previous = read_holder(path)  # a holder that never released: it died (the kernel freed its lock)
    pid = os.getpid()
    holder = Holder(command, pid, socket.gethostname(), time.time(), process_start(pid), uuid.uuid4().hex)
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps(asdict(holder)) + "\n")
    fh.flush()
    os.environ[LOCK_ENV] = holder.token  # children inherit it (and honour it: see above)
    return WorkspaceLock(path, holder, took_over=previous, _fh=fh)


def hold(
    state_root: Path,
    command: str,
    *,
    wait_s: float = 0,
    echo: Echo,
    tracking_uri: str | None = None,
    watchdog: bool = True,
) -> WorkspaceLock:
    """Take the workspace for ``command`` and clean up after a dead predecessor (see the module docstring).
    ``tracking_uri``: the workspace's own SQLite store, whose runs are reconciled (another store may be shared by
    other workspaces: its runs are left alone). Raises :class:`WorkspaceBusy`."""
    lock = acquire(state_root / "lock", command, wait_s=wait_s, echo=echo)
    if lock.inherited:
        return lock
    dead = lock.took_over
    if dead is not None:
        echo(f"took over the lock of a {dead.describe()} that died")
        stopped = stop_processes(dead.token)
        if stopped:
            echo(f"stopped {len(stopped)} process(es) it left running (pids {', '.join(map(str, stopped))})")
    if tracking_uri is not None:
        try:
            lines = reconcile(tracking_uri, dead)
        except Exception as e:  # a store MLflow cannot open: the command's own use of it reports that
            lines = [f"could not look for runs left RUNNING in {tracking_uri}: {str(e).splitlines()[0][:200]}"]
        for line in lines:
            echo(line)
    if watchdog:
        lock._watchdog = start_watchdog(lock.holder.token)
    return lock


def hold_context(ctx: Context, command: str, *, wait_s: float | None = None, echo: Echo) -> WorkspaceLock:
    """:func:`hold` for a command's context: its state folder, ``runtime.lock_wait_s`` unless ``wait_s`` is given,
    and its MLflow store reconciled when that is the workspace's own."""
    own = ctx.tracking_uri if ctx.tracking_uri == ctx.state.mlflow_uri else None
    wait = ctx.config.runtime.lock_wait_s if wait_s is None else wait_s
    return hold(ctx.state.root, command, wait_s=wait, echo=echo, tracking_uri=own)


def reconcile(uri: str, dead: Holder | None) -> list[str]:
    """Close the store's runs left RUNNING by dead processes (KILLED, tagged ``medtune.reconciled``); one line
    per owner. A store not created yet has nothing to close (and is not created here)."""
    db = uri.removeprefix("sqlite:///")
    if not uri.startswith("sqlite:///") or not Path(db).exists():
        return []
    from components.tracking.runs import StaleRun, mark_killed, stale_runs

    groups: dict[str, tuple[str, str, list[StaleRun]]] = {}  # owner -> (who, why, runs)
    for run in stale_runs(uri):
        owner = run.owner
        if owner is None:
            who, why = "an earlier medtune command (no owner recorded)", "RUNNING, no owner, workspace not held"
        elif dead is not None and owner.lock == dead.token:
            who, why = f"a dead {dead.command} (pid {dead.pid})", f"{dead.command} (pid {dead.pid}) died"
        else:
            who, why = f"a dead process (pid {owner.pid})", f"process {owner.pid} on {owner.host} died"
        groups.setdefault(who, (who, why, []))[2].append(run)
    lines = []
    for who, why, runs in groups.values():
        mark_killed(uri, runs, why)
        lines.append(f"marked {len(runs)} run{'s' if len(runs) != 1 else ''} left RUNNING by {who} as KILLED")
    return lines


# -- processes that must not outlive the command ----------------------------------------------------------------


def carrying(token: str) -> list[int]:
    """Processes whose environment holds ``MEDTUNE_LOCK_HELD=<token>`` (Linux /proc; [] elsewhere)."""
    needle = f"{LOCK_ENV}={token}".encode()
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry))
    return found


def stop_processes(token: str, grace_s: float = STOP_GRACE_S) -> list[int]:
    """SIGTERM every process carrying ``token``, SIGKILL those still there after ``grace_s``; returns their pids."""
    pids = carrying(token)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(process_start(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if process_start(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    return pids


def start_watchdog(token: str) -> subprocess.Popen[bytes] | None:
    """The watchdog of this process (see the module docstring); in its own session so that a terminal's Ctrl-C or
    a kill of the command's process group does not take it before it has cleaned up. None where there is no /proc."""
    if not os.path.isdir("/proc"):
        return None
    env = {k: v for k, v in os.environ.items() if k != LOCK_ENV}  # it must not find itself
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.lock", str(os.getpid()), token],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def watch(parent: int, token: str) -> None:
    """Wait for ``parent`` to die (it is re-parented then), then stop what carries its token."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while os.getppid() == parent:
        time.sleep(WATCH_S)
    stop_processes(token)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
