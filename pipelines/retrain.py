"""The ``retrain`` flow: the main job behind ``medtune run``.

    medtune run                                  # the embedded default
    medtune run --config configs/my.yaml data.workers=2

Stages (DESIGN.md "The main job"): data (dvc repro build) -> validate (Great Expectations gate) -> base (the
tiny VLM bootstrapped, or a local checkpoint) -> rank_search (ElaLoRA's per-module rank pattern, issue 5) -> train
(HealthGPT's three stages with H-LoRA, at the searched ranks) -> evaluate
(medical VQA and generation metrics) -> safety (the benchmark on the candidate) -> register (the pyfunc model as
the challenger; ``champion`` moves if the promotion policy passes: pipelines/promote.py). Later stages join
:data:`STAGES` in the same shape: a stage function ``(ctx, parent_run_id, echo, **references) -> dict of
references`` wrapped in a thin task.

The flow opens one parent MLflow run (tags: data version, git commit, config hash) with a child run per stage. As
each stage finishes, the parent repeats what compares retrains in MLflow's runs table (:func:`log_stage_summary`,
issue 19): the headline metrics of its child run, the dataset input (digest: the data version), the promotion
decision; the experiment is tagged as model training and holds a shared view with those columns
(:func:`components.tracking.dashboard.runs_view_url` is the link that opens it).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components.config import config_dict
from components.tracking import TrackingSession, flatten_params
from components.tracking.dashboard import prepare_experiment, run_metrics
from pipelines import stages
from pipelines.cli_common import flow_log_file, route_flow_logs
from pipelines.context import Context, apply_threads, git_info, resolve, write_params
from pipelines.federated import federated_stage
from pipelines.promote import register_stage

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
    Stage(
        "rank_search",
        stages.rank_search_stage,
        {"base_dir": ("base", "base_dir"), "data_version": ("data", "data_version")},
    ),
    Stage(
        "train",
        stages.train_stage,
        {
            "base_dir": ("base", "base_dir"),
            "data_version": ("data", "data_version"),
            "rank_pattern_file": ("rank_search", "pattern_file"),
        },
    ),
    Stage("evaluate", stages.evaluate_stage, {"model_dir": ("train", "model_dir")}),
    Stage("safety", stages.model_safety_stage, {"model_dir": ("train", "model_dir")}),
    Stage(
        "register",
        register_stage,
        {
            "model_dir": ("train", "model_dir"),
            "metrics": ("evaluate", "metrics"),
            "safety_result": ("safety", "result"),
            "validation_report": ("validate", "report"),
        },
    ),
]


def stages_for(ctx: Context) -> list[Stage]:
    """:data:`STAGES`, plus ``federated`` after ``train`` when the config names sites (issue 7): it takes the
    trained model and the stages that read ``train``'s model read the federated one instead."""
    if not ctx.config.federated.enabled:
        return list(STAGES)
    fed = Stage(
        "federated",
        federated_stage,
        {"model_dir": ("train", "model_dir"), "data_version": ("data", "data_version")},
    )
    out: list[Stage] = []
    for stage in STAGES:
        rewired = {k: ("federated", key) if src == "train" and key == "model_dir" else (src, key)
                   for k, (src, key) in stage.inputs.items()}  # fmt: skip
        out.append(Stage(stage.name, stage.fn, rewired))
        if stage.name == "train":
            out.append(fed)
    return out


def _echo(line: str) -> None:
    if line.strip():
        print(line, flush=True)
        get_run_logger().debug(line)


def _as_task(stage: Stage) -> Stage:
    # Re-use is decided below Prefect: DVC's cache for data (keyed on data, params and code), keyed work folders
    # for models (config + data version). Prefect's cache would only hide those decisions, so tasks do not cache.
    return Stage(stage.name, task(name=stage.name, cache_policy=NO_CACHE, retries=0)(stage.fn), stage.inputs)


@flow(name="retrain", validate_parameters=False)
def retrain(workspace: str, config: str, overrides: list[str], skip_unchanged: bool = False) -> dict[str, Any]:
    """Build and validate VL-Health (then, as they land, train, evaluate, grade and register). With
    ``skip_unchanged`` (scheduled runs) it stops after the data stage when the champion has the same data version."""
    ctx = resolve(Path(config), overrides, workspace=Path(workspace))
    log_file = route_flow_logs(flow_log_file(ctx.state))  # Prefect's report of a failure: the file, not the console
    try:
        return run_stages(ctx, [_as_task(stage) for stage in stages_for(ctx)], _echo, skip_unchanged=skip_unchanged)
    except Exception:
        # the command prints the failure itself, once; this says where the rest is
        print(f"retrain: the run's log, tracebacks included: {log_file}", file=sys.stderr, flush=True)
        raise


