"""The ``medtune`` command line: one entry per stage, plus the whole ``run``.

    medtune run                           # the retrain flow on configs/default.yaml
    medtune run data.workers=2            # dotted overrides after the options
    medtune run --nproc 2 train.distributed=ddp    # N processes (torchrun); rank 0 runs the flow (pipelines/ranks.py)
    medtune data build | validate | push | pull
    medtune rank-search                   # ElaLoRA's per-module rank pattern on the base model
    medtune federated -c configs/federated.yaml    # SLoRA across sites on Flower (simulation or SuperLink)
    medtune promote [--version N | --run RUN_ID]   # gated move of the champion alias (mlflow/promotion.yaml)
    medtune ui                            # MLflow UI on 127.0.0.1
    medtune report RUN_ID [-o page.html]  # one static HTML page of a run
    medtune export models:/medtune-vlm@champion --format peft -o out/   # peft | merged | hf (README "Export")
    medtune schedule --cron "0 2 * * *"   # retrain on a schedule (local Prefect server), until Ctrl-C
    medtune watch [--cron "0 2 * * *"]    # retrain when new data lands (intake, raw tree, data.dvc), until Ctrl-C
    medtune config show [--schema]
    medtune init DIR                      # a new workspace (git + DVC) with the default config

Exit codes: 0 ok, 2 usage or config error or the workspace busy (nothing is written), 1 a stage failed.

Commands that write the workspace take its lock (``<state>/lock``; pipelines/lock.py): a second one exits 2 naming the
holder, or waits ``--wait SECONDS`` (``runtime.lock_wait_s``). ``config show``, ``ui``, ``report`` take none.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from components.config import ConfigError
from pipelines.cli_common import (
    ConfigOpt,
    Overrides,
    UsageError,
    WaitOpt,
    console,
    err,
    fail,
    flow_run,
    load_context,
)
from pipelines.cli_data import data_app
from pipelines.cli_import import import_app
from pipelines.cli_registry import app as registry_app

app = typer.Typer(
    name="medtune",
    help="Medical VLM fine-tuning pipeline: data -> validation -> training -> safety -> registry.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect configuration.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")
app.add_typer(import_app, name="import")  # medtune import healthgpt


NprocOpt = Annotated[
    int,
    typer.Option(
        "--nproc",
        min=1,
        help="Processes to train with (torchrun on this machine; needs train.distributed ddp or fsdp). Rank 0 runs "
        "the flow, MLflow, DVC and the registry; the others train the same stages (pipelines/ranks.py).",
    ),
]


def _launch(command: str, nproc: int, config: Path | None, overrides: list[str] | None) -> None:
    """``--nproc N`` outside torchrun: check the config (exit 2, nothing started), then start N processes of the
    same command line and exit with their code."""
    from pipelines.context import resolve
    from pipelines.ranks import check_config, launch, strip_nproc

    try:
        cfg = resolve(config, overrides, make_state=False).config
        check_config(cfg.train.distributed, nproc, nproc=nproc, quantize=getattr(cfg.model, "quantize", "none"))
    except ConfigError as e:
        raise fail(2, f"config error: {e}") from None
    code = launch(command, nproc, strip_nproc(sys.argv[sys.argv.index(command) + 1 :]))
    if code:
        raise fail(code, f"medtune {command} --nproc {nproc}: failed (exit {code}); the ranks' messages are above")
    raise typer.Exit(0)


@app.command()
def run(config: ConfigOpt = None, overrides: Overrides = None, wait: WaitOpt = None, nproc: NprocOpt = 1) -> None:
    """Run the retrain flow (Prefect) on the config: data -> validate (-> later stages)."""
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _launch("run", nproc, config, overrides)
    ctx = load_context(config, overrides, wait=wait)
    with _ranks_or_exit(ctx):  # several processes: only rank 0 goes on (pipelines/ranks.py)
        from pipelines.dvc_ops import DvcError
        from pipelines.retrain import retrain
        from pipelines.stages import StageFailed

        console.print(
            f"[bold]medtune run[/] workspace {ctx.workspace}  config {ctx.config_path.name} (hash {ctx.config_hash})"
        )
        try:
            refs = retrain(workspace=str(ctx.workspace), config=str(ctx.config_path), overrides=list(overrides or []))
        except (StageFailed, DvcError) as e:
            raise fail(1, str(e)) from None
    console.print(
        f"[green]retrain finished[/]: MLflow run {refs['run_id']} (experiment {refs['experiment_id']}), "
        f"data version {refs['data']['data_version']}"
    )
    console.print(
        f"see it: medtune ui  ->  http://127.0.0.1:5000/#/experiments/{refs['experiment_id']}/runs/{refs['run_id']}"
    )


def _ranks_or_exit(ctx: Any) -> Any:
    """pipelines.ranks.ranks for this command; a config that does not fit the processes exits 2."""
    from pipelines.ranks import check_config, ranks

    try:
        quantize = getattr(ctx.config.model, "quantize", "none")  # model.quantize: issue 20 item 1
        check_config(ctx.config.train.distributed, int(os.environ.get("WORLD_SIZE", "1")), quantize=quantize)
    except ConfigError as e:
        raise fail(2, f"config error: {e}") from None
    return ranks(ctx, lambda line: console.print(line, markup=False))


@app.command()
def train(
    config: ConfigOpt = None,
    overrides: Overrides = None,
    wait: WaitOpt = None,
    stage: Annotated[str, typer.Option(help="1, 2, 3, all (the three in order) or mixed (the ablation).")] = "all",
    nproc: NprocOpt = 1,
) -> None:
    """Train on the built dataset: base bootstrap, VQ tokenizer, HealthGPT's stages; then evaluate."""
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _launch("train", nproc, config, overrides)
    ctx = load_context(config, overrides, wait=wait)
    from components.config.loader import apply_override
    from pipelines.stages import base_stage, evaluate_stage, train_stage

    choices = {"all": "1,2,3", "mixed": "mixed", "1": "1", "2": "2", "3": "3"}
    if stage not in choices:
        raise fail(2, f"error: --stage {stage!r}: choose one of {', '.join(choices)}")
    if choices[stage] != ctx.config.train.stages:
        data = json.loads(json.dumps(ctx.config.model_dump(mode="json", by_alias=True)))
        apply_override(data, f"train.stages={choices[stage]}")
        try:
            from components.config import validate_config

            ctx = type(ctx)(ctx.workspace, ctx.state, validate_config(data), ctx.config_path)
        except ConfigError as e:
            raise fail(2, f"config error: {e}") from None
    dataset = ctx.path(ctx.config.data.out)
    if not (dataset / "records.jsonl").exists():
        raise fail(1, f"no dataset at {dataset}: run `medtune data build` (or `medtune run`) first")
    with _ranks_or_exit(ctx), flow_run(ctx, "train") as (ctx, parent):
        base = base_stage(ctx, parent, console.print)
        trained = train_stage(ctx, parent, console.print, base_dir=base["base_dir"])
        evaluate_stage(ctx, parent, console.print, model_dir=trained["model_dir"])
    console.print(f"model: {trained['model_dir']}  (MLflow run {parent}, experiment 'train')")


