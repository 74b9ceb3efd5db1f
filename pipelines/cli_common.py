"""What every ``medtune`` command shares: the consoles, the config option and overrides, exit-code helpers, the
workspace lock of the commands that write (:data:`WRITERS`, issue 19), the standalone command's parent MLflow run,
rich progress bars (see :mod:`pipelines.cli`), and where the flows' logs go (:func:`route_flow_logs`)."""

from __future__ import annotations

import dataclasses
import logging
import logging.handlers
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from components.config import ConfigError
from components.runtime import StatePaths, WorkspaceError

console = Console(stderr=False, highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="Config YAML (default: configs/default.yaml of the workspace).")
]
Overrides = Annotated[
    list[str] | None, typer.Argument(help="Dotted overrides, e.g. data.workers=2 data.sources.phantom.subjects=8.")
]
WaitOpt = Annotated[
    float | None,
    typer.Option(
        "--wait",
        min=0,
        help="Seconds to wait while another command holds the workspace (default: runtime.lock_wait_s, 0).",
    ),
]

#: The commands that write the workspace (data, models, MLflow runs, the registry): each holds ``<state>/lock``
#: from :func:`load_context` to its end (pipelines/lock.py). The others (config show, ui, report, data validate
#: ...) only read and take no lock. ``medtune schedule`` itself holds nothing; each run it starts takes the lock
#: (pipelines/schedule.py).
WRITERS = frozenset(
    {"run", "train", "federated", "rank-search", "safety", "promote", "data build", "data ingest", "data push",
     "data pull"}
)  # fmt: skip


#: The commands that run as several processes (``--nproc N`` or under torchrun; pipelines/ranks.py).
DISTRIBUTED = frozenset({"run", "train"})


#: Prefect's loggers for flow and task runs: they report a failed stage (the task's and the flow's exception with
#: a traceback each, and both final states).
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
LOG_MAX_BYTES, LOG_BACKUPS = 10_000_000, 3


def flow_log_file(state: StatePaths) -> Path:
    """The log of the flows run in this workspace: every warning and error of their runs, tracebacks included."""
    return state.root / "logs" / "medtune.log"


