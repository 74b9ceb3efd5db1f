"""Scheduled retraining on one machine: a real Prefect server on 127.0.0.1 plus a runner serving ``retrain``.

    medtune schedule --cron "0 2 * * *"               # nightly at 02:00 UTC, until Ctrl-C
    medtune schedule --cron "*/30 * * * *" --force     # every 30 min, even when the data did not change
    PREFECT_API_URL=http://prefect.internal:4200/api medtune schedule --cron "0 2 * * *"   # a shared server

Prefect's temporary server refuses schedules ("Cannot schedule flows on an ephemeral server", STACK.md 2a), so
unless ``PREFECT_API_URL`` points at a server, this starts ``prefect server start --host 127.0.0.1`` with its home
(SQLite database) in the state folder, waits (bounded) for ``/api/health``, serves the flow with the cron schedule
(``Flow.serve``: the deployment and its runner live in this process; each run is a subprocess) and stops the server
on the way out, whichever way that is (Ctrl-C, SIGTERM, an error). The server runs in its own process group so
that it is stopped by this process, after the runner, not raced by the terminal's Ctrl-C.

Each scheduled run is :func:`scheduled_retrain`: the ``retrain`` flow under the workspace lock (pipelines/lock.py,
issue 19), taken in the run's own process, so a run never writes beside ``medtune run`` or another command; a run
finding the workspace busy waits ``runtime.lock_wait_s`` and then fails with the holder's name. ``medtune schedule``
itself holds nothing while it waits for the next run.

``medtune watch`` (pipelines/watch.py) serves the same flow as a second deployment and starts it on new data.

A scheduled run passes ``skip_unchanged=True`` (unless ``--force``): it exits after the data stage when the data
version equals the one the current champion was trained on (see :func:`pipelines.retrain.run_stages`). For a team,
``infra/prefect.yaml`` deploys the same flow to a work pool instead (``prefect deploy``); see infra/README.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow

from components.runtime import EPHEMERAL_ONLY_OFF
from pipelines.cli_common import RUN_LOGGERS, flow_log_file, route_flow_logs
from pipelines.context import Context, resolve
from pipelines.lock import hold_context
from pipelines.retrain import retrain

DEPLOYMENT = "scheduled"
HEALTH_TIMEOUT_S = 120.0


class ScheduleError(Exception):
    """The Prefect server could not be started or did not become healthy in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=5) as r:
            return r.status == 200 and r.read().strip() == b"true"
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 30) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace_s)