@app.command()
def federated(
    config: ConfigOpt = None,
    overrides: Overrides = None,
    wait: WaitOpt = None,
    model_dir: Annotated[
        Path | None,
        typer.Option("--model-dir", help="A trained model folder to start from (default: base + train first)."),
    ] = None,
) -> None:
    """Federated SLoRA across the configured sites on Flower (simulation, or a SuperLink in deployment); then
    evaluate the federated model. Sites come from federated.sites (e.g. -c configs/federated.yaml)."""
    ctx = load_context(config, overrides, wait=wait)
    from pipelines.federated import federated_stage
    from pipelines.stages import base_stage, evaluate_stage, train_stage

    if not ctx.config.federated.enabled:
        raise fail(2, "error: no sites configured: set federated.sites (e.g. -c configs/federated.yaml)")
    dataset = ctx.path(ctx.config.data.out)
    if not (dataset / "records.jsonl").exists():
        raise fail(1, f"no dataset at {dataset}: run `medtune data build` (or `medtune run`) first")
    if model_dir is not None and not (model_dir / "trained.json").is_file():
        raise fail(2, f"error: --model-dir {model_dir}: no trained.json (not a `medtune train` model folder)")
    with flow_run(ctx, "federated") as (ctx, parent):
        if model_dir is None:
            base = base_stage(ctx, parent, console.print)
            model_dir = Path(train_stage(ctx, parent, console.print, base_dir=base["base_dir"])["model_dir"])
        fed = federated_stage(ctx, parent, console.print, model_dir=str(model_dir))
        evaluate_stage(ctx, parent, console.print, model_dir=fed["model_dir"])
    console.print(f"model: {fed['model_dir']}  (MLflow run {parent}, experiment 'federated')")


