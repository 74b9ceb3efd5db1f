"""What a retrain's parent run carries for MLflow's runs table (issue 19 item 6), on a real SQLite store in tmp: the
headline metrics of its stages' child runs, the dataset input, the decision, and the experiment's kind tag.

The stages are stand-ins that log what the real ones log (the same metric names and, for data, the same dataset
call); :func:`retrain_like` is also what the dashboard's browser test runs (tests/integration/test_dashboard.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from components.config import load_config
from components.runtime import state_paths
from components.tracking import TrackingSession
from components.tracking.dashboard import (
    EXPERIMENT_KIND_TAG,
    SHARED_VIEW_PREFIX,
    TRAINING_KIND,
    VIEW_KEY,
    prepare_experiment,
    runs_view_url,
)
from pipelines import stages
from pipelines.context import Context
from pipelines.retrain import DECISION_TAG, HEADLINE_METRICS, Stage, run_stages

REPO = Path(__file__).resolve().parents[3]
VERSION = "0123456789abcdef0123456789abcdef.dir"  # DVC's directory md5: 36 characters, MLflow's digest limit
REPORT = {"records": 303, "images": 42, "per_split": {"train": 234, "val": 42, "test": 27}, "inputs_stamp": "x"}


def context(workspace: Path, *overrides: str) -> Context:
    config = REPO / "configs" / "smoke.yaml"
    return Context(workspace, state_paths(workspace).make(), load_config(config, list(overrides)), config)


def retrain_like(ctx: Context, *, accuracy: float, grade_rank: float, decision: str, reused: bool) -> dict[str, Any]:
    """A retrain through :func:`run_stages` whose stages log what data, evaluate, safety and register log."""
    folder = ctx.path(ctx.config.data.out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "build_report.json").write_text(json.dumps(REPORT))

    def data(ctx: Context, parent: str, echo: Any) -> dict[str, Any]:
        session = stages.connect(ctx)
        with session.child(parent, "data") as run_id:
            source = stages.dvc_remote_url(ctx)
            stages.log_dataset_input(session, run_id, version=VERSION, folder=folder, source=source)
            session.set_tags(run_id, {"data_version": VERSION, "dvc.reused": str(reused).lower()})
            session.log_metrics(run_id, {"records": 303.0})
        return {"data_version": VERSION, "reused": reused, "dataset": str(folder), "dataset_source": source,
                "run_id": run_id}  # fmt: skip

    def evaluate(ctx: Context, parent: str, echo: Any) -> dict[str, Any]:
        session = stages.connect(ctx)
        with session.child(parent, "evaluate") as run_id:
            session.log_metrics(run_id, {"closed/accuracy": accuracy, "closed/accuracy/modality=CT": 0.5,
                                         "open/recall": accuracy / 2, "generation/ssim": 0.25})  # fmt: skip
        return {"metrics": "metrics.json", "run_id": run_id}

    def safety(ctx: Context, parent: str, echo: Any) -> dict[str, Any]:
        session = stages.connect(ctx)
        with session.child(parent, "safety") as run_id:
            session.log_metrics(run_id, {"safety/overall/grade_rank": grade_rank, "safety/overall/u": 0.1,
                                         "safety/over_refusal/safe_refused_rate": 0.125})  # fmt: skip
        return {"overall": "G", "run_id": run_id, "result": "result.json"}

    def register(ctx: Context, parent: str, echo: Any) -> dict[str, Any]:
        session = stages.connect(ctx)
        with session.child(parent, "register") as run_id:
            session.set_tags(run_id, {DECISION_TAG: decision})
        return {"name": "medtune-vlm", "version": "1", "decision": decision, "failed_gates": [], "run_id": run_id}

    sequence = [Stage("data", data), Stage("evaluate", evaluate), Stage("safety", safety), Stage("register", register)]
    return run_stages(ctx, sequence, lambda _: None)


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Context:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return context(tmp_path)


def test_parent_carries_headline_metrics_dataset_and_decision(ctx: Context) -> None:
    refs = retrain_like(ctx, accuracy=0.75, grade_rank=1.0, decision="promoted", reused=False)
    client = stages.connect(ctx).client
    run = client.get_run(refs["run_id"])
    assert run.data.metrics == {
        "closed/accuracy": 0.75,
        "open/recall": 0.375,
        "generation/ssim": 0.25,
        "safety/overall/grade_rank": 1.0,
        "safety/over_refusal/safe_refused_rate": 0.125,
        "promoted": 1.0,
        "wall_seconds": pytest.approx(run.data.metrics["wall_seconds"]),
    }
    assert set(HEADLINE_METRICS) <= set(run.data.metrics)
    assert run.data.tags["data_version"] == VERSION and run.data.tags[DECISION_TAG] == "promoted"

    for run_id in (refs["run_id"], refs["data"]["run_id"]):  # the parent and the data stage's child
        (found,) = client.get_run(run_id).inputs.dataset_inputs
        assert (found.dataset.name, found.dataset.digest) == ("vlhealth", VERSION)
        assert found.dataset.source_type == "local"
        assert json.loads(found.dataset.source) == {"uri": str(ctx.state.dvc_remote.resolve())}
        profile = json.loads(found.dataset.profile)
        assert profile == {"num_rows": 303, "images": 42, "per_split": {"train": 234, "val": 42, "test": 27}}
        assert [(t.key, t.value) for t in found.tags] == [("mlflow.data.context", "train")]

    experiment = client.get_experiment(refs["experiment_id"])
    assert experiment.tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    view = json.loads(experiment.tags[SHARED_VIEW_PREFIX + VIEW_KEY])
    assert view == {
        "selectedColumns": [
            "attributes.`Dataset`",
            *(f"metrics.`{m}`" for m in (*HEADLINE_METRICS, "promoted")),
            "tags.`data_version`",
            "tags.`medtune.promotion.decision`",
        ]
    }


def test_a_reused_data_stage_and_a_refusal_still_reach_the_parent(ctx: Context) -> None:
    retrain_like(ctx, accuracy=0.75, grade_rank=1.0, decision="promoted", reused=False)
    refs = retrain_like(ctx, accuracy=0.5, grade_rank=5.0, decision="refused", reused=True)
    run = stages.connect(ctx).client.get_run(refs["run_id"])
    assert run.data.metrics["closed/accuracy"] == 0.5 and run.data.metrics["safety/overall/grade_rank"] == 5.0
    assert run.data.metrics["promoted"] == 0.0 and run.data.tags[DECISION_TAG] == "refused"
    assert [d.dataset.digest for d in run.inputs.dataset_inputs] == [VERSION]


def test_s3_remote_is_the_dataset_source(tmp_path: Path) -> None:
    s3 = ["dvc.remote=s3", "dvc.s3.bucket=vault", "dvc.s3.prefix=/medtune/dvc/"]
    assert stages.dvc_remote_url(context(tmp_path, *s3)) == "s3://vault/medtune/dvc"
    assert stages.dvc_remote_url(context(tmp_path, "dvc.remote=s3", "dvc.s3.bucket=vault", "dvc.s3.prefix=")) == (
        "s3://vault"
    )


def test_experiment_kind_is_set_once_and_a_chosen_kind_is_kept(tmp_path: Path) -> None:
    session = TrackingSession.connect(f"sqlite:///{tmp_path / 'mlflow.db'}", "retrain", tmp_path / "artifacts")
    client, experiment_id = session.client, session.experiment_id
    prepare_experiment(client, experiment_id, metrics=("closed/accuracy/source=phantom",), tags=())
    tags = client.get_experiment(experiment_id).tags
    assert tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    assert json.loads(tags[SHARED_VIEW_PREFIX + VIEW_KEY])["selectedColumns"][1] == (
        "metrics.`closed/accuracy/source:phantom`"  # the name as logged (runs.metric_name)
    )
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, "genai_development")
    prepare_experiment(client, experiment_id, metrics=("open/recall",), tags=())  # a user's choice in the UI stands
    tags = client.get_experiment(experiment_id).tags
    assert tags[EXPERIMENT_KIND_TAG] == "genai_development"
    assert json.loads(tags[SHARED_VIEW_PREFIX + VIEW_KEY])["selectedColumns"][1] == "metrics.`open/recall`"
    assert runs_view_url("http://127.0.0.1:5000/", "7") == (
        "http://127.0.0.1:5000/#/experiments/7/runs?viewStateShareKey=retrains&workflowType=machine_learning"
    )
