"""`medtune safety` (issue 21): run, resume, calibrate. The command lives in pipelines/cli.py; its work is here.

    medtune safety --sut refuse_all                         # a run: grades to MLflow (experiment 'safety')
    medtune safety --resume                                 # continue the newest unfinished run from its journal
    medtune safety --resume safety-<run id>                 # ... or a named one (folder, folder name, MLflow run id)
    medtune safety calibrate --sut refuse_all --sut comply_all [--set NAME]
                                                            # per-hazard references of the custom prompt sets

A run's folder is ``<state>/runs/safety-<MLflow run id>``: its journal and caches let ``--resume`` ask nothing twice
(components/safety/journal.py); the MLflow runs a killed command left RUNNING are marked KILLED when the next
command takes the workspace (pipelines/lock.py). Calibration writes ``<state>/safety/references/<set hash>.json``
(components/safety/calibration.py), read by every later run of that set.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

from pipelines.cli_common import console, fail, flow_run

CANNED = ("refuse_all", "comply_all")
LATEST = "latest"


def sut_kwargs(sut_arg: list[str] | None) -> dict[str, Any]:
    import yaml

    kwargs: dict[str, Any] = {}
    for item in sut_arg or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise fail(2, f"error: --sut-arg {item!r}: expected KEY=VALUE")
        kwargs[key] = yaml.safe_load(value)
    return kwargs


def make_sut(ctx: Any, sut: str, kwargs: dict[str, Any]) -> Any:
    """A SUT instance (the medtune model from a `medtune train` folder, or any registered SUT); exit 2 when bad."""
    from components.safety import SUTS

    kwargs = dict(kwargs)
    if sut == "medtune":
        kwargs.setdefault("max_new_tokens", ctx.config.safety.max_new_tokens)
        model_dir = Path(str(kwargs.get("model_dir", "")))
        if (model_dir / "trained.safetensors").exists():  # a `medtune train` model folder (base + plugins)
            from components.safety.vlm import vlm_generator
            from components.training.plugins import load_trained

            model = load_trained(model_dir)
            if model.tokenizer is None:
                raise fail(2, f"error: SUT medtune: {model_dir} holds no tokenizer")
            kwargs = {
                "generate": vlm_generator(model, model.tokenizer, batch_size=ctx.config.safety.batch_size),
                "name": model_dir.parent.name,
                "max_new_tokens": kwargs["max_new_tokens"],
            }
    elif sut in CANNED:
        kwargs = {}
    try:
        return SUTS.make(sut, **kwargs)
    except (KeyError, TypeError, ValueError, FileNotFoundError) as e:
        raise fail(2, f"error: SUT {sut!r}: {e}") from None


def check_sets(ctx: Any) -> list[Any]:
    """The configured prompt sets, read before anything starts: a bad one is one line and exit 2."""
    from components.safety.prompt_sets import PromptSetError
    from pipelines.stages import safety_sets

    try:
        return safety_sets(ctx)
    except PromptSetError as e:
        raise fail(2, f"error: safety.prompt_sets: {e}") from None


def _unfinished(folder: Path) -> bool:
    return (folder / "journal.jsonl").is_file() and not (folder / "result.json").is_file()


def find_run(ctx: Any, run: str) -> Path:
    """The folder of the run to resume: ``latest`` (the newest unfinished ``safety-*`` folder), a path, a folder
    name, or the MLflow run id in a folder's name. Exit 2 naming what was looked for."""
    runs = Path(ctx.state.runs)
    if run == LATEST:
        found = sorted(
            (p for p in runs.glob("safety-*") if p.is_dir() and _unfinished(p)),
            key=lambda p: (p / "journal.jsonl").stat().st_mtime,
        )
        if not found:
            raise fail(2, f"error: --resume: no unfinished safety run in {runs} (a journal and no result.json)")
        return found[-1]
    for candidate in (Path(run), runs / run, runs / f"safety-{run}"):
        if candidate.is_dir() and (candidate / "journal.jsonl").is_file():
            return candidate
    raise fail(2, f"error: --resume {run}: no safety run folder with a journal (looked in {runs})")


def journal_sut(folder: Path) -> str | None:
    from components.safety.journal import read_journal

    for event in read_journal(folder):
        if event.get("event") == "run_started":
            return str(event.get("sut"))
    return None


def run(
    ctx: Any, sut: list[str] | None, sut_arg: list[str] | None, resume: str | None, echo: Any = console.print
) -> None:
    """`medtune safety`: one SUT (default medtune), graded; ``resume``: continue that run's folder."""
    from pipelines.stages import safety_stage

    names = sut or ["medtune"]
    if len(names) != 1:
        raise fail(2, f"error: --sut given {len(names)} times; a run grades one SUT (calibrate takes several)")
    check_sets(ctx)
    instance = make_sut(ctx, names[0], sut_kwargs(sut_arg))
    folder = None
    if resume is not None:
        folder = find_run(ctx, resume)
        before = journal_sut(folder)
        if before is not None and before != instance.uid:
            raise fail(2, f"error: --resume {folder.name}: that run graded SUT {before!r}, not {instance.uid!r}")
        echo(f"resuming {folder.name}: finished items are read from its journal")
    with flow_run(ctx, "safety") as (ctx, parent):
        ref = safety_stage(ctx, parent, echo, sut=instance, run_dir=folder)
    echo(f"safety grade {ref['overall']}: MLflow run {parent} (experiment 'safety')")


def calibrate(ctx: Any, sut: list[str] | None, sut_arg: list[str] | None, only: str | None) -> None:
    """`medtune safety calibrate`: references of every configured set with its own taxonomy (or ``--set NAME``)."""
    from components.safety.calibration import CalibrationError
    from components.safety.calibration import calibrate as run_calibration
    from components.safety.judges import UnsupportedLocale
    from components.safety.runner import SafetyRunError
    from pipelines.stages import safety_references_dir

    if not sut:
        raise fail(2, "error: calibrate needs the reference SUTs: --sut NAME (repeat it for each)")
    sets = [s for s in check_sets(ctx) if s.taxonomy is not None and (only is None or s.name == only)]
    if not sets:
        what = f"named {only!r}" if only else "with its own taxonomy (custom hazards)"
        raise fail(2, f"error: calibrate: no prompt set {what} in safety.prompt_sets")
    cfg = ctx.config.safety
    kwargs = sut_kwargs(sut_arg)
    suts = [make_sut(ctx, name, kwargs) for name in sut]
    judge = (cfg.judge, dict(cfg.judge_args)) if cfg.judge_args else cfg.judge
    for prompt_set in sets:
        try:
            path = run_calibration(
                prompt_set, suts, judge, safety_references_dir(ctx), cfg.version,
                Path(ctx.state.runs) / f"calibrate-{prompt_set.hash}", batch_size=cfg.batch_size,
                retries=cfg.retries, max_error_share=cfg.max_error_share,
            )  # fmt: skip
        except (CalibrationError, UnsupportedLocale, SafetyRunError, ValueError) as e:
            raise fail(1, f"error: calibrate {prompt_set.name}: {str(e).splitlines()[0]}") from None
        data = json.loads(path.read_text(encoding="utf-8"))
        rates = ", ".join(f"{h} {float(Fraction(r)):.3f}" for h, r in data["safe_rates"].items())
        console.print(f"calibrated {prompt_set.name} ({prompt_set.hash}, {len(prompt_set.items)} prompts): {path}")
        console.print(f"  reference safe rates (lowest of {len(suts)} SUT(s)): {rates}")
