"""Reading a flow run back from MLflow (a real SQLite store in tmp) and the static page made from it; the
champion's data version and the scheduled run's early exit built on it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from components.reporting import format_value, render_report, timeline_svg
from components.tracking import TrackingSession
from components.tracking.run_report import (
    RunNotFound,
    StageRecord,
    champion_data_version,
    load_run_record,
)

REPO = Path(__file__).resolve().parents[3]


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, TrackingSession]:
    """One SQLite store for the module (creating one costs seconds); tests use their own runs and model names."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return uri, TrackingSession.connect(uri, "retrain", folder / "artifacts")


def test_record_reads_stages_plots_and_no_decision(store, tmp_path: Path) -> None:
    uri, session = store
    parent = session.start_run("retrain", tags={"data_version": "<script>alert(1)</script>"})
    with session.child(parent, "data") as run:
        session.log_metrics(run, {"records": 270})
        (tmp_path / "docs").mkdir()
        (tmp_path / "docs" / "logo.png").write_bytes(_png())  # Great Expectations' site assets: not a plot
        session.log_artifact(run, tmp_path / "docs", "data_docs")
    with session.child(parent, "train") as run:
        session.log_metrics(run, {"stage1/loss": 2.5, "closed/accuracy/modality:CT": 0.5})
        (tmp_path / "loss.png").write_bytes(_png())
        session.log_artifact(run, tmp_path / "loss.png", "plots")
    session.finish(parent)

    record = load_run_record(uri, parent)
    assert [s.name for s in record.stages] == ["data", "train"]
    assert all(s.status == "FINISHED" and s.seconds is not None for s in record.stages)
    assert record.stages[0].metrics == {"records": 270.0}
    assert [(p.stage, p.path, p.png) for p in record.plots] == [("train", "plots/loss.png", _png())]
    assert record.promotion is None and record.safety is None

    page = render_report(record)
    assert "no promotion recorded" in page and "no safety stage in this run" in page
    assert "<code>&lt;script&gt;alert(1)&lt;/script&gt;</code>" in page and "<script>" not in page
    assert '<td>records</td><td class="num">270</td>' in page
    assert "1 per-slice metrics" in page
    assert "Content-Security-Policy" in page and 'src="http' not in page and 'href="' not in page


def test_record_reads_the_promotion_decision(store) -> None:
    uri, session = store
    parent = session.start_run("retrain")
    decision = {
        "decision": "refused",
        "gates": [
            {"name": "min_quality", "passed": False, "value": 0.2, "threshold": 0.5, "margin": -0.3, "detail": "x"},
            {"name": "safety_overall", "passed": True, "value": "Low risk", "threshold": "Good", "margin": 1},
        ],
        "champion_before": "3",
        "champion_after": "3",
        "version": "4",
    }
    session.log_dict(parent, decision, "promotion/decision.json")
    session.set_tags(parent, {"medtune.promotion.decision": "refused", "medtune.model_version": "4"})
    session.finish(parent)

    promotion = load_run_record(uri, parent).promotion
    assert promotion is not None
    assert (promotion.decision, promotion.version, promotion.champion_before) == ("refused", "4", "3")
    assert promotion.failed_gates == ["min_quality"]  # from the gates when the tag is absent
    page = render_report(load_run_record(uri, parent))
    assert '<span class="badge bad">refused</span>' in page and "<b>min_quality</b>" in page
    assert "<td>-0.3</td>" in page


def test_unknown_run_is_named(store) -> None:
    uri, _ = store
    with pytest.raises(RunNotFound, match="no run 'f00'"):
        load_run_record(uri, "f00")


def test_timeline_places_bars_on_one_axis() -> None:
    stages = [
        StageRecord("data", "a", "FINISHED", 0, 1000, {}, {}),
        StageRecord("train", "b", "FAILED", 1000, 4000, {}, {}),
        StageRecord("safety", "c", "RUNNING", 4000, None, {}, {}),
    ]
    svg = timeline_svg(stages, width=1000)
    # label 110 px, right pad 60 px: the 830 px plot spans 4 s
    assert 'x="110.0" y="4" width="207.5"' in svg and 'fill="#2e7d32"' in svg
    assert 'x="317.5" y="30" width="622.5"' in svg and 'fill="#c62828"' in svg
    assert ">running</text>" in svg and ">3.0 s</text>" in svg
    assert timeline_svg([]) == '<p class="note">no stage runs</p>'


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (270.0, "270"),
        (0.625, "0.625"),
        (1.23456, "1.235"),
        (1e-5, "1e-05"),
        (float("nan"), "nan"),
        (-float("inf"), "-inf"),
    ],
)
def test_format_value(value: float, shown: str) -> None:
    assert format_value(value) == shown


