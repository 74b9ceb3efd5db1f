"""`medtune schedule`: a real Prefect server on 127.0.0.1, a one-minute cron schedule that fires, a scheduled run
that exits early because the champion already has its data version, and a clean stop (runner and server).

The workspace's champion is put in the registry by hand (what the register stage does after a full retrain) so the
fired run is cheap: it builds nothing new (DVC re-uses the build) and stops after the data stage."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import BIN, MEDTUNE, assert_offline, cli_env, free_port, medtune

pytestmark = pytest.mark.integration

SMALL = ["--config", "configs/smoke.yaml"]
SEED_DATA = """
from pathlib import Path
from pipelines.context import resolve, write_params
from pipelines.stages import connect, data_stage
ctx = resolve(Path("configs/smoke.yaml"), [], workspace=Path.cwd())
write_params(ctx)
session = connect(ctx)
parent = session.start_run("data-only")
data_stage(ctx, parent)
session.finish(parent)
"""
FIRE_WAIT_S = 150  # the next minute boundary, the scheduler's loop, the runner's poll, the run itself


def _post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3):
            return True
    except OSError:
        return False


def _kill_leftover_server(port: int) -> None:
    """After a failure: the Prefect server this test's `medtune schedule` started (its own process group)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"prefect" in b" ".join(args) and str(port).encode() in args:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(cmdline.parent.name), signal.SIGKILL)


def _seed_champion(ws: Path, data_version: str) -> str:
    from mlflow import MlflowClient

    from components.config import load_config

    name = load_config(ws / "configs" / "smoke.yaml").registry.name
    client = MlflowClient(f"sqlite:///{ws / '.medtune' / 'mlflow' / 'mlflow.db'}")
    client.create_registered_model(name)
    version = client.create_model_version(
        name, source=str(ws / ".medtune" / "mlflow" / "artifacts"), tags={"data_version": data_version}
    )
    client.set_registered_model_alias(name, "champion", version.version)
    return name


def test_one_minute_schedule_fires_and_skips_unchanged_data(make_workspace, netguard, tmp_path: Path) -> None:
    ws = make_workspace()
    env = cli_env(netguard, PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5", PREFECT_RUNNER_POLL_FREQUENCY="2")
    # A data version: retrain's data stage alone (dvc repro build), as the flow runs it but without Prefect.
    seed = subprocess.run(
        [str(BIN / "python"), "-c", SEED_DATA], cwd=ws, env=env, capture_output=True, text=True, timeout=300
    )
    assert seed.returncode == 0, seed.stdout + seed.stderr
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    version = next(o["md5"] for o in lock["stages"]["build"]["outs"] if o["path"] == "data/vlhealth")
    model = _seed_champion(ws, version)

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    log = tmp_path / "schedule.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [MEDTUNE, "schedule", *SMALL, "--cron", "* * * * *", "--port", str(port)],
            cwd=ws,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + FIRE_WAIT_S + 120  # + the server's start-up
        done: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not done:
            assert proc.poll() is None, f"medtune schedule exited with {proc.returncode}:\n{log.read_text()}"
            time.sleep(2)
            if not _answers(api + "/health"):
                continue
            runs = _post(api + "/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
            done = [r for r in runs if r.get("deployment_id")]
        text = log.read_text()
        assert done, f"no scheduled run completed within the wait:\n{text}"
        # the UI is told where its API is (it used to say port 4200: "Can't connect to Server API")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui-settings", timeout=30) as answer:
            assert json.loads(answer.read())["api_url"] == api
        run = done[0]
        assert run["parameters"]["skip_unchanged"] is True
        assert run["auto_scheduled"] is True  # made by the server's scheduler from the cron, not by hand
        assert f"retrain: skipped, data version {version} unchanged since champion {model} version 1" in text

        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{ws / '.medtune' / 'mlflow' / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("retrain").experiment_id])
        skipped = [r for r in runs if "medtune.retrain.skipped" in r.data.tags]
        assert len(skipped) >= 1 and skipped[0].info.status == "FINISHED"
        assert skipped[0].data.tags["medtune.promotion.decision"] == "skipped"
        stages = [r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == skipped[0].info.run_id]
        assert stages == ["data"]  # nothing after the data stage ran

        # The static report of that (real) run says why it stopped.
        page = tmp_path / "skipped.html"
        r = medtune(["report", skipped[0].info.run_id, "-o", str(page)], ws, env)
        assert r.returncode == 0 and "1 stages, skipped" in r.stdout, r.output
        html = page.read_text()
        assert '<span class="badge muted">skipped</span>' in html and "unchanged since champion" in html

        # SIGTERM (what a service manager sends) stops the runner and then the server it started.
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
        assert "Prefect server shut down" in log.read_text()
        assert not _answers(api + "/health")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        _kill_leftover_server(port)
    assert_offline(netguard)