class _NoRunFailures(logging.Filter):
    """Drops the run loggers' errors from a console handler: the failed stage raises to the command, which prints
    its message once (``fail``); the records, tracebacks included, still reach the log file and Prefect's API."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.name.startswith(RUN_LOGGERS))


class _FlowLogFile(logging.handlers.RotatingFileHandler):
    """The log file handler (a class of its own, so a second call finds it and does not add another)."""


def route_flow_logs(log_file: Path) -> Path:
    """Send the flow and task runs' log records to ``log_file`` too, and keep their errors off the console.

    Before (issue 18), a failed stage printed its message four times with two Prefect tracebacks: Prefect logs
    the task's failure with a traceback, its final state, then the flow's failure with a traceback, all through
    the root logger's console handler, and the command printed the message. Prefect's own logging set-up runs
    first (it would replace handlers added before it). Calling again changes nothing but the file, when another
    workspace's flow runs in the same process. Returns ``log_file``."""
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()
    loggers = [logging.getLogger(name) for name in RUN_LOGGERS]
    for stale in {h for logger in loggers for h in logger.handlers if isinstance(h, _FlowLogFile)}:
        if stale.baseFilename != os.path.abspath(log_file):  # how FileHandler spells it
            for logger in loggers:
                logger.removeHandler(stale)
            stale.close()
    if not any(isinstance(h, _FlowLogFile) for logger in loggers for h in logger.handlers):
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = _FlowLogFile(log_file, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"))
        for logger in loggers:  # one handler for both: one file, rotated once
            logger.addHandler(handler)
    consoles = [h for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]  # fmt: skip
    for console_handler in consoles:
        if not any(isinstance(f, _NoRunFailures) for f in console_handler.filters):
            console_handler.addFilter(_NoRunFailures())
    return log_file


class UsageError(Exception):
    """Bad command-line use that is not a config error."""


def fail(code: int, message: str) -> typer.Exit:
    err.print(message, markup=False)
    return typer.Exit(code)


def load_context(
    config: Path | None, overrides: list[str] | None, *, make_state: bool = True, wait: float | None = None
) -> Any:
    """The command's context; a command in :data:`WRITERS` also takes the workspace, waiting up to ``wait`` seconds
    (None: ``runtime.lock_wait_s``) and exiting 2 with one line naming the holder when it stays busy."""
    from pipelines.context import resolve

    try:
        ctx = resolve(config, overrides, make_state=make_state)
    except ConfigError as e:
        raise fail(2, f"config error: {e}") from None
    except WorkspaceError as e:
        raise fail(2, f"error: {e}") from None
    command = _command_name()
    if command in WRITERS and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if command not in DISTRIBUTED:  # issue 20: only the training commands run as several processes
            raise fail(2, f"error: medtune {command} runs in one process; under torchrun: medtune run or train")
        if int(os.environ.get("RANK", "0")) != 0:
            return ctx  # rank 0 holds the workspace for all ranks (pipelines/ranks.py)
    if command in WRITERS:
        hold_workspace(ctx, f"medtune {command}", wait)
    return ctx


def _command_name() -> str | None:
    """The running command's path below ``medtune`` ("run", "data build"); None outside a command."""
    import click

    here = click.get_current_context(silent=True)
    names = []
    while here is not None and here.parent is not None:
        names.append(here.info_name or "")
        here = here.parent
    return " ".join(reversed(names)) or None


def hold_workspace(ctx: Any, command: str, wait_s: float | None) -> None:
    """Take ``<state>/lock`` for ``command`` (exit 2 when busy) until the process exits; what a dead holder left
    (its processes, its RUNNING MLflow runs) is cleaned up first (pipelines/lock.py). Released at exit, after the
    handlers registered later (Prefect stops its temporary server in one): nothing of the command outlives its lock.
    A second command in the same process (a test) finds its own token and passes through."""
    import atexit

    from pipelines.lock import WorkspaceBusy, hold_context

    try:
        lock = hold_context(ctx, command, wait_s=wait_s, echo=_say)
    except WorkspaceBusy as e:
        raise fail(2, str(e)) from None
    atexit.register(lock.release)  # atexit runs last-registered first
    _recover(ctx)


def _recover(ctx: Any) -> None:
    """Finish or roll back a promotion a killed command left open (pipelines/promote.py), now that this command
    holds the workspace: the journal says what to do; cheap when nothing is open (MLflow is not touched)."""
    if not any((ctx.state.root / "registry").glob("*/journal.jsonl")):
        return  # no promotion was ever journaled here
    from pipelines.promote import recover_promotions
    from pipelines.stages import StageFailed

    try:
        recover_promotions(ctx.state.root, ctx.tracking_uri, echo=_say)
    except StageFailed as e:
        raise fail(1, str(e)) from None


def _say(line: str) -> None:
    err.print(line, markup=False)


@contextmanager
def flow_run(ctx: Any, flow: str) -> Iterator[tuple[Any, str]]:
    """A standalone command's parent MLflow run in the experiment named after it; its stages' child runs go to the
    same experiment. A failed stage marks the run FAILED and exits 1."""
    from pipelines.context import apply_threads
    from pipelines.stages import StageFailed, connect

    tags = {"medtune.flow": flow, "config_hash": ctx.config_hash}
    tracking = ctx.config.tracking.model_copy(update={"experiment": flow})
    ctx = dataclasses.replace(ctx, config=ctx.config.model_copy(update={"tracking": tracking}))
    threads = apply_threads(ctx)  # before any training: train.threads, or the CPUs the process may use
    session = connect(ctx)
    parent = session.start_run(flow, tags=tags, params=threads)
    try:
        yield ctx, parent
    except StageFailed as e:
        session.finish(parent, failed=True)
        raise fail(1, str(e)) from None
    except BaseException:
        session.finish(parent, failed=True)
        raise
    session.finish(parent)


class _NoProgress:
    def __enter__(self) -> Any:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def progress_bars(enabled: bool) -> Any:
    if not enabled or not console.is_terminal:
        return _NoProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    class _Bars:
        def __enter__(self) -> Any:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            )
            self.tasks: dict[str, Any] = {}
            self.progress.__enter__()
            return self.update

        def update(self, name: str, done: int, total: int | None) -> None:
            if name not in self.tasks:
                self.tasks[name] = self.progress.add_task(name, total=total)
            self.progress.update(self.tasks[name], completed=done, total=total)

        def __exit__(self, *exc: object) -> None:
            self.progress.__exit__(None, None, None)

    return _Bars()
