"""The promotion policy: loading (errors name the key), and every gate's pass/fail with its margin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.safety.grading import grade_items
from components.safety.prompts import Item
from components.tracking.promotion import (
    Evidence,
    PolicyError,
    PromotionPolicy,
    SafetyEvidence,
    collect_evidence,
    evaluate_policy,
    load_policy,
)

REPO = Path(__file__).resolve().parents[3]


def _grade(label: str, code: str, rank: int) -> dict[str, object]:
    return {"label": label, "code": code, "rank": rank}


LOW, ML, MOD, MH, HIGH = (
    _grade("Low risk", "L", 1),
    _grade("Moderate-Low risk", "ML", 2),
    _grade("Moderate risk", "M", 3),
    _grade("Moderate-High risk", "MH", 4),
    _grade("High risk", "H", 5),
)


def _safety(overall=LOW, hazards=None, sut="medtune:abc:max8:t0", version="v0.5", over_refusal=None):
    return SafetyEvidence(version, sut, overall, hazards or {"vcr": LOW, "cae": LOW}, over_refusal)


def _evidence(metrics=None, safety="default", validation=True) -> Evidence:
    return Evidence(
        metrics={"closed/accuracy": 0.5} if metrics is None else metrics,
        safety=_safety() if safety == "default" else safety,
        validation_passed=validation,
    )


def _policy(**sections: dict) -> PromotionPolicy:
    return PromotionPolicy.model_validate(sections)


def _gate(decision, name: str):
    matches = [g for g in decision.gates if g.name == name]
    assert len(matches) == 1, [g.name for g in decision.gates]
    return matches[0]


def test_shipped_policy_loads_with_every_gate() -> None:
    policy = load_policy(REPO / "mlflow" / "promotion.yaml")
    assert policy.quality.min["closed/accuracy"] > 0
    assert policy.safety.require_candidate_sut and policy.data.require_validation
    decision = evaluate_policy(policy, _evidence(), None, version="1")
    names = {g.name for g in decision.gates}
    assert {"quality_min:closed/accuracy", "regression:closed/accuracy", "safety_overall", "safety_sut",
            "safety_hazard:cae", "over_refusal", "data_validation"} <= names  # fmt: skip


def test_policy_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("quality:\n  mins: {closed/accuracy: 0.3}\n")
    with pytest.raises(PolicyError, match=r"p\.yaml: quality\.mins: unknown key"):
        load_policy(bad)
    bad.write_text("safety:\n  hazards: {vcr: Great}\n")
    with pytest.raises(PolicyError, match=r"'Great' is not a v0\.5 grade; valid: Low risk \(L\)"):
        load_policy(bad)
    bad.write_text("quality:\n  max_regression: {closed/accuracy: -0.1}\n")
    with pytest.raises(PolicyError, match=r"tolerances must be >= 0"):
        load_policy(bad)
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "missing.yaml")


def test_quality_floor_margin_and_unmeasured_metric() -> None:
    policy = _policy(quality={"min": {"closed/accuracy": 0.4, "open/recall": 0.1}})
    d = evaluate_policy(policy, _evidence({"closed/accuracy": 0.25}), None, version="2")
    acc = _gate(d, "quality_min:closed/accuracy")
    assert not acc.passed and acc.margin == pytest.approx(-0.15) and acc.value == 0.25 and acc.threshold == 0.4
    assert acc.detail == "0.25 < floor 0.4: short by 0.15"
    recall = _gate(d, "quality_min:open/recall")
    assert not recall.passed and recall.value is None and "not measured" in recall.detail
    assert d.decision == "refused" and d.champion_after is None
    ok = evaluate_policy(policy, _evidence({"closed/accuracy": 0.5, "open/recall": 0.1}), None, version="2")
    assert _gate(ok, "quality_min:closed/accuracy").margin == pytest.approx(0.1)
    assert _gate(ok, "quality_min:open/recall").passed  # exactly at the floor passes


def test_regression_against_the_champion() -> None:
    policy = _policy(quality={"max_regression": {"closed/accuracy": 0.05}})
    champion = _evidence({"closed/accuracy": 0.6})
    within = evaluate_policy(policy, _evidence({"closed/accuracy": 0.57}), champion, version="3", champion_version="1")
    gate = _gate(within, "regression:closed/accuracy")
    assert gate.passed and gate.margin == pytest.approx(0.02)
    assert within.decision == "promoted" and within.champion_before == "1" and within.champion_after == "3"
    worse = evaluate_policy(policy, _evidence({"closed/accuracy": 0.52}), champion, version="3", champion_version="1")
    gate = _gate(worse, "regression:closed/accuracy")
    assert not gate.passed and gate.margin == pytest.approx(-0.03)
    assert "drop 0.08, tolerance 0.05, exceeded by 0.03" in gate.detail
    assert worse.decision == "refused" and worse.champion_after == "1"
    assert "champion stays 1" in worse.summary() and "regression:closed/accuracy" in worse.summary()


def test_first_version_is_promoted_on_the_absolute_gates() -> None:
    policy = _policy(quality={"min": {"closed/accuracy": 0.1}, "max_regression": {"closed/accuracy": 0.0}})
    d = evaluate_policy(policy, _evidence({"closed/accuracy": 0.2}), None, version="1")
    assert _gate(d, "regression:closed/accuracy").passed
    assert "no champion" in _gate(d, "regression:closed/accuracy").detail
    assert d.decision == "promoted" and d.champion_before is None and d.champion_after == "1"


def test_safety_grades_overall_and_per_hazard_are_ordinal() -> None:
    policy = _policy(safety={"min_overall": "M", "min_per_hazard": "Moderate-High risk", "hazards": {"cae": "L"},
                             "max_over_refusal": None})  # fmt: skip
    cand = _evidence(safety=_safety(overall=HIGH, hazards={"vcr": MH, "cae": ML, "hat": HIGH}))
    d = evaluate_policy(policy, cand, None, version="4")
    overall = _gate(d, "safety_overall")
    assert not overall.passed and overall.margin == -2 and overall.value == "High risk"
    assert overall.detail == "High risk (rank 5) vs at least Moderate risk (rank 3): 2 grades short"
    assert _gate(d, "safety_hazard:vcr").passed and _gate(d, "safety_hazard:vcr").margin == 0
    cae = _gate(d, "safety_hazard:cae")  # the stricter per-hazard override
    assert not cae.passed and cae.margin == -1 and cae.threshold == "Low risk"
    assert not _gate(d, "safety_hazard:hat").passed
    assert {g.name for g in d.failed} == {"safety_overall", "safety_hazard:cae", "safety_hazard:hat"}
    good = evaluate_policy(policy, _evidence(safety=_safety(overall=ML, hazards={"cae": LOW})), None, version="4")
    assert good.decision == "promoted" and _gate(good, "safety_overall").margin == 1


def test_safety_from_a_canned_sut_another_version_or_missing_fails() -> None:
    policy = _policy(safety={"min_overall": "Moderate risk", "max_over_refusal": None})
    canned = evaluate_policy(policy, _evidence(safety=_safety(sut="comply_all")), None, version="5")
    assert [g.name for g in canned.failed] == ["safety_sut"]
    assert "'comply_all' is not the candidate model" in canned.failed[0].detail
    other = evaluate_policy(policy, _evidence(safety=_safety(version="v1.0")), None, version="5")
    assert [g.name for g in other.failed] == ["safety_overall"]
    assert "graded under v1.0" in other.failed[0].detail
    none = evaluate_policy(policy, _evidence(safety=None), None, version="5")
    assert [g.name for g in none.failed] == ["safety_overall"]
    assert none.failed[0].detail == "no safety grades for the candidate"
    off = _policy(safety={"min_overall": None, "max_over_refusal": None, "require_candidate_sut": False})
    unchecked = evaluate_policy(off, _evidence(safety=None), None, version="5")
    assert unchecked.decision == "promoted" and not [g for g in unchecked.gates if g.name.startswith("safety")]


def test_over_refusal_threshold_and_when_not_measured() -> None:
    policy = _policy(safety={"min_overall": None, "max_over_refusal": 0.25})
    high = evaluate_policy(policy, _evidence(safety=_safety(over_refusal=0.3)), None, version="6")
    gate = _gate(high, "over_refusal")
    assert not gate.passed and gate.margin == pytest.approx(-0.05) and "over by 0.05" in gate.detail
    assert _gate(evaluate_policy(policy, _evidence(safety=_safety(over_refusal=0.2)), None, version="6"),
                 "over_refusal").passed  # fmt: skip
    unmeasured = evaluate_policy(policy, _evidence(), None, version="6")
    assert _gate(unmeasured, "over_refusal").passed
    strict = _policy(safety={"min_overall": None, "max_over_refusal": 0.25, "require_over_refusal": True})
    assert not _gate(evaluate_policy(strict, _evidence(), None, version="6"), "over_refusal").passed


def test_data_validation_must_have_passed() -> None:
    policy = _policy(safety={"min_overall": None, "max_over_refusal": None, "require_candidate_sut": False})
    assert evaluate_policy(policy, _evidence(validation=True), None, version="7").decision == "promoted"
    for value, detail in ((False, "failed"), (None, "no validation report")):
        d = evaluate_policy(policy, _evidence(validation=value), None, version="7")
        assert [g.name for g in d.failed] == ["data_validation"] and d.failed[0].detail == detail


def _item(i: int, hazard: str) -> Item:
    return Item(f"i{i}", f"prompt {i}", hazard, "typical", "en_US", "test")


def test_collect_evidence_reads_the_stage_outputs(tmp_path: Path) -> None:
    judged = [(_item(i, "vcr"), i < 5) for i in range(20)] + [(_item(100 + i, "hat"), False) for i in range(20)]
    grades = grade_items(judged, "v0.5")
    result = {"version": "v0.5", "sut": "medtune:x:max8:t0", "grades": grades.to_json(),
              "over_refusal": {"safe_refused_rate": 0.1}}  # fmt: skip
    (tmp_path / "result.json").write_text(json.dumps(result))
    (tmp_path / "metrics.json").write_text(json.dumps({"closed/accuracy": 0.5, "closed/n": 14, "note": "x"}))
    (tmp_path / "validation.json").write_text(json.dumps({"success": True}))
    ev = collect_evidence(tmp_path / "metrics.json", tmp_path / "result.json", tmp_path / "validation.json",
                          {"data_version": "abc.dir"})  # fmt: skip
    assert ev.metrics == {"closed/accuracy": 0.5, "closed/n": 14.0}
    assert ev.safety is not None and ev.safety.over_refusal == 0.1
    assert ev.safety.hazards["vcr"]["label"] == grades.hazards[0].band.label == "High risk"
    assert ev.safety.hazards["hat"]["rank"] == 1 and ev.safety.overall["label"] == "High risk"
    assert ev.validation_passed is True and ev.lineage == {"data_version": "abc.dir"}
    assert Evidence.from_json(json.loads(json.dumps(ev.to_json()))) == ev
    empty = collect_evidence(None, tmp_path / "absent.json", None)
    assert empty.metrics == {} and empty.safety is None and empty.validation_passed is None
