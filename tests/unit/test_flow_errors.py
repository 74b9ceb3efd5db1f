"""A failed stage is reported once on the console, its traceback in the log file (issue 18: the message showed
four times with two Prefect tracebacks).

A real flow run starts Prefect's temporary server (16 s here), so this test replays what Prefect's engines log
for a failed task inside a flow (the records the manual check of ``medtune run`` showed, on the same loggers,
with the same exception) through Prefect's own logging set-up, then lets the command report the failure.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer

from pipelines.cli_common import RUN_LOGGERS, _FlowLogFile, fail, route_flow_logs
from pipelines.stages import StageFailed

# Outside a flow run, Prefect's API handler warns that it cannot send the replayed records: nothing to see here.
pytestmark = pytest.mark.filterwarnings("ignore:Logger 'prefect")


@pytest.fixture
def console() -> Iterator[io.StringIO]:
    """A console handler on the root logger, as Prefect's set-up puts one there (its stream is fixed at set-up,
    so the test adds its own); the run loggers' handlers are restored afterwards."""
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # as importing prefect does in a command (it would replace the root's handlers)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    saved = {name: list(logging.getLogger(name).handlers) for name in RUN_LOGGERS}
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)
    for name, handlers in saved.items():
        logger = logging.getLogger(name)
        for extra in [h for h in logger.handlers if h not in handlers]:
            logger.removeHandler(extra)
            extra.close()
    for h in root.handlers:
        h.filters = [f for f in h.filters if type(f).__name__ != "_NoRunFailures"]


def console_handler(stream: io.StringIO) -> logging.Handler:
    (handler,) = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is stream]
    return handler


def prefect_reports(error: BaseException) -> None:
    """What Prefect logs when a task raises inside a flow: the task's failure (traceback), its final state, the
    flow's failure (traceback) and the flow's final state."""
    try:
        raise error
    except type(error):
        exc_info = sys.exc_info()
    # Prefect's run loggers are adapters that add the run's name (its console format uses it)
    names = {"flow_run_name": "ivory-rooster", "task_run_name": "data-64a"}
    task_runs = logging.LoggerAdapter(logging.getLogger("prefect.task_runs"), names)
    flow_runs = logging.LoggerAdapter(logging.getLogger("prefect.flow_runs"), names)
    task_runs.error("Task run failed with exception: %r - Retries are exhausted", error, exc_info=exc_info)
    task_runs.error("Finished in state Failed('Task run encountered an exception StageFailed: %s')", error)
    flow_runs.error("Encountered exception during execution: %r", error, exc_info=exc_info)
    flow_runs.error("Finished in state Failed('Flow run encountered an exception. StageFailed: %s')", error)
    flow_runs.warning("a warning of the run")


def test_failed_stage_prints_its_message_once_and_logs_the_traceback(
    console: io.StringIO, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_file = route_flow_logs(tmp_path / "logs" / "medtune.log")
    error = StageFailed("data", "source 'pydicom_samples': folder not found: nowhere")
    prefect_reports(error)
    with pytest.raises(typer.Exit) as exit_info:  # what `medtune run` does with a StageFailed
        raise fail(1, str(error))
    captured = capsys.readouterr()
    shown = console.getvalue() + captured.out + captured.err
    assert exit_info.value.exit_code == 1
    assert shown.count("folder not found: nowhere") == 1, shown
    assert "Traceback" not in shown
    assert "a warning of the run" in console.getvalue()  # warnings still reach the console
    logged = log_file.read_text(encoding="utf-8")
    assert logged.count("folder not found: nowhere") == 6  # four records, and the last line of each traceback
    assert logged.count("Traceback (most recent call last)") == 2
    assert "ERROR   | prefect.task_runs - Task run failed with exception" in logged


def test_routing_twice_adds_nothing_and_follows_the_workspace(console: io.StringIO, tmp_path: Path) -> None:
    route_flow_logs(tmp_path / "a" / "medtune.log")
    route_flow_logs(tmp_path / "a" / "medtune.log")

    def files() -> list[str]:
        return sorted({h.baseFilename for n in RUN_LOGGERS for h in logging.getLogger(n).handlers
                       if isinstance(h, _FlowLogFile)})  # fmt: skip

    assert files() == [str(tmp_path / "a" / "medtune.log")]
    for handler in logging.getLogger().handlers:  # one filter on each console handler
        assert [type(f).__name__ for f in handler.filters].count("_NoRunFailures") <= 1
    assert [type(f).__name__ for f in console_handler(console).filters] == ["_NoRunFailures"]
    route_flow_logs(tmp_path / "b" / "medtune.log")  # another workspace's flow in the same process
    assert files() == [str(tmp_path / "b" / "medtune.log")]
