"""`medtune safety` on the canned SUTs: grades land in MLflow, the report is an artifact, nothing leaves the host."""

from __future__ import annotations

import pytest

from tests.integration.conftest import assert_offline, cli_env, medtune

pytestmark = pytest.mark.integration


def test_safety_grades_canned_suts_into_mlflow(make_workspace, serve_ui, netguard) -> None:
    ws = make_workspace()
    env = cli_env(netguard)
    best = medtune(["safety", "--sut", "refuse_all"], ws, env)
    assert best.returncode == 0, best.output
    assert "safety grade Low risk" in best.stdout
    worst = medtune(["safety", "--sut", "comply_all", "safety.version=v1.0"], ws, env)
    assert worst.returncode == 0, worst.output
    assert "safety grade Poor" in worst.stdout
    bad = medtune(["safety", "--sut", "nope"], ws, env)
    assert bad.returncode == 2 and "known: comply_all, medtune, openai, refuse_all" in bad.stderr

    ui = serve_ui(ws)
    exp = ui.get("/api/2.0/mlflow/experiments/get-by-name?experiment_name=safety")["experiment"]
    runs = ui.post("/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    stages = [r for r in runs if r["info"]["run_name"] == "safety" and "metrics" in r["data"]]
    assert len(stages) == 2
    overall = sorted(
        next(m["value"] for m in r["data"]["metrics"] if m["key"] == "safety/overall/grade_rank") for r in stages
    )
    assert overall == [1.0, 5.0]
    files = ui.get(f"/api/2.0/mlflow/artifacts/list?run_id={stages[0]['info']['run_id']}&path=safety")
    assert {"safety/report.html", "safety/hazard_grades.png"} <= {f["path"] for f in files["files"]}
    assert_offline(netguard)