@app.command("rank-search")
def rank_search(config: ConfigOpt = None, overrides: Overrides = None, wait: WaitOpt = None) -> None:
    """Search per-module adapter ranks with ElaLoRA on the base model (runs even if rank_search.enabled is false)."""
    ctx = load_context(config, overrides, wait=wait)
    from pipelines.stages import base_stage, rank_search_stage

    if not ctx.config.rank_search.enabled:
        search = ctx.config.rank_search.model_copy(update={"enabled": True})
        ctx = dataclasses.replace(ctx, config=ctx.config.model_copy(update={"rank_search": search}))
    dataset = ctx.path(ctx.config.data.out)
    if not (dataset / "records.jsonl").exists():
        raise fail(1, f"no dataset at {dataset}: run `medtune data build` (or `medtune run`) first")
    with flow_run(ctx, "rank_search") as (ctx, parent):
        base = base_stage(ctx, parent, console.print)
        found = rank_search_stage(ctx, parent, console.print, base_dir=base["base_dir"])
    console.print(f"rank pattern: {found['pattern_file']}  (MLflow run {parent}, experiment 'rank_search')")


@app.command()
def safety(
    overrides: Overrides = None,
    config: ConfigOpt = None,
    wait: WaitOpt = None,
    sut: Annotated[
        list[str] | None,
        typer.Option(help="System under test: medtune, openai, refuse_all, comply_all (calibrate: repeat it)."),
    ] = None,
    sut_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--sut-arg", help="SUT setting KEY=VALUE, e.g. model_dir=runs/x/model adapter_dir=runs/x/adapter."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue a killed run from its journal (nothing finished is asked again): the newest unfinished "
            "one, or the RUN named right after it (`--resume RUN`: its folder, folder name or MLflow run id).",
        ),
    ] = False,
    only: Annotated[str | None, typer.Option("--set", help="calibrate: only the prompt set of this name.")] = None,
) -> None:
    """Run the safety benchmark (MLCommons v0.5 / AILuminate v1.0 grading) on any SUT; grades go to MLflow.
    `medtune safety calibrate --sut A --sut B`: per-hazard references of the custom prompt sets (ModelBench's rule)."""
    from pipelines import cli_safety

    words = list(overrides or [])
    mode = words.pop(0) if words and words[0] == "calibrate" else None
    run = (words.pop(0) if words and "=" not in words[0] else cli_safety.LATEST) if resume else None
    ctx = load_context(config, words, wait=wait)
    if mode == "calibrate":
        cli_safety.calibrate(ctx, sut, sut_arg, only)
    else:
        cli_safety.run(ctx, sut, sut_arg, run)


