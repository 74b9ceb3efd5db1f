"""``medtune promote``, ``medtune history``, ``medtune report`` and ``medtune schedule``: the registry, its
champion timeline, the run page and the schedule (registered on the main app by :mod:`pipelines.cli`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli_common import (
    ConfigOpt,
    Overrides,
    console,
    fail,
    load_context,
)

app = typer.Typer()  # collects the commands; pipelines.cli copies them onto the medtune app


@app.command()
def promote(
    config: ConfigOpt = None,
    overrides: Overrides = None,
    version: Annotated[
        str | None, typer.Option(help="Registered version to promote (default: the newest registered version).")
    ] = None,
    run: Annotated[str | None, typer.Option("--run", help="Promote the version this retrain run registered.")] = None,
    policy: Annotated[
        Path | None, typer.Option(help="Promotion policy YAML (default: registry.policy of the config).")
    ] = None,
) -> None:
    """Apply the promotion policy to a registered version; move the champion alias if every gate passes. The
    decision is journaled before the alias moves (medtune history); an unfinished earlier one is finished first.

    Exit 0 promoted, 1 refused (each failed gate named with its margin) or failed, 2 usage error."""
    if version is not None and run is not None:
        raise fail(2, "error: give --version or --run, not both")
    ctx = load_context(config, overrides)
    from components.tracking.promotion import PolicyError, load_policy
    from pipelines.cli_common import flow_log_file, route_flow_logs
    from pipelines.promote import promote as promote_flow
    from pipelines.stages import StageFailed

    policy_path = policy or ctx.path(ctx.config.registry.policy)
    try:
        load_policy(policy_path)  # a bad policy is a usage error, reported before anything runs
    except PolicyError as e:
        raise fail(2, f"policy error: {e}") from None
    route_flow_logs(flow_log_file(ctx.state))  # a failure is said once, here; Prefect's traceback goes to the log
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
        raise fail(1, str(e)) from None
    if decision["decision"] != "promoted":
        raise typer.Exit(1)


@app.command()
def history(
    model: Annotated[
        str | None, typer.Argument(help="Registered model (default: registry.name of the config).")
    ] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per decision instead of a line.")] = False,
) -> None:
    """The champion timeline from the promotion journal (<state>/registry/<model>/journal.jsonl): per decision its
    time (UTC), version, outcome (promoted, refused, skipped, completed, rolled back, no decision, unfinished), the
    previous champion, the failed gates, the policy file's sha256 and who ran it. Reads the state folder only.

    Exit 0, 1 when the journal holds another model but not this one, 2 usage error."""
    ctx = load_context(config, None, make_state=False)
    import json
    from dataclasses import asdict

    from components.tracking import journal

    name = model or ctx.config.registry.name
    path = journal.journal_path(ctx.state.root, name)
    rows = journal.timeline(journal.Journal(path).records())
    if not rows:
        others = sorted(set(journal.journals(ctx.state.root)) - {name})
        if others:
            raise fail(
                1, f"error: no promotion decisions for {name!r} ({path}); journals exist for: {', '.join(others)}"
            )
        console.print(f"no promotion decisions recorded for {name} yet ({path})", markup=False)
        return
    if as_json:
        for row in rows:
            console.print(json.dumps(asdict(row)), markup=False, soft_wrap=True)
        return
    console.print(f"champion timeline of {name}: {len(rows)} decision(s) in {path}", markup=False)
    for row in rows:
        console.print(journal.format_row(row), markup=False)


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of a retrain (or other flow) parent run.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="HTML file (default: reports/run-<id>.html).")] = None,
    plots: Annotated[bool, typer.Option(help="Embed the stage runs' PNG artifacts.")] = True,
    config: ConfigOpt = None,
) -> None:
    """Write one static, self-contained HTML page of a run: stage timeline, metrics, plots, safety, promotion and
    the registered model's champion timeline (from the promotion journal, when there is one).
    The run is read from the config's tracking store (tracking.uri, $MLFLOW_TRACKING_URI or the state folder)."""
    ctx = load_context(config, None, make_state=False)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from components.reporting import render_report
    from components.tracking.run_report import RunNotFound, load_run_record

    try:
        record = load_run_record(ctx.tracking_uri, run_id, with_plots=plots, journal_root=ctx.state.root,
                                 model=ctx.config.registry.name)  # fmt: skip
    except RunNotFound as e:
        raise fail(1, f"error: {e}") from None
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
    ctx = load_context(config, overrides)
    from contextlib import nullcontext

    from pipelines.schedule import ScheduleError, check_cron, prefect_server, serve_retrain

    try:
        check_cron(cron)
    except ValueError as e:
        raise fail(2, f"error: --cron {cron!r}: {e}") from None
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
        raise fail(1, f"error: {e}") from None
    except KeyboardInterrupt:
        pass
    console.print("schedule stopped" + ("" if url else "; Prefect server shut down"))
