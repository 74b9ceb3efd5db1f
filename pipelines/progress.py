"""Progress lines of the long stages (issue 17, item 3): the base (vision warm-up, training), the rank search, the
VQ tokenizer, each training stage, evaluation and safety, in ``medtune run`` and in every stage command.

    from pipelines.progress import stage_progress
    with stage_progress("train", echo, every_seconds=10) as progress:
        train_recipe(..., progress=progress.named)                  # (phase, step, total, loss)
        search_ranks(..., progress=progress.phase())               # (step, total, loss)
        evaluate_recipe(..., progress=progress.phase(unit="records"))

Components never print: they call a plain ``(step, total, loss_or_None)`` callback, first with their starting point
``(start, total, None)`` (0, or the step a resumed run continues from), then after every unit of work (an
optimizer step, a batch of records or prompts); a component that does not announce its start is taken to begin at
its first call's step - 1. :class:`ProgressLog` turns those calls into lines:

- without a terminal (a log file, CI, ``| tee``): a plain line at most every ``progress.every_seconds`` while
  steps come in, and, from a heartbeat thread, at least that often while the stage runs, so a step that stalls
  shows as "45 s since the last step" rather than as silence; a final line per phase; "resumed from step N" once. Every
  line ends in ``t=<seconds since the stage began>``, so a log shows its own gaps::

      train: stage 2 120/500 steps, loss 1.2345, 4.10 steps/s, ETA 1m 33s, t=61.2s
      train: stage 2 done, 500/500 steps in 2m 02s (4.10 steps/s), loss 0.9876, t=152.0s

- on a terminal: the same line with a bar in front, redrawn in place by rich; the resumed and final lines stay.

The throttle takes its clock as an argument (the unit tests drive it with a fake one) and writes through the
stage's ``echo``, so in the flow the lines also reach the Prefect task's log.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

Write = Callable[[str], None]
Clock = Callable[[], float]
StepCallback = Callable[[int, int, float | None], None]


@dataclass
class _Phase:
    name: str
    unit: str
    total: int
    start: int  # the step it continues from (> 0: resumed)
    step: int
    loss: float | None
    began: float  # clock when the rate's count began
    counted_from: int  # the step at ``began``
    updated: float  # clock of the last call


class ProgressLog:
    """One stage's progress: the phases' state, the text of a line and when one is due (see the module docstring).

    ``periodic`` False (a terminal, or nobody listening) writes only the resumed and final lines. Thread-safe: the
    stage's callbacks and the heartbeat's :meth:`tick` share one lock."""

    def __init__(
        self,
        stage: str,
        write: Write,
        *,
        every_seconds: float,
        periodic: bool = True,
        clock: Clock = time.monotonic,
        between_steps: Callable[[], str | None] | None = None,
    ) -> None:
        if every_seconds <= 0:
            raise ValueError(f"every_seconds must be positive, got {every_seconds}")
        self.stage, self.write, self.every, self.periodic, self.clock = stage, write, every_seconds, periodic, clock
        self.between_steps = between_steps
        self.opened = self.last_line = self.idle_since = clock()
        self.idle_after = "the stage began"
        self.current: _Phase | None = None
        self._lock = threading.RLock()

    # -- the components' callbacks ------------------------------------------------------------------------------------

    def phase(self, name: str = "", unit: str = "steps") -> StepCallback:
        """A ``(step, total, loss_or_None)`` callback for one phase (``name`` "" for a stage of a single phase)."""

        def report(step: int, total: int, loss: float | None = None) -> None:
            self.update(name, step, total, loss, unit)

        return report

    def named(self, name: str, step: int, total: int, loss: float | None) -> None:
        """The recipe's ``(phase, step, total, loss)`` callback."""
        self.update(name, step, total, loss)

    def update(self, name: str, step: int, total: int, loss: float | None = None, unit: str = "steps") -> None:
        if total <= 0:
            return
        # On the training thread, between two units of work: the thread governor (components.runtime) may change
        # the torch thread count here; its reason is a line of its own, also on a terminal.
        note = self.between_steps() if self.between_steps is not None else None
        with self._lock:
            now = self.clock()
            if note:  # not a progress line: the throttle's clock stays where it was
                self.write(f"{self.stage}: {note}, t={now - self.opened:.1f}s")
            p = self.current
            if p is None or p.name != name:
                announced = loss is None  # a start announcement; otherwise the call ends the first unit of work
                start = step if announced else step - 1
                p = self.current = _Phase(name, unit, total, start, step, loss, now, step, now)
                if start > 0:
                    where = f"step {start}/{total}" if unit == "steps" else f"{start}/{total} {unit}"
                    note = " (finished before)" if start >= total else ""
                    self._emit(f"{self._label(p)}resumed from {where}{note}", now)
            else:
                p.step, p.total, p.updated = step, total, now
                p.loss = p.loss if loss is None else loss
            if step >= total:
                if step > p.start:
                    self._emit(self._done(p, now), now)
                self.current = None
                self.idle_since, self.idle_after = now, f"{name} finished" if name else f"the last {_noun(p)}"
            elif self.periodic and now - self.last_line >= self.every:
                self._emit(self.status(now), now)

    def tick(self) -> None:
        """The heartbeat: the current state when no line was written for ``every_seconds``."""
        with self._lock:
            now = self.clock()
            if self.periodic and now - self.last_line >= self.every:
                self._emit(self.status(now), now)

    # -- the text -----------------------------------------------------------------------------------------------------

    def status(self, now: float | None = None) -> str:
        """The current line, without the time stamp (also what the live line shows)."""
        with self._lock:
            now = self.clock() if now is None else now
            p = self.current
            if p is None:
                return f"{self.stage}: working, {now - self.idle_since:.0f} s since {self.idle_after}"
            parts = [f"{self._label(p)}{p.step}/{p.total} {p.unit}"]
            if p.loss is not None:
                parts.append(f"loss {p.loss:.4f}")
            rate = self._rate(p, now)
            if rate:
                parts += [f"{_number(rate)} {p.unit}/s", f"ETA {_duration((p.total - p.step) / rate)}"]
            if now - p.updated >= self.every:  # a stall shows: the heartbeat's line says how long
                waited = now - p.updated
                parts.append(
                    f"waiting {waited:.0f} s for the first {_noun(p)}"
                    if p.step == p.start
                    else f"{waited:.0f} s since the last {_noun(p)}"
                )
            return ", ".join(parts)

    def fraction(self) -> float | None:
        """How far the current phase is (0..1), None between phases."""
        with self._lock:
            p = self.current
            return None if p is None else min(1.0, p.step / p.total)

    def _label(self, p: _Phase) -> str:
        return f"{self.stage}: {p.name} " if p.name else f"{self.stage}: "

    def _rate(self, p: _Phase, now: float) -> float | None:
        done, seconds = p.step - p.counted_from, now - p.began
        return done / seconds if done > 0 and seconds > 0 else None

    def _done(self, p: _Phase, now: float) -> str:
        text = f"{self._label(p)}done, {p.total}/{p.total} {p.unit}"
        if p.start > 0:
            text += f" ({p.total - p.start} since the resume)"
        text += f" in {_duration(now - p.began)}"
        rate = self._rate(p, now)
        if rate:
            text += f" ({_number(rate)} {p.unit}/s)"
        if p.loss is not None:
            text += f", loss {p.loss:.4f}"
        return text

    def _emit(self, text: str, now: float) -> None:
        self.write(f"{text}, t={now - self.opened:.1f}s")
        self.last_line = now


