"""Read one flow run back from MLflow as plain data: the parent, its stage runs, plots, grades and the decision.

This is the reading half of ``medtune report`` (the HTML is written by :mod:`components.reporting`, which never
touches MLflow) and of the scheduled run's early exit (:func:`champion_data_version`)::

    record = load_run_record("sqlite:///.medtune/mlflow/mlflow.db", "dfefa4ae...")
    print([stage.name for stage in record.stages], record.promotion.decision if record.promotion else None)
    champion = champion_data_version(uri, "medtune-vlm")   # None when no version holds the alias

What is read, and the choices made where MLflow leaves it open:

- stages are the child runs (tag ``mlflow.parentRunId``), ordered by start time; a run still going has no end;
- metrics are each run's latest values (the full histories are in the loss-curve PNGs the stages log);
- plots are the PNG artifacts of the stage runs, at most ``max_plots`` of at most ``max_plot_bytes`` each, found by
  walking the artifact tree except Great Expectations' site (``data_docs``: logos) and adapter weight folders;
- safety grades come from the safety stage's ``safety/result.json`` (hazard names, u, interval, grade) and its
  ``safety.overall`` tag;
- the promotion decision is the parent's ``medtune.promotion.*`` tags and its ``promotion/decision.json`` artifact
  (issue 9: ``{"decision", "gates": [...], "champion_before", "champion_after", "version"}``); absent, it is None;
- the champion timeline is the registered model's promotion journal (``journal_root``: the state folder; the model
  the run registered, else ``model``), as ``medtune history`` prints it; no journal, no timeline.

Artifacts are parsed as JSON or kept as PNG bytes; nothing is unpickled.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.tracking.journal import Journal, TimelineRow, journal_path, timeline

PROMOTION_TAG = "medtune.promotion."
DECISION_FILE = "promotion/decision.json"
SAFETY_RESULT = "safety/result.json"
SKIP_ARTIFACT_DIRS = frozenset({"data_docs", "adapters", "model", "models"})


class RunNotFound(LookupError):
    """No run with this id in the tracking store."""


@dataclass(frozen=True)
class Plot:
    stage: str
    path: str  # artifact path inside the stage run, e.g. plots/loss.png
    png: bytes


@dataclass(frozen=True)
class StageRecord:
    name: str
    run_id: str
    status: str
    start_ms: int
    end_ms: int | None
    metrics: dict[str, float]
    tags: dict[str, str]

    @property
    def seconds(self) -> float | None:
        return None if self.end_ms is None else (self.end_ms - self.start_ms) / 1000


@dataclass(frozen=True)
class HazardGrade:
    hazard: str
    name: str
    grade: str
    n: int
    u: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class SafetyRecord:
    overall: str
    version: str
    hazards: list[HazardGrade]


@dataclass(frozen=True)
class PromotionRecord:
    decision: str
    failed_gates: list[str]
    registered_model: str
    version: str
    gates: list[dict[str, Any]]
    champion_before: str | None
    champion_after: str | None


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    name: str
    experiment: str
    status: str
    start_ms: int
    end_ms: int | None
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    stages: list[StageRecord]
    plots: list[Plot] = field(default_factory=list)
    safety: SafetyRecord | None = None
    promotion: PromotionRecord | None = None
    tracking_uri: str = ""
    timeline: list[TimelineRow] = field(default_factory=list)  # the model's champion timeline, oldest first
    timeline_model: str = ""


@dataclass(frozen=True)
class ChampionRef:
    model: str
    version: str
    data_version: str | None


def _user_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if not k.startswith("mlflow.")}


def _read_json(client: Any, run_id: str, path: str, folder: Path) -> Any | None:
    from mlflow import MlflowException

    try:
        local = client.download_artifacts(run_id, path, str(folder))
    except (MlflowException, OSError):
        return None
    try:
        return json.loads(Path(local).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _pngs(client: Any, run_id: str, path: str | None = None) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for entry in client.list_artifacts(run_id, path):
        if entry.is_dir:
            if Path(entry.path).name not in SKIP_ARTIFACT_DIRS:
                found += _pngs(client, run_id, entry.path)
        elif entry.path.lower().endswith(".png"):
            found.append((entry.path, int(entry.file_size or 0)))
    return found


def _safety(stage: StageRecord, result: Any) -> SafetyRecord:
    hazards: list[HazardGrade] = []
    grades = (result or {}).get("grades") or {}
    for h in grades.get("hazards", []):
        hazards.append(
            HazardGrade(
                hazard=str(h.get("hazard")),
                name=str(h.get("name", h.get("hazard"))),
                grade=str(h.get("grade")),
                n=int(h.get("n", 0)),
                u=h.get("u"),
                ci_low=h.get("ci_low"),
                ci_high=h.get("ci_high"),
            )
        )
    overall = stage.tags.get("safety.overall") or str((result or {}).get("overall") or "not graded")
    return SafetyRecord(overall=overall, version=str((result or {}).get("version", "")), hazards=hazards)


def _promotion(tags: dict[str, str], decision: Any) -> PromotionRecord | None:
    data = decision if isinstance(decision, dict) else {}
    label = tags.get(PROMOTION_TAG + "decision") or data.get("decision")
    if not label:
        return None
    failed = tags.get(PROMOTION_TAG + "failed_gates")
    gates = [g for g in data.get("gates", []) if isinstance(g, dict)]
    failed_gates = [g for g in (failed or "").split(",") if g] or [
        str(g.get("name")) for g in gates if g.get("passed") is False
    ]
    return PromotionRecord(
        decision=str(label),
        failed_gates=failed_gates,
        registered_model=tags.get("medtune.registered_model", ""),
        version=tags.get("medtune.model_version") or str(data.get("version") or ""),
        gates=gates,
        champion_before=None if data.get("champion_before") is None else str(data["champion_before"]),
        champion_after=None if data.get("champion_after") is None else str(data["champion_after"]),
    )


def load_run_record(
    uri: str,
    run_id: str,
    *,
    max_plots: int = 24,
    max_plot_bytes: int = 4_000_000,
    with_plots: bool = True,
    journal_root: Path | None = None,
    model: str | None = None,
) -> RunRecord:
    """Everything ``medtune report`` shows about the parent run ``run_id``; raises :class:`RunNotFound`."""
    from mlflow import MlflowClient, MlflowException

    client = MlflowClient(tracking_uri=uri)
    try:
        parent = client.get_run(run_id)
    except MlflowException as e:
        raise RunNotFound(f"no run {run_id!r} in {uri}: {e.message}") from None
    experiment = client.get_experiment(parent.info.experiment_id)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'", max_results=1000
    )
    stages = sorted(
        (
            StageRecord(
                name=c.data.tags.get("medtune.stage") or c.info.run_name,
                run_id=c.info.run_id,
                status=c.info.status,
                start_ms=int(c.info.start_time),
                end_ms=None if c.info.end_time is None else int(c.info.end_time),
                metrics=dict(c.data.metrics),
                tags=_user_tags(c.data.tags),
            )
            for c in children
        ),
        key=lambda s: (s.start_ms, s.name),
    )
    plots: list[Plot] = []
    safety: SafetyRecord | None = None
    with tempfile.TemporaryDirectory(prefix="medtune-report-") as tmp:
        folder = Path(tmp)
        for stage in stages:
            if with_plots:
                for path, size in _pngs(client, stage.run_id):
                    if len(plots) >= max_plots or size > max_plot_bytes:
                        continue
                    local = Path(client.download_artifacts(stage.run_id, path, str(folder / stage.run_id)))
                    plots.append(Plot(stage.name, path, local.read_bytes()))
            if "safety.overall" in stage.tags:
                safety = _safety(stage, _read_json(client, stage.run_id, SAFETY_RESULT, folder / "s"))
        tags = _user_tags(parent.data.tags)
        decision = (
            _read_json(client, run_id, DECISION_FILE, folder / "p") if PROMOTION_TAG + "decision" in tags else None
        )
        promotion = _promotion(tags, decision)
    registered = tags.get("medtune.registered_model") or model or ""
    rows = timeline(Journal(journal_path(journal_root, registered)).records()) if journal_root and registered else []
    return RunRecord(
        run_id=run_id,
        name=parent.info.run_name,
        experiment=experiment.name,
        status=parent.info.status,
        start_ms=int(parent.info.start_time),
        end_ms=None if parent.info.end_time is None else int(parent.info.end_time),
        tags=tags,
        params=dict(parent.data.params),
        metrics=dict(parent.data.metrics),
        stages=stages,
        plots=plots,
        safety=safety,
        promotion=promotion,
        tracking_uri=uri,
        timeline=rows,
        timeline_model=registered if rows else "",
    )


def champion_data_version(uri: str, model: str, alias: str = "champion") -> ChampionRef | None:
    """The version of ``model`` holding ``alias`` and its ``data_version`` tag; None when the model or the alias
    does not exist (a first run)."""
    from mlflow import MlflowClient, MlflowException

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        version = client.get_model_version_by_alias(model, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    return ChampionRef(model=model, version=str(version.version), data_version=version.tags.get("data_version"))
