"""``medtune data build | validate | push | pull``: build, validate and version the VL-Health dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli_common import (
    ConfigOpt,
    Overrides,
    WaitOpt,
    console,
    err,
    fail,
    load_context,
    progress_bars,
)

data_app = typer.Typer(help="Build, validate and version the VL-Health dataset.", no_args_is_help=True)


@data_app.command("ingest")
def data_ingest(
    config: ConfigOpt = None,
    overrides: Overrides = None,
    wait: WaitOpt = None,
    force: Annotated[bool, typer.Option(help="Re-ingest even when the intake is unchanged.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """De-identify the intake area (data.intake) into the raw tree: headers (PS3.15 basic profile), file names
    (keyed pseudonyms) and burned-in text (data.deid.burned_in). Identified files never leave the intake."""
    ctx = load_context(config, overrides, wait=wait)
    from components.data.sources import DataError
    from pipelines.stages import ingest_intake

    with progress_bars(progress) as report_progress:
        try:
            report = ingest_intake(ctx, console.print, progress=report_progress, force=force)
        except DataError as e:
            raise fail(1, f"data ingest failed: {e}") from None
        except ValueError as e:  # the key: too short, unreadable
            raise fail(2, f"config error: data.deid: {e}") from None
    if not report["sources"] and not report["skipped"]:
        console.print(f"nothing to ingest: no DICOM source has an intake folder under {ctx.config.data.intake}")


@data_app.command("build")
def data_build(
    config: ConfigOpt = None,
    overrides: Overrides = None,
    wait: WaitOpt = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: data.out of the config).")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    ingest: Annotated[
        bool, typer.Option(help="Ingest the intake area first (off when DVC runs the build: raw is its input).")
    ] = True,
) -> None:
    """Build VL-Health from the configured sources into the output folder (atomically)."""
    ctx = load_context(config, overrides, wait=wait)
    from components.data.build import build_dataset
    from components.data.deid import load_deid_key
    from components.data.intake import MAP_FILE
    from components.data.sources import DataError

    cfg = ctx.config.data
    target = out or ctx.path(cfg.out)
    try:
        key = load_deid_key(cfg.deid.key_env, ctx.state.secrets / "deid.key")
    except ValueError as e:
        raise fail(2, f"config error: data.deid: {e}") from None
    with progress_bars(progress) as report_progress:
        try:
            if ingest:
                from pipelines.stages import ingest_intake

                ingest_intake(ctx, console.print, progress=report_progress)
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
                min_records=ctx.config.validate_.min_records,
                on_official_conflict=cfg.on_official_conflict,
                pseudonym_map=ctx.state.secrets / MAP_FILE,
            )
        except DataError as e:
            raise fail(1, f"data build failed: {e}") from None
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
    ctx = load_context(config, overrides, make_state=False)
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
        raise fail(1, f"validation failed: {e}") from None
    lines = result.summary_lines()
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps({**result.to_json(), "summary": lines}, indent=2, default=str))
    for line in lines:
        (console if result.success else err).print(line, markup=False)
    if not result.success:
        raise typer.Exit(1)


@data_app.command("push")
def data_push(config: ConfigOpt = None, overrides: Overrides = None, wait: WaitOpt = None) -> None:
    """Push raw and built data to the configured DVC remote (local folder or S3)."""
    _remote_command("push", config, overrides, wait)


@data_app.command("pull")
def data_pull(config: ConfigOpt = None, overrides: Overrides = None, wait: WaitOpt = None) -> None:
    """Pull raw and built data from the configured DVC remote (local folder or S3)."""
    _remote_command("pull", config, overrides, wait)


def _remote_command(verb: str, config: Path | None, overrides: list[str] | None, wait: float | None) -> None:
    ctx = load_context(config, overrides, wait=wait)
    from pipelines.dvc_ops import DvcError, configure_remote, dvc, ensure_repo

    try:
        ensure_repo(ctx.workspace, ctx.state)
        remote = configure_remote(ctx.workspace, ctx.state, ctx.config.dvc)
        dvc(ctx.workspace, verb, "-r", remote, echo=console.print)
    except DvcError as e:
        raise fail(1, str(e)) from None