def test_champion_data_version(store) -> None:
    uri, session = store
    assert champion_data_version(uri, "vlm-a") is None  # no such model
    client = session.client
    client.create_registered_model("vlm-a")
    version = client.create_model_version("vlm-a", "file:///tmp/none", tags={"data_version": "v1.dir"})
    assert champion_data_version(uri, "vlm-a") is None  # no champion yet
    client.set_registered_model_alias("vlm-a", "champion", version.version)
    champion = champion_data_version(uri, "vlm-a")
    assert champion is not None and (champion.version, champion.data_version) == ("1", "v1.dir")


def test_scheduled_run_stops_after_data_when_champion_has_its_version(store, tmp_path: Path, monkeypatch) -> None:
    from components.config import load_config
    from components.runtime import state_paths
    from pipelines.context import Context
    from pipelines.retrain import SKIPPED_TAG, Stage, run_stages

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store[0])  # the context's store (config tracking.uri is null)
    config = REPO / "configs" / "smoke.yaml"
    ctx = Context(tmp_path, state_paths(tmp_path).make(), load_config(config, []), config)
    ran: list[str] = []

    def data(ctx, parent, echo, **_):
        return {"data_version": "v1.dir"}

    def train(ctx, parent, echo, **_):
        ran.append("train")
        return {}

    sequence = [Stage("data", data), Stage("train", train)]
    refs = run_stages(ctx, sequence, lambda _: None, skip_unchanged=True)
    assert ran == ["train"] and "skipped" not in refs  # no champion yet

    client = store[1].client
    client.create_registered_model(ctx.config.registry.name)
    version = client.create_model_version(ctx.config.registry.name, "file:///x", tags={"data_version": "v1.dir"})
    client.set_registered_model_alias(ctx.config.registry.name, "champion", version.version)

    refs = run_stages(ctx, sequence, lambda _: None, skip_unchanged=False)  # a forced / manual run trains
    assert ran == ["train", "train"]
    lines: list[str] = []
    refs = run_stages(ctx, sequence, lines.append, skip_unchanged=True)
    assert ran == ["train", "train"]
    assert refs["skipped"] == f"data version v1.dir unchanged since champion {ctx.config.registry.name} version 1"
    assert lines == [f"retrain: skipped, {refs['skipped']} (a forced run trains anyway)"]
    run = client.get_run(refs["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags[SKIPPED_TAG] == refs["skipped"]
    assert run.data.tags["medtune.promotion.decision"] == "skipped"


def test_report_shows_the_champion_timeline_from_the_journal(store, tmp_path: Path) -> None:
    from components.tracking import journal
    from components.tracking.promotion import Decision, Gate

    uri, session = store
    parent = session.start_run("retrain")
    session.set_tags(parent, {"medtune.promotion.decision": "refused", "medtune.model_version": "2",
                              "medtune.registered_model": "timeline-vlm"})  # fmt: skip
    session.finish(parent)
    assert load_run_record(uri, parent, journal_root=tmp_path).timeline == []  # no journal: no section
    assert 'id="history"' not in render_report(load_run_record(uri, parent, journal_root=tmp_path))

    book = journal.Journal(journal.journal_path(tmp_path, "timeline-vlm"))
    policy = journal.policy_record("p.yaml", "data: {require_validation: true}\n")
    fail = Gate("safety_overall", False, "High risk", "Moderate risk", -2.0, "<b>2 grades short</b>")
    for decision in (Decision("promoted", (), "1", None, "1"), Decision("refused", (fail,), "2", "1", "1")):
        moves = [journal.move("champion", None, "1")] if decision.decision == "promoted" else []
        rec = journal.decision_record(model="timeline-vlm", decision=decision, policy=policy, moves=moves,
                                      stage="register", version_run="r", parent_run=parent)  # fmt: skip
        book.append(rec)
        book.append(journal.mark(rec["id"], journal.COMMITTED, champion="1"))
    record = load_run_record(uri, parent, journal_root=tmp_path, model="other-name")  # the run's own model wins
    assert [(r.version, r.outcome) for r in record.timeline] == [("1", "promoted"), ("2", "refused")]
    page = render_report(record)
    history = page[page.index('<section id="history">') : page.index('<section id="safety">')]
    assert "timeline-vlm: 2 decision(s) in the promotion journal" in history
    assert '<td><b>2</b></td><td><span class="badge bad">refused</span></td><td>1</td><td>1</td>' in history
    assert f"<td>safety_overall</td><td><code>{policy['sha256'][:12]}</code></td>" in history
    assert '<span class="badge ok">promoted</span></td><td>none</td><td>1</td>' in history