#: The metrics the parent run repeats from its stages' child runs (the names the stages log), so MLflow's runs table
#: shows a retrain's outcome in one row: closed and open VQA, generation SSIM, the safety grade's rank (1 is the
#: best) and the share of safe prompts refused; plus ``promoted`` (1 when champion moved to this run's version).
HEADLINE_METRICS = (
    "closed/accuracy",
    "open/recall",
    "generation/ssim",
    "safety/overall/grade_rank",
    "safety/over_refusal/safe_refused_rate",
)
DECISION_TAG = "medtune.promotion.decision"
VIEW_TAGS = ("data_version", DECISION_TAG)  # the parent-run tags the experiment's shared view shows as columns


def log_stage_summary(session: TrackingSession, parent: str, result: dict[str, Any]) -> None:
    """What a finished stage adds to the parent run: its child run's headline metrics, and from the data stage the
    data version (tag) and the dataset input, from the register stage the decision (tag and ``promoted`` 0/1).
    Read back from the child run, so a stage whose work was re-used still brings what it logged."""
    if result.get("run_id"):
        metrics = run_metrics(session.client, result["run_id"], HEADLINE_METRICS)
        if metrics:
            session.log_metrics(parent, metrics)
    if "data_version" in result:
        session.set_tags(parent, {"data_version": result["data_version"]})
        if result.get("dataset") and result.get("dataset_source"):
            version, folder, source = result["data_version"], Path(result["dataset"]), result["dataset_source"]
            stages.log_dataset_input(session, parent, version=version, folder=folder, source=source)
    if "decision" in result:
        session.set_tags(parent, {DECISION_TAG: result["decision"]})
        session.log_metrics(parent, {"promoted": 1.0 if result["decision"] == "promoted" else 0.0})


#: Parent-run tag of a run that exited early; its value says why.
SKIPPED_TAG = "medtune.retrain.skipped"


def unchanged_since_champion(ctx: Context, data_version: str) -> str | None:
    """Why this run need not go on (the champion was trained on ``data_version``), or None. The champion is the
    registered model's ``champion`` alias; its version's ``data_version`` tag is compared."""
    from components.tracking.run_report import champion_data_version

    champion = champion_data_version(ctx.tracking_uri, ctx.config.registry.name)
    if champion is None or champion.data_version != data_version:
        return None
    return f"data version {data_version} unchanged since champion {champion.model} version {champion.version}"


def run_stages(
    ctx: Context, sequence: Sequence[Stage] = STAGES, echo: stages.Echo = print, *, skip_unchanged: bool = False
) -> dict[str, Any]:
    """Open the parent run, run the stages in order, close the parent run. Shared by the flow (tasks) and the
    orchestration benchmark (plain functions). With ``skip_unchanged``, once a stage reports the data version and
    the champion already has it, the run ends there (FINISHED, tagged :data:`SKIPPED_TAG` and promotion decision
    ``skipped``)."""
    write_params(ctx)
    threads = apply_threads(ctx)  # before any training (issue 17: the CPUs the process may use, not the machine's)
    session = stages.connect(ctx)
    tags = {"medtune.flow": "retrain", "config_hash": ctx.config_hash, **git_info(ctx.workspace)}
    params = flatten_params(config_dict(ctx.config)) | threads
    parent = session.start_run("retrain", tags=tags, params=params)
    prepare_experiment(session.client, session.experiment_id, metrics=(*HEADLINE_METRICS, "promoted"), tags=VIEW_TAGS)
    started = time.perf_counter()
    refs: dict[str, Any] = {"run_id": parent, "experiment_id": session.experiment_id}
    try:
        for stage in sequence:
            kwargs = {arg: refs[src][key] for arg, (src, key) in stage.inputs.items()}
            refs[stage.name] = stage.fn(ctx, parent, echo, **kwargs)
            log_stage_summary(session, parent, refs[stage.name])
            if "data_version" in refs[stage.name]:
                reason = skip_unchanged and unchanged_since_champion(ctx, refs[stage.name]["data_version"])
                if reason:
                    echo(f"retrain: skipped, {reason} (a forced run trains anyway)")
                    session.set_tags(parent, {SKIPPED_TAG: reason, DECISION_TAG: "skipped"})
                    session.log_metrics(parent, {"promoted": 0.0})
                    refs["skipped"] = reason
                    break
    except BaseException:
        session.finish(parent, failed=True)
        raise
    session.log_metrics(parent, {"wall_seconds": time.perf_counter() - started})
    session.finish(parent)
    return refs
