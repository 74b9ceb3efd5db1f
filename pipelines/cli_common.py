"""What every ``medtune`` command shares: the consoles, the config option and overrides, exit-code helpers, the
standalone command's parent MLflow run, and rich progress bars (see :mod:`pipelines.cli`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from components.config import ConfigError
from components.runtime import WorkspaceError

console = Console(stderr=False, highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="Config YAML (default: configs/default.yaml of the workspace).")
]
Overrides = Annotated[
    list[str] | None, typer.Argument(help="Dotted overrides, e.g. data.workers=2 data.sources.phantom.subjects=8.")
]


class UsageError(Exception):
    """Bad command-line use that is not a config error."""


def fail(code: int, message: str) -> typer.Exit:
    err.print(message, markup=False)
    return typer.Exit(code)


def load_context(config: Path | None, overrides: list[str] | None, *, make_state: bool = True) -> Any:
    from pipelines.context import resolve

    try:
        return resolve(config, overrides, make_state=make_state)
    except ConfigError as e:
        raise fail(2, f"config error: {e}") from None
    except WorkspaceError as e:
        raise fail(2, f"error: {e}") from None


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