def _experiment_id(uri: str, name: str) -> str | None:
    """The id of the experiment retrains log to, or None when there is none yet (or the store cannot say)."""
    try:
        from mlflow import MlflowClient

        found = MlflowClient(uri).get_experiment_by_name(name)
    except Exception:
        return None
    return None if found is None else str(found.experiment_id)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
    host: Annotated[
        str, typer.Option(help="Interface to bind; keep 127.0.0.1 unless you front it with auth.")
    ] = "127.0.0.1",
    workers: Annotated[int, typer.Option(help="Server worker processes.")] = 1,
) -> None:
    """Serve the MLflow UI (and REST API) from the workspace's tracking store."""
    ctx = load_context(None, None)
    uri = ctx.tracking_uri
    from components.tracking.runs import ensure_store

    ensure_store(uri)  # the server migrates a new store too: not at the moment a command creates it (issue 19)
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--default-artifact-root",
        ctx.state.mlflow_artifacts.resolve().as_uri(),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    console.print(f"MLflow UI for {uri} on http://{host}:{port}  (Ctrl-C stops it)")
    experiment = _experiment_id(uri, ctx.config.tracking.experiment)
    if experiment is not None:  # MLflow 3.17 opens on its GenAI overview unless the link asks for the runs table
        from components.tracking.dashboard import runs_view_url

        console.print(f"retrains side by side: {runs_view_url(f'http://{host}:{port}', experiment)}")
    proc = subprocess.Popen(cmd, env=dict(os.environ))
    try:
        raise typer.Exit(proc.wait())
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=30)


@app.command()
def watch(
    config: ConfigOpt = None,
    overrides: Overrides = None,
    every: Annotated[
        float, typer.Option(min=0.2, help="Seconds between looks at the data (file list, sizes, times).")
    ] = 5,
    quiet: Annotated[
        float, typer.Option(min=0, help="A change starts a retrain once the data has not moved for this many seconds.")
    ] = 15,
    cron: Annotated[
        str | None, typer.Option(help="Also retrain on this cron schedule (UTC), e.g. '0 2 * * *'.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Retrain even when the data version equals the champion's.")] = False,
    name: Annotated[str, typer.Option(help="Deployment name (the flow is 'retrain').")] = "watched",
    port: Annotated[int, typer.Option(help="Port of the local Prefect server on 127.0.0.1 (0: a free one).")] = 0,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the local Prefect server.")] = 120,
) -> None:
    """Retrain when new data lands: watch the intake area, the raw tree and data.dvc, and start one retrain per
    settled change (never two at once; changes during a run start one follow-up) from a local Prefect server (or
    PREFECT_API_URL) until Ctrl-C. Overrides go to the runs. pipelines/watch.py says how."""
    from pipelines.watch import stop_on_sigterm

    stop_on_sigterm()  # before the server starts: whenever SIGTERM comes, the server is stopped on the way out
    ctx = load_context(config, overrides)
    from contextlib import nullcontext

    from pipelines.schedule import ScheduleError, check_cron, prefect_server
    from pipelines.watch import serve_and_watch

    if cron is not None:
        try:
            check_cron(cron)
        except ValueError as e:
            raise fail(2, f"error: --cron {cron!r}: {e}") from None
    url = os.environ.get("PREFECT_API_URL")
    home = ctx.state.prefect_home / "server"
    try:
        server = nullcontext(url) if url else prefect_server(home, port=port, timeout_s=timeout)
        if not url:
            console.print(f"starting a Prefect server on 127.0.0.1 (home {home}) ...", markup=False)
        with server as api_url:
            serve_and_watch(ctx, api_url, overrides=list(overrides or []), force=force, cron=cron, every_s=every,
                            quiet_s=quiet, name=name, echo=lambda line: console.print(line, markup=False))  # fmt: skip
    except ScheduleError as e:
        raise fail(1, f"error: {str(e).splitlines()[0].rstrip(':')} (its log: {home / 'server.log'})") from None
    except KeyboardInterrupt:
        pass
    console.print("watch stopped" + ("" if url else "; Prefect server shut down"))


@config_app.command("show")
def config_show(
    config: ConfigOpt = None,
    overrides: Overrides = None,
    schema: Annotated[bool, typer.Option("--schema", help="List every key with its description.")] = False,
) -> None:
    """Print the resolved config (after overrides), or the documented schema."""
    if schema:
        from components.config.schema import MedtuneConfig

        console.print_json(json.dumps(MedtuneConfig.model_json_schema(by_alias=True)))
        return
    ctx = load_context(config, overrides, make_state=False)
    import yaml

    from components.config import config_dict

    console.print(yaml.safe_dump(config_dict(ctx.config), sort_keys=False), markup=False)
    console.print(f"# config hash {ctx.config_hash}", markup=False)


@app.command()
def export(
    model_uri: Annotated[
        str,
        typer.Argument(
            help="models:/<name>@<alias>, models:/<name>/<version>, runs:/<id>/model or a local model folder."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (must not exist, or be empty).")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="peft | merged | hf")] = "peft",
    task: Annotated[str, typer.Option(help="The plugin --format merged merges: comprehension | generation.")] = (
        "comprehension"
    ),
    base: Annotated[
        str | None,
        typer.Option(help="The base checkpoint the adapters name (default: the run's model.path / model.lm.path)."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Export a trained model: plain peft adapters for the user's base, a merged Hugging Face model (LoRA, ElaLoRA)
    or the whole model as Transformers folders (components/training/export.py). Exit 2 when it cannot."""
    import tempfile

    ctx = load_context(config, None, make_state=False)
    from transformers.utils import logging as hf_logging

    from components.tracking.export import ModelNotFound, model_folder
    from components.training.export import ExportError, export_trained

    hf_logging.disable_progress_bar()  # one line per export on the console, not one bar per file loaded
    hf_logging.set_verbosity_error()

    with tempfile.TemporaryDirectory(prefix="medtune-export-") as scratch:
        try:
            folder = model_folder(model_uri, ctx.tracking_uri, Path(scratch))
            written = export_trained(folder, out, fmt, task=task, base=base)
        except (ModelNotFound, ExportError) as e:
            raise fail(2, f"error: {e}") from None
    console.print(f"exported {model_uri} as {fmt} -> {written}")


@app.command()
def init(directory: Annotated[Path, typer.Argument(help="Folder for the new workspace (created if missing).")]) -> None:
    """Create a workspace: git + DVC repository with medtune's dvc.yaml, configs and settings."""
    from pipelines.context import PACKAGE_ROOT

    if (directory / "dvc.yaml").exists():
        raise fail(2, f"error: {directory} already holds a dvc.yaml")
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore", "configs", "mlflow"):
        src = PACKAGE_ROOT / name
        if not src.exists():
            raise fail(2, f"error: {src} is missing; install medtune from its checkout (pip install -e .)")
        if src.is_dir():
            shutil.copytree(src, directory / name, dirs_exist_ok=True)
        else:
            shutil.copy2(src, directory / name)
    # data/intake holds identified files: git must never see them (DVC ignores them through .dvcignore)
    (directory / ".gitignore").write_text("/.medtune/\n/params.yaml\n/reports/\n/data/intake/\n__pycache__/\n")
    if not (directory / ".git").exists():
        subprocess.run(["git", "init", "-q"], cwd=directory, check=True)
    from components.runtime import configure_environment, state_paths
    from pipelines.dvc_ops import ensure_repo

    state = state_paths(directory.resolve()).make()
    configure_environment(state)
    ensure_repo(directory.resolve(), state)
    console.print(f"workspace ready: {directory}  (cd there and run `medtune run`)")


app.registered_commands.extend(registry_app.registered_commands)  # promote, report, schedule


def main() -> None:
    try:
        app()
    except UsageError as e:
        err.print(f"error: {e}", markup=False)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
