"""The ``retrain`` flow: the main job behind ``medtune run``.

    medtune run                                  # the embedded default
    medtune run --config configs/my.yaml data.workers=2

Stages (DESIGN.md "The main job"): data (dvc repro build) -> validate (Great Expectations gate) -> base (the
tiny VLM bootstrapped, or a local checkpoint) -> train (HealthGPT's three stages with H-LoRA) -> evaluate
(medical VQA and generation metrics) -> safety (the benchmark on the candidate). Later stages (rank search,
federated, register) join :data:`STAGES` in the same shape: a stage function
``(ctx, parent_run_id, echo, **references) -> dict of references`` wrapped in a thin task.

The flow opens one parent MLflow run (tags: data version, git commit, config hash) with a child run per stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components.config import config_dict
from components.tracking import flatten_params
from pipelines import stages
from pipelines.context import Context, git_info, resolve, write_params

StageFn = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    """One step of retrain: its function and the references it takes from earlier stages' results."""

    name: str
    fn: StageFn
    inputs: dict[str, tuple[str, str]] = field(default_factory=dict)  # argument -> (stage, key of its result)


#: The stage sequence of retrain, in order (DESIGN.md "The main job").
STAGES: list[Stage] = [
    Stage("data", stages.data_stage),
    Stage("validate", stages.validate_stage),
    Stage("base", stages.base_stage, {"data_version": ("data", "data_version")}),
    Stage("train", stages.train_stage, {"base_dir": ("base", "base_dir"), "data_version": ("data", "data_version")}),
    Stage("evaluate", stages.evaluate_stage, {"model_dir": ("train", "model_dir")}),
    Stage("safety", stages.model_safety_stage, {"model_dir": ("train", "model_dir")}),
]


def _echo(line: str) -> None:
    if line.strip():
        print(line, flush=True)
        get_run_logger().debug(line)


def _as_task(stage: Stage) -> Stage:
    # Re-use is decided below Prefect: DVC's cache for data (keyed on data, params and code), keyed work folders
    # for models (config + data version). Prefect's cache would only hide those decisions, so tasks do not cache.
    return Stage(stage.name, task(name=stage.name, cache_policy=NO_CACHE, retries=0)(stage.fn), stage.inputs)


@flow(name="retrain", validate_parameters=False)
def retrain(workspace: str, config: str, overrides: list[str]) -> dict[str, Any]:
    """Build and validate VL-Health (then, as they land, train, evaluate, grade and register)."""
    ctx = resolve(Path(config), overrides, workspace=Path(workspace))
    return run_stages(ctx, [_as_task(stage) for stage in STAGES], _echo)


def run_stages(ctx: Context, sequence: Sequence[Stage] = STAGES, echo: stages.Echo = print) -> dict[str, Any]:
    """Open the parent run, run the stages in order, close the parent run. Shared by the flow (tasks) and the
    orchestration benchmark (plain functions)."""
    write_params(ctx)
    session = stages.connect(ctx)
    tags = {"medtune.flow": "retrain", "config_hash": ctx.config_hash, **git_info(ctx.workspace)}
    parent = session.start_run("retrain", tags=tags, params=flatten_params(config_dict(ctx.config)))
    started = time.perf_counter()
    refs: dict[str, Any] = {"run_id": parent, "experiment_id": session.experiment_id}
    try:
        for stage in sequence:
            kwargs = {arg: refs[src][key] for arg, (src, key) in stage.inputs.items()}
            refs[stage.name] = stage.fn(ctx, parent, echo, **kwargs)
            if "data_version" in refs[stage.name]:
                session.set_tags(parent, {"data_version": refs[stage.name]["data_version"]})
    except BaseException:
        session.finish(parent, failed=True)
        raise
    session.log_metrics(parent, {"wall_seconds": time.perf_counter() - started})
    session.finish(parent)
    return refs
