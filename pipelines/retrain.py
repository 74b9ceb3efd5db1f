"""The ``retrain`` flow: the main job behind ``medtune run``.

    medtune run                                  # the embedded default
    medtune run --config configs/my.yaml data.workers=2

Stages (DESIGN.md "The main job"): data (dvc repro build) -> validate (Great Expectations gate). Later stages
(base, rank search, train, federated, evaluate, safety, register) join :data:`STAGES` as tasks of the same shape:
a stage function ``(ctx, parent_run_id, echo) -> dict of references`` wrapped in a thin task.

The flow opens one parent MLflow run (tags: data version, git commit, config hash) with a child run per stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components.config import config_dict
from components.tracking import flatten_params
from pipelines import stages
from pipelines.context import Context, git_info, resolve, write_params

StageFn = Callable[[Context, str, stages.Echo], dict[str, Any]]

#: The stage sequence of retrain, in order.
STAGES: list[tuple[str, StageFn]] = [("data", stages.data_stage), ("validate", stages.validate_stage)]


def _echo(line: str) -> None:
    if line.strip():
        print(line, flush=True)
        get_run_logger().debug(line)


def _as_task(name: str, fn: StageFn) -> Callable[[Context, str, stages.Echo], dict[str, Any]]:
    # DVC decides what is re-used (its cache is keyed on data, params and code); Prefect's cache would only hide
    # that decision, so tasks do not cache.
    return task(name=name, cache_policy=NO_CACHE, retries=0)(fn)


@flow(name="retrain", validate_parameters=False)
def retrain(workspace: str, config: str, overrides: list[str]) -> dict[str, Any]:
    """Build and validate VL-Health (then, as they land, train, evaluate, grade and register)."""
    ctx = resolve(Path(config), overrides, workspace=Path(workspace))
    return run_stages(ctx, [(name, _as_task(name, fn)) for name, fn in STAGES], _echo)


def run_stages(
    ctx: Context, sequence: Sequence[tuple[str, StageFn]] = STAGES, echo: stages.Echo = print
) -> dict[str, Any]:
    """Open the parent run, run the stages in order, close the parent run. Shared by the flow (tasks) and the
    orchestration benchmark (plain functions)."""
    write_params(ctx)
    session = stages.connect(ctx)
    tags = {"medtune.flow": "retrain", "config_hash": ctx.config_hash, **git_info(ctx.workspace)}
    parent = session.start_run("retrain", tags=tags, params=flatten_params(config_dict(ctx.config)))
    started = time.perf_counter()
    refs: dict[str, Any] = {"run_id": parent, "experiment_id": session.experiment_id}
    try:
        for name, fn in sequence:
            refs[name] = fn(ctx, parent, echo)
            if "data_version" in refs[name]:
                session.set_tags(parent, {"data_version": refs[name]["data_version"]})
    except BaseException:
        session.finish(parent, failed=True)
        raise
    session.log_metrics(parent, {"wall_seconds": time.perf_counter() - started})
    session.finish(parent)
    return refs
