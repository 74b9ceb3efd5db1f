"""The model card: generated from the same evidence and decision as the gates."""

from __future__ import annotations

from components.tracking.model_card import render_card
from components.tracking.promotion import Evidence, PromotionPolicy, SafetyEvidence, evaluate_policy


def _evidence() -> Evidence:
    safety = SafetyEvidence(
        "v0.5",
        "medtune:abc:max8:t0",
        {"label": "High risk", "code": "H", "rank": 5},
        {"vcr": {"label": "High risk", "code": "H", "rank": 5, "name": "Violent crimes"},
         "hat": {"label": "Low risk", "code": "L", "rank": 1, "name": "Hate"}},
        over_refusal=0.125,
    )  # fmt: skip
    return Evidence(
        metrics={"closed/accuracy": 0.5, "closed/majority_type": 0.357, "closed/accuracy/modality=CT": 0.4},
        safety=safety,
        validation_passed=True,
        lineage={"data_version": "8a4a.dir", "git_commit": "f00d", "config_hash": "8478cce87076", "parent_run": "p1"},
    )


def test_card_shows_lineage_metrics_grades_and_the_failed_gate() -> None:
    evidence = _evidence()
    policy = PromotionPolicy.model_validate({"quality": {"min": {"closed/accuracy": 0.4}},
                                             "safety": {"min_overall": "Moderate risk"}})  # fmt: skip
    decision = evaluate_policy(policy, evidence, None, version="2")
    card = render_card("medtune-vlm", "2", evidence, decision=decision,
                       model_info={"adapter": {"kind": "hlora", "rank": 16, "generation_rank": 32, "num_experts": 4},
                                   "stages": ["1", "2", "3"], "vocab_size": 1261})  # fmt: skip
    assert card.startswith("# medtune-vlm v2\n")
    for line in (
        "| adapter method | hlora |",
        "| generation rank | 32 |",
        "| training stages | 1, 2, 3 |",
        "| data_version | 8a4a.dir |",
        "| git_commit | f00d |",
        "| closed/accuracy | 0.5 |",
        "| closed/majority_type | 0.357 |",
        "| vcr | Violent crimes | High risk |",
        'model = mlflow.pyfunc.load_model("models:/medtune-vlm/2")   # or models:/medtune-vlm@champion',
        "Data validation: passed.",
    ):
        assert line in card, line
    assert "overall **High risk**" in card and "Safe prompts refused (over-refusal): 12.5%." in card
    assert "closed/accuracy/modality=CT" not in card  # per-slice metrics stay in MLflow
    assert "Decision: **refused** (champion before: none, after: none)." in card
    gate_rows = [line for line in card.splitlines() if line.startswith("| safety_overall |")]
    assert gate_rows == ["| safety_overall | **no** | High risk | Moderate risk | -2 | "
                         "High risk (rank 5) vs at least Moderate risk (rank 3): 2 grades short |"]  # fmt: skip
    assert "| quality_min:closed/accuracy | yes | 0.5 | 0.4 | 0.1 |" in card


def test_card_without_evidence_says_so() -> None:
    card = render_card("m", "1", Evidence())
    assert "No evaluation metrics were recorded." in card
    assert "No safety benchmark was run." in card
    assert "Data validation: not recorded." in card
    assert "Not evaluated against the promotion policy." in card
    assert "## Lineage\n\n| field | value |\n|---|---|\n\n## Evaluation" in card  # an empty table keeps its header


def test_card_states_the_federated_privacy_a_privacy_officer_signs_off() -> None:
    privacy = {"mechanism": "client-level DP-FedAvg (central Gaussian)", "accountant": "opacus RDP",
               "noise_multiplier": 1.56, "clip_norm": 1.47, "delta": 1e-5, "releases": 6,
               "epsilon": 7.9967}  # fmt: skip
    fed = {"method": "slora", "sites": ["site-0", "site-1"], "rounds": 6, "mode": "deployment",
           "secure_aggregation": True, "aggregation": "fedavg", "privacy": privacy}  # fmt: skip
    card = render_card("medtune-vlm", "4", _evidence(), model_info={"federated": fed})
    section = card.split("## Federated training and privacy")[1].split("## Safety")[0]
    for line in (
        "| sites | site-0, site-1 |",
        "| secure aggregation | SecAgg+ (the server saw only the sum of the sites' updates) |",
        "| differential privacy | client-level DP-FedAvg (central Gaussian): epsilon 8 at delta 1e-05 "
        "(opacus RDP accountant, 6 releases) |",
        "| noise multiplier | 1.56 |",
        "| clip norm | 1.47 |",
    ):
        assert line in section, (line, section)
    central_view = {**fed, "privacy": None, "secure_aggregation": False}
    plain = render_card("medtune-vlm", "5", _evidence(), model_info={"federated": central_view})
    assert "| differential privacy | none: no formal guarantee" in plain
    assert "| secure aggregation | no (the server saw each site's update) |" in plain
    assert "## Federated" not in render_card("medtune-vlm", "6", _evidence(), model_info={})  # a central model