@contextmanager
def prefect_server(
    home: Path, *, port: int = 0, timeout_s: float = HEALTH_TIMEOUT_S, log: Path | None = None
) -> Iterator[str]:
    """A ``prefect server start`` on 127.0.0.1 for the duration of the block; yields its API URL.

    The server's output goes to ``log`` (default ``<home>/server.log``); a server that exits or does not answer
    ``/api/health`` within ``timeout_s`` raises :class:`ScheduleError` quoting the end of that log.
    """
    port = port or free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    home.mkdir(parents=True, exist_ok=True)
    log = log or home / "server.log"
    # a real server: its scheduler and the other loop services run (medtune turns them off for temporary servers)
    env = {k: v for k, v in os.environ.items() if k not in EPHEMERAL_ONLY_OFF}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    # the UI asks /ui-settings where its API is: without these it says port 4200 ("Can't connect to Server API")
    env |= {"PREFECT_SERVER_API_PORT": str(port), "PREFECT_UI_API_URL": api_url}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not healthy(api_url):
            if proc.poll() is not None:
                raise ScheduleError(f"prefect server exited with {proc.returncode}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise ScheduleError(f"prefect server on {api_url} not healthy after {timeout_s:.0f} s:\n{_tail(log)}")
            time.sleep(0.5)
        yield api_url
    finally:
        _stop(proc)


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def check_cron(cron: str) -> None:
    """Raise ValueError (saying what is wrong) unless ``cron`` is a cron string Prefect accepts."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron, timezone="UTC")
    except ValidationError as e:
        raise ValueError(str(e.errors()[0]["msg"]).removeprefix("Value error, ")) from None


def serve_retrain(
    ctx: Context,
    api_url: str,
    *,
    cron: str,
    overrides: list[str],
    force: bool,
    name: str = DEPLOYMENT,
    echo: Callable[[str], None],
) -> None:
    """Serve ``retrain`` on the cron schedule against the Prefect API at ``api_url`` until interrupted.
    Scheduled runs skip work on unchanged data unless ``force``."""
    os.environ["PREFECT_API_URL"] = api_url  # for the runs' subprocesses; this process gets temporary_settings
    from prefect.deployments.runner import EntrypointType
    from prefect.runner import Runner
    from prefect.settings import PREFECT_API_URL, temporary_settings

    parameters: dict[str, Any] = {
        "workspace": str(ctx.workspace),
        "config": str(ctx.config_path),
        "overrides": list(overrides),
        "skip_unchanged": not force,
    }
    echo(f"serving retrain/{name} on cron '{cron}' (UTC) via {api_url}; Ctrl-C stops")
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        # Flow.serve, spelled out: its SIGTERM handler (Prefect 3.7) calls the async stop() without awaiting it and
        # the process then hangs at exit, so SIGTERM takes Ctrl-C's path here (runs stopped, schedule paused).
        runner = Runner(name=name, pause_on_shutdown=True)
        runner.handle_sigterm = _interrupt  # type: ignore[method-assign]
        # A module entrypoint: each run is a subprocess importing pipelines.retrain, whatever the working folder.
        runner.add_flow(
            scheduled_retrain,
            name=name,
            cron=cron,
            parameters=parameters,
            tags=["medtune", "scheduled"],
            description="medtune retrain on a schedule (medtune schedule)",
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        try:
            asyncio.run(runner.start())
        except KeyboardInterrupt:
            echo("stopping the schedule ...")


@flow(name="retrain", validate_parameters=False)
def scheduled_retrain(
    workspace: str,
    config: str,
    overrides: list[str],
    skip_unchanged: bool = False,
    lock_wait_s: float | None = None,
    started_by: str = "medtune schedule (a scheduled retrain)",
) -> dict[str, Any]:
    """``retrain`` as a scheduled run starts it: holding the workspace (its process is not a medtune command, so
    nothing took the lock before the flow), waiting ``lock_wait_s`` for it (None: ``runtime.lock_wait_s``).
    ``started_by`` names the run in the lock file (what a busy command shows): the cron, or ``medtune watch``."""
    ctx = resolve(Path(config), overrides, workspace=Path(workspace))
    lock = hold_context(ctx, started_by, wait_s=lock_wait_s, echo=_say)
    _engine_errors_to_log(flow_log_file(ctx.state))
    try:
        return retrain.fn(workspace, config, overrides, skip_unchanged)
    finally:
        lock.release()


class _NoEngineErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.name == "prefect.engine")


def _engine_errors_to_log(log_file: Path) -> None:
    """A failed run's engine (the run's own process, after the flow) logs the failure again, traceback and all
    ("exited with unexpected exception"), through the console of ``medtune schedule``/``watch``: send it to the
    flow log (cli_common.route_flow_logs) instead. The one-line reason is already on the console (retrain's
    message, the watcher's "ended Failed (...)")."""
    route_flow_logs(log_file)
    engine = logging.getLogger("prefect.engine")
    for handler in logging.getLogger(RUN_LOGGERS[0]).handlers:
        if isinstance(handler, logging.FileHandler) and handler not in engine.handlers:
            engine.addHandler(handler)
    consoles = [h for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]  # fmt: skip
    for handler in consoles:
        if not any(isinstance(f, _NoEngineErrors) for f in handler.filters):
            handler.addFilter(_NoEngineErrors())


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt
