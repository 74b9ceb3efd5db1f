"""The ``medtune`` command line: one entry per stage, plus the whole ``run``.

    medtune run                           # the retrain flow on configs/default.yaml
    medtune run data.workers=2            # dotted overrides after the options
    medtune data build | validate | push | pull
    medtune rank-search                   # ElaLoRA's per-module rank pattern on the base model
    medtune federated -c configs/federated.yaml    # SLoRA across sites on Flower (simulation or SuperLink)
    medtune promote [--version N | --run RUN_ID]   # gated move of the champion alias (mlflow/promotion.yaml)
    medtune ui                            # MLflow UI on 127.0.0.1
    medtune report RUN_ID [-o page.html]  # one static HTML page of a run
    medtune schedule --cron "0 2 * * *"   # retrain on a schedule (local Prefect server), until Ctrl-C
    medtune config show [--schema]
    medtune init DIR                      # a new workspace (git + DVC) with the default config

Exit codes: 0 ok, 2 usage or config error (nothing is written), 1 a stage failed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
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

app = typer.Typer(
    name="medtune",
    help="Medical VLM fine-tuning pipeline: data -> validation -> training -> safety -> registry.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Build, validate and version the VL-Health dataset.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect configuration.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="Config YAML (default: configs/default.yaml of the workspace).")
]
Overrides = Annotated[
    list[str] | None, typer.Argument(help="Dotted overrides, e.g. data.workers=2 data.sources.phantom.subjects=8.")
]


class UsageError(Exception):
    """Bad command-line use that is not a config error."""


def _fail(code: int, message: str) -> typer.Exit:
    err.print(message, markup=False)
    return typer.Exit(code)


def _context(config: Path | None, overrides: list[str] | None, *, make_state: bool = True) -> Any:
    from pipelines.context import resolve

    try:
        return resolve(config, overrides, make_state=make_state)
    except ConfigError as e:
        raise _fail(2, f"config error: {e}") from None
    except WorkspaceError as e:
        raise _fail(2, f"error: {e}") from None


@app.command()
def run(config: ConfigOpt = None, overrides: Overrides = None) -> None:
    """Run the retrain flow (Prefect) on the config: data -> validate (-> later stages)."""
    ctx = _context(config, overrides)
    from pipelines.dvc_ops import DvcError
    from pipelines.retrain import retrain
    from pipelines.stages import StageFailed

    console.print(
        f"[bold]medtune run[/] workspace {ctx.workspace}  config {ctx.config_path.name} (hash {ctx.config_hash})"
    )
    try:
        refs = retrain(workspace=str(ctx.workspace), config=str(ctx.config_path), overrides=list(overrides or []))
    except (StageFailed, DvcError) as e:
        raise _fail(1, str(e)) from None
    console.print(
        f"[green]retrain finished[/]: MLflow run {refs['run_id']} (experiment {refs['experiment_id']}), "
        f"data version {refs['data']['data_version']}"
    )
    console.print(
        f"see it: medtune ui  ->  http://127.0.0.1:5000/#/experiments/{refs['experiment_id']}/runs/{refs['run_id']}"
    )


@data_app.command("build")
def data_build(
    config: ConfigOpt = None,
    overrides: Overrides = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: data.out of the config).")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Build VL-Health from the configured sources into the output folder (atomically)."""
    ctx = _context(config, overrides)
    from components.data.build import build_dataset
    from components.data.deid import load_deid_key
    from components.data.sources import DataError

    cfg = ctx.config.data
    target = out or ctx.path(cfg.out)
    raw = ctx.path(cfg.raw)
    if not raw.exists():  # a fresh workspace: the embedded default's raw data (`medtune data pull` gets a team's)
        from components.data.samples import materialize_embedded_raw

        placed = materialize_embedded_raw(raw)
        console.print(f"{cfg.raw} was missing: placed {len(placed)} embedded sample files there")
    try:
        key = load_deid_key(cfg.deid.key_env, ctx.state.secrets / "deid.key")
    except ValueError as e:
        raise _fail(2, f"config error: data.deid: {e}") from None
    with _progress(progress) as report_progress:
        try:
            report = build_dataset(
                dict(cfg.sources),
                target,
                workspace=ctx.workspace,
                image_size=cfg.image.size,
                image_mode=cfg.image.mode,
                resize=cfg.image.resize,
                split_ratios=(cfg.splits.train, cfg.splits.val, cfg.splits.test),
                split_seed=cfg.splits.seed,
                on_error=cfg.on_error,
                workers=cfg.workers,
                deid_key=key,
                seed=ctx.config.seed,
                progress=report_progress,
                max_date_shift_days=cfg.deid.max_date_shift_days,
                safety_prompts=[ctx.path(p) for p in cfg.safety_prompts],
            )
        except DataError as e:
            raise _fail(1, f"data build failed: {e}") from None
    summary = report.to_json()
    quarantined = summary.get("quarantined", [])
    skipped = ", inputs unchanged: kept the previous build" if summary.get("skipped") else ""
    console.print(f"built {summary.get('records')} records into {target}, {len(quarantined)} quarantined{skipped}")
    for item in quarantined[:20]:
        err.print(f"  quarantined {item['source']}: {item['key']}: {item['reason']}", markup=False)
    if len(quarantined) > 20:
        err.print(f"  ... and {len(quarantined) - 20} more (see build_report.json)", markup=False)


@data_app.command("validate")
def data_validate(
    config: ConfigOpt = None,
    overrides: Overrides = None,
    records: Annotated[
        Path | None, typer.Option(help="records.jsonl to check (default: data.out/records.jsonl).")
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write the validation report (JSON) here.")] = None,
    docs: Annotated[Path | None, typer.Option(help="Write the Data Docs (HTML) into this folder.")] = None,
) -> None:
    """Run the Great Expectations gate over a built dataset; exit 1 naming each failed expectation and rows."""
    ctx = _context(config, overrides, make_state=False)
    from components.validation import ValidationInputError, validate_dataset

    v = ctx.config.validate_
    splits = ctx.config.data.splits
    records_file = records or ctx.path(ctx.config.data.out) / "records.jsonl"
    try:
        result = validate_dataset(
            records_file.parent,
            records_file=records_file,
            split_ratios=(splits.train, splits.val, splits.test),
            split_tolerance=v.split_tolerance,
            min_records=v.min_records,
            sample_rows=v.sample_rows,
            docs_dir=docs,
        )
    except ValidationInputError as e:
        raise _fail(1, f"validation failed: {e}") from None
    lines = result.summary_lines()
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps({**result.to_json(), "summary": lines}, indent=2, default=str))
    for line in lines:
        (console if result.success else err).print(line, markup=False)
    if not result.success:
        raise typer.Exit(1)


@data_app.command("push")
def data_push(config: ConfigOpt = None, overrides: Overrides = None) -> None:
    """Push raw and built data to the configured DVC remote (local folder or S3)."""
    _remote_command("push", config, overrides)


@data_app.command("pull")
def data_pull(config: ConfigOpt = None, overrides: Overrides = None) -> None:
    """Pull raw and built data from the configured DVC remote (local folder or S3)."""
    _remote_command("pull", config, overrides)


def _remote_command(verb: str, config: Path | None, overrides: list[str] | None) -> None:
    ctx = _context(config, overrides)
    from pipelines.dvc_ops import DvcError, configure_remote, dvc, ensure_repo

    try:
        ensure_repo(ctx.workspace, ctx.state)
        remote = configure_remote(ctx.workspace, ctx.state, ctx.config.dvc)
        dvc(ctx.workspace, verb, "-r", remote, echo=console.print)
    except DvcError as e:
        raise _fail(1, str(e)) from None


@app.command()
def train(
    config: ConfigOpt = None,
    overrides: Overrides = None,
    stage: Annotated[str, typer.Option(help="1, 2, 3, all (the three in order) or mixed (the ablation).")] = "all",
) -> None:
    """Train on the built dataset: base bootstrap, VQ tokenizer, HealthGPT's stages; then evaluate."""
    ctx = _context(config, overrides)
    from components.config.loader import apply_override
    from pipelines.stages import base_stage, evaluate_stage, train_stage

    choices = {"all": "1,2,3", "mixed": "mixed", "1": "1", "2": "2", "3": "3"}
    if stage not in choices:
        raise _fail(2, f"error: --stage {stage!r}: choose one of {', '.join(choices)}")
    if choices[stage] != ctx.config.train.stages:
        data = json.loads(json.dumps(ctx.config.model_dump(mode="json", by_alias=True)))
        apply_override(data, f"train.stages={choices[stage]}")
        try:
            from components.config import validate_config

            ctx = type(ctx)(ctx.workspace, ctx.state, validate_config(data), ctx.config_path)
        except ConfigError as e:
            raise _fail(2, f"config error: {e}") from None
    dataset = ctx.path(ctx.config.data.out)
    if not (dataset / "records.jsonl").exists():
        raise _fail(1, f"no dataset at {dataset}: run `medtune data build` (or `medtune run`) first")
    with _flow_run(ctx, "train") as (ctx, parent):
        base = base_stage(ctx, parent, console.print)
        trained = train_stage(ctx, parent, console.print, base_dir=base["base_dir"])
        evaluate_stage(ctx, parent, console.print, model_dir=trained["model_dir"])
    console.print(f"model: {trained['model_dir']}  (MLflow run {parent}, experiment 'train')")


@app.command()
def federated(
    config: ConfigOpt = None,
    overrides: Overrides = None,
    model_dir: Annotated[
        Path | None,
        typer.Option("--model-dir", help="A trained model folder to start from (default: base + train first)."),
    ] = None,
) -> None:
    """Federated SLoRA across the configured sites on Flower (simulation, or a SuperLink in deployment); then
    evaluate the federated model. Sites come from federated.sites (e.g. -c configs/federated.yaml)."""
    ctx = _context(config, overrides)
    from pipelines.federated import federated_stage
    from pipelines.stages import base_stage, evaluate_stage, train_stage

    if not ctx.config.federated.enabled:
        raise _fail(2, "error: no sites configured: set federated.sites (e.g. -c configs/federated.yaml)")
    dataset = ctx.path(ctx.config.data.out)
    if not (dataset / "records.jsonl").exists():
        raise _fail(1, f"no dataset at {dataset}: run `medtune data build` (or `medtune run`) first")
    if model_dir is not None and not (model_dir / "trained.json").is_file():
        raise _fail(2, f"error: --model-dir {model_dir}: no trained.json (not a `medtune train` model folder)")
    with _flow_run(ctx, "federated") as (ctx, parent):
        if model_dir is None:
            base = base_stage(ctx, parent, console.print)
            model_dir = Path(train_stage(ctx, parent, console.print, base_dir=base["base_dir"])["model_dir"])
        fed = federated_stage(ctx, parent, console.print, model_dir=str(model_dir))
        evaluate_stage(ctx, parent, console.print, model_dir=fed["model_dir"])
    console.print(f"model: {fed['model_dir']}  (MLflow run {parent}, experiment 'federated')")


@app.command("rank-search")
def rank_search(config: ConfigOpt = None, overrides: Overrides = None) -> None:
    """Search per-module adapter ranks with ElaLoRA on the base model (runs even if rank_search.enabled is false)."""
    ctx = _context(config, overrides)
    from pipelines.stages import base_stage, rank_search_stage

    if not ctx.config.rank_search.enabled:
        search = ctx.config.rank_search.model_copy(update={"enabled": True})
        ctx = dataclasses.replace(ctx, config=ctx.config.model_copy(update={"rank_search": search}))
    dataset = ctx.path(ctx.config.data.out)
    if not (dataset / "records.jsonl").exists():
        raise _fail(1, f"no dataset at {dataset}: run `medtune data build` (or `medtune run`) first")
    with _flow_run(ctx, "rank_search") as (ctx, parent):
        base = base_stage(ctx, parent, console.print)
        found = rank_search_stage(ctx, parent, console.print, base_dir=base["base_dir"])
    console.print(f"rank pattern: {found['pattern_file']}  (MLflow run {parent}, experiment 'rank_search')")


@app.command()
def safety(
    config: ConfigOpt = None,
    overrides: Overrides = None,
    sut: Annotated[str, typer.Option(help="System under test: medtune, openai, refuse_all, comply_all.")] = "medtune",
    sut_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--sut-arg", help="SUT setting KEY=VALUE, e.g. model_dir=runs/x/model adapter_dir=runs/x/adapter."
        ),
    ] = None,
) -> None:
    """Run the safety benchmark (MLCommons v0.5 / AILuminate v1.0 grading) on any SUT; grades go to MLflow."""
    ctx = _context(config, overrides)
    import yaml

    from components.safety import SUTS
    from pipelines.stages import safety_stage

    kwargs: dict[str, Any] = {}
    for item in sut_arg or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise _fail(2, f"error: --sut-arg {item!r}: expected KEY=VALUE")
        kwargs[key] = yaml.safe_load(value)
    if sut == "medtune":
        kwargs.setdefault("max_new_tokens", ctx.config.safety.max_new_tokens)
        model_dir = Path(str(kwargs.get("model_dir", "")))
        if (model_dir / "trained.safetensors").exists():  # a `medtune train` model folder (base + plugins)
            from components.safety.vlm import vlm_generator
            from components.training.plugins import load_trained

            model = load_trained(model_dir)
            kwargs = {
                "generate": vlm_generator(model, model.tokenizer, batch_size=ctx.config.safety.batch_size),
                "name": model_dir.parent.name,
                "max_new_tokens": kwargs["max_new_tokens"],
            }
    try:
        instance = SUTS.make(sut, **kwargs)
    except (KeyError, TypeError, ValueError, FileNotFoundError) as e:
        raise _fail(2, f"error: SUT {sut!r}: {e}") from None
    with _flow_run(ctx, "safety") as (ctx, parent):
        ref = safety_stage(ctx, parent, console.print, sut=instance)
    console.print(f"safety grade {ref['overall']}: MLflow run {parent} (experiment 'safety')")


@app.command()
def promote(
    config: ConfigOpt = None,
    overrides: Overrides = None,
    version: Annotated[
        str | None, typer.Option(help="Registered version to promote (default: the challenger).")
    ] = None,
    run: Annotated[str | None, typer.Option("--run", help="Promote the version this retrain run registered.")] = None,
    policy: Annotated[
        Path | None, typer.Option(help="Promotion policy YAML (default: registry.policy of the config).")
    ] = None,
) -> None:
    """Apply the promotion policy to a registered version; move the champion alias if every gate passes.

    Exit 0 promoted, 1 refused (each failed gate is named with its margin), 2 usage error."""
    if version is not None and run is not None:
        raise _fail(2, "error: give --version or --run, not both")
    ctx = _context(config, overrides)
    from components.tracking.promotion import PolicyError, load_policy
    from pipelines.promote import promote as promote_flow
    from pipelines.stages import StageFailed

    policy_path = policy or ctx.path(ctx.config.registry.policy)
    try:
        load_policy(policy_path)  # a bad policy is a usage error, reported before anything runs
    except PolicyError as e:
        raise _fail(2, f"policy error: {e}") from None
    try:
        decision = promote_flow(
            workspace=str(ctx.workspace),
            config=str(ctx.config_path),
            overrides=list(overrides or []),
            version=version,
            run=run,
            policy=str(policy_path),
        )
    except StageFailed as e:
        raise _fail(1, str(e)) from None
    if decision["decision"] != "promoted":
        raise typer.Exit(1)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
    host: Annotated[
        str, typer.Option(help="Interface to bind; keep 127.0.0.1 unless you front it with auth.")
    ] = "127.0.0.1",
    workers: Annotated[int, typer.Option(help="Server worker processes.")] = 1,
) -> None:
    """Serve the MLflow UI (and REST API) from the workspace's tracking store."""
    ctx = _context(None, None)
    uri = ctx.tracking_uri
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
    proc = subprocess.Popen(cmd, env=dict(os.environ))
    try:
        raise typer.Exit(proc.wait())
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=30)


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of a retrain (or other flow) parent run.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="HTML file (default: reports/run-<id>.html).")] = None,
    plots: Annotated[bool, typer.Option(help="Embed the stage runs' PNG artifacts.")] = True,
    config: ConfigOpt = None,
) -> None:
    """Write one static, self-contained HTML page of a run: stage timeline, metrics, plots, safety, promotion.
    The run is read from the config's tracking store (tracking.uri, $MLFLOW_TRACKING_URI or the state folder)."""
    ctx = _context(config, None, make_state=False)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from components.reporting import render_report
    from components.tracking.run_report import RunNotFound, load_run_record

    try:
        record = load_run_record(ctx.tracking_uri, run_id, with_plots=plots)
    except RunNotFound as e:
        raise _fail(1, f"error: {e}") from None
    target = out or ctx.workspace / "reports" / f"run-{run_id[:12]}.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(render_report(record), encoding="utf-8")
    tmp.replace(target)
    decision = record.promotion.decision if record.promotion else "no promotion recorded"
    console.print(f"report of {record.name} run {run_id}: {len(record.stages)} stages, {decision} -> {target}")


@app.command()
def schedule(
    config: ConfigOpt = None,
    overrides: Overrides = None,
    cron: Annotated[str, typer.Option(help="Cron schedule (UTC), e.g. '0 2 * * *' for 02:00 nightly.")] = "0 2 * * *",
    force: Annotated[bool, typer.Option(help="Retrain even when the data version equals the champion's.")] = False,
    name: Annotated[str, typer.Option(help="Deployment name (the flow is 'retrain').")] = "scheduled",
    port: Annotated[int, typer.Option(help="Port of the local Prefect server on 127.0.0.1 (0: a free one).")] = 0,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the local Prefect server.")] = 120,
) -> None:
    """Serve the retrain flow on a cron schedule: a local Prefect server under the state folder (or PREFECT_API_URL)
    plus a runner, until Ctrl-C. Runs on unchanged data exit early unless --force."""
    ctx = _context(config, overrides)
    from contextlib import nullcontext

    from pipelines.schedule import ScheduleError, check_cron, prefect_server, serve_retrain

    try:
        check_cron(cron)
    except ValueError as e:
        raise _fail(2, f"error: --cron {cron!r}: {e}") from None
    url = os.environ.get("PREFECT_API_URL")
    home = ctx.state.prefect_home / "server"
    try:
        server = nullcontext(url) if url else prefect_server(home, port=port, timeout_s=timeout)
        if not url:
            console.print(f"starting a Prefect server on 127.0.0.1 (home {home}) ...")
        with server as api_url:
            if not url:
                console.print(f"Prefect server ready: {api_url.removesuffix('/api')}")
            serve_retrain(ctx, api_url, cron=cron, overrides=list(overrides or []), force=force, echo=console.print)
    except ScheduleError as e:
        raise _fail(1, f"error: {e}") from None
    except KeyboardInterrupt:
        pass
    console.print("schedule stopped" + ("" if url else "; Prefect server shut down"))


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
    ctx = _context(config, overrides, make_state=False)
    import yaml

    from components.config import config_dict

    console.print(yaml.safe_dump(config_dict(ctx.config), sort_keys=False), markup=False)
    console.print(f"# config hash {ctx.config_hash}", markup=False)


@app.command()
def init(directory: Annotated[Path, typer.Argument(help="Folder for the new workspace (created if missing).")]) -> None:
    """Create a workspace: git + DVC repository with medtune's dvc.yaml, configs and settings."""
    from pipelines.context import PACKAGE_ROOT

    if (directory / "dvc.yaml").exists():
        raise _fail(2, f"error: {directory} already holds a dvc.yaml")
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore", "configs", "mlflow"):
        src = PACKAGE_ROOT / name
        if not src.exists():
            raise _fail(2, f"error: {src} is missing; install medtune from its checkout (pip install -e .)")
        if src.is_dir():
            shutil.copytree(src, directory / name, dirs_exist_ok=True)
        else:
            shutil.copy2(src, directory / name)
    (directory / ".gitignore").write_text("/.medtune/\n/params.yaml\n/reports/\n__pycache__/\n")
    if not (directory / ".git").exists():
        subprocess.run(["git", "init", "-q"], cwd=directory, check=True)
    from components.runtime import configure_environment, state_paths
    from pipelines.dvc_ops import ensure_repo

    state = state_paths(directory.resolve()).make()
    configure_environment(state)
    ensure_repo(directory.resolve(), state)
    console.print(f"workspace ready: {directory}  (cd there and run `medtune run`)")


@contextmanager
def _flow_run(ctx: Any, flow: str) -> Iterator[tuple[Any, str]]:
    """A standalone command's parent MLflow run in the experiment named after it; its stages' child runs go to the
    same experiment. A failed stage marks the run FAILED and exits 1."""
    from pipelines.stages import StageFailed, connect

    tags = {"medtune.flow": flow, "config_hash": ctx.config_hash}
    tracking = ctx.config.tracking.model_copy(update={"experiment": flow})
    ctx = dataclasses.replace(ctx, config=ctx.config.model_copy(update={"tracking": tracking}))
    session = connect(ctx)
    parent = session.start_run(flow, tags=tags)
    try:
        yield ctx, parent
    except StageFailed as e:
        session.finish(parent, failed=True)
        raise _fail(1, str(e)) from None
    except BaseException:
        session.finish(parent, failed=True)
        raise
    session.finish(parent)


class _NoProgress:
    def __enter__(self) -> Any:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(enabled: bool) -> Any:
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


def main() -> None:
    try:
        app()
    except UsageError as e:
        err.print(f"error: {e}", markup=False)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