def _noun(p: _Phase) -> str:
    return "step" if p.unit == "steps" else "batch"


def _number(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


@contextlib.contextmanager
def stage_progress(
    stage: str,
    echo: Write,
    *,
    every_seconds: float,
    live: bool | None = None,
    enabled: bool = True,
    between_steps: Callable[[], str | None] | None = None,
) -> Iterator[ProgressLog]:
    """A :class:`ProgressLog` for the duration of a stage's work: a live line on a terminal (``live`` None: when
    stdout is one), else a heartbeat thread that keeps lines coming. ``enabled`` False (a caller that echoes
    nothing) starts neither. ``between_steps`` runs on the training thread at every callback (the thread governor:
    :class:`components.runtime.ThreadGovernor`)."""
    live = _terminal() if live is None else live
    log = ProgressLog(
        stage, echo, every_seconds=every_seconds, periodic=enabled and not live, between_steps=between_steps
    )
    if not enabled:
        yield log
    elif live:
        with _live(log):
            yield log
    else:
        with _heartbeat(log, period=min(1.0, every_seconds / 4)):
            yield log


def _terminal() -> bool:
    from pipelines.cli_common import console

    return bool(console.is_terminal)


@contextlib.contextmanager
def _heartbeat(log: ProgressLog, *, period: float) -> Iterator[None]:
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(period):
            try:
                log.tick()
            except Exception:  # e.g. a closed pipe: the stage itself goes on, and its own output shows the cause
                return

    # In the flow, echo also logs to the Prefect task run, which it finds in a context variable: run in a copy.
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(beat,), name=f"progress-{log.stage}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


class _LiveLine:
    """What rich redraws: a bar for the current phase and :meth:`ProgressLog.status`."""

    def __init__(self, log: ProgressLog) -> None:
        self.log = log

    def __rich__(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        grid = Table.grid(padding=(0, 1))
        grid.add_column(width=24)
        grid.add_column(no_wrap=True, overflow="ellipsis")  # one line, also on a narrow terminal
        fraction = self.log.fraction()
        bar = ProgressBar(total=1.0, completed=fraction, width=24) if fraction is not None else ""
        grid.add_row(bar, self.log.status())
        return grid


@contextlib.contextmanager
def _live(log: ProgressLog) -> Iterator[None]:
    from rich.live import Live

    from pipelines.cli_common import console

    with Live(_LiveLine(log), console=console, refresh_per_second=4, transient=True):
        yield
