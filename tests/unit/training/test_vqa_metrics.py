"""Closed accuracy, open token recall, majority baselines and image scores on hand-made predictions. Run::

.venv/bin/pytest tests/unit/training/test_vqa_metrics.py -q
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from components.evaluation.vqa import (
    MajorityBaseline,
    normalize_answer,
    score_images,
    score_vqa,
    token_recall,
)


def rec(
    rid: str, q: str, a: str, kind: str = "vqa_closed", qtype: str = "yn", split: str = "test", **kw: Any
) -> dict[str, Any]:
    return {"id": rid, "source": kw.get("source", "toy"), "modality": kw.get("modality", "CT"), "task": "comprehension",
            "kind": kind, "split": split, "meta": {"question_type": qtype},
            "conversations": [{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": a}]}  # fmt: skip


def test_normalisation_and_recall() -> None:
    assert normalize_answer("  The Liver. ") == "liver"
    assert normalize_answer("Left-Posterior") == "left posterior"
    assert token_recall("the right kidney", "right kidney") == 1.0
    assert token_recall("left kidney", "right kidney") == 0.5
    assert token_recall("", "two words") == 0.0
    assert token_recall("x", "") == 1.0


TRAIN = [
    rec("t1", "Is there a lesion?", "yes", qtype="presence", split="train"),
    rec("t2", "Is there a lesion?", "yes", qtype="presence", split="train"),
    rec("t3", "Is any lesion visible?", "no", qtype="presence", split="train"),
    rec("t4", "Is any lesion visible?", "no", qtype="presence", split="train"),
    rec("t5", "Is any lesion visible?", "no", qtype="presence", split="train"),
    rec("t6", "Which organ?", "liver", kind="vqa_open", qtype="organ_open", split="train"),
    rec("t7", "Which organ?", "left kidney", kind="vqa_open", qtype="organ_open", split="train"),
    rec("t8", "Which organ?", "left kidney", kind="vqa_open", qtype="organ_open", split="train"),
]


def test_majority_baselines_per_type_and_per_template() -> None:
    base = MajorityBaseline.fit(TRAIN)
    assert base.by_type == {"presence": "no", "organ_open": "left kidney"}
    assert base.by_template["is there lesion"] == "yes"  # articles and punctuation normalised away
    assert base.for_template(rec("x", "A question never seen?", "?", qtype="presence")) == "no"  # falls back to type
    assert base.for_type(rec("y", "?", "?", qtype="unseen_type")) == "no"  # falls back to the kind's majority


def test_scores_on_hand_made_predictions() -> None:
    base = MajorityBaseline.fit(TRAIN)
    test = [
        rec("a", "Is there a lesion?", "yes", qtype="presence", modality="CT"),
        rec("b", "Is any lesion visible?", "yes", qtype="presence", modality="MRI"),
        rec("c", "Is there a lesion?", "no", qtype="presence", modality="MRI"),
        rec("d", "Which organ?", "right kidney", kind="vqa_open", qtype="organ_open"),
        rec("e", "Describe.", "A CT slice with one lesion.", kind="caption", qtype="caption"),
    ]
    preds = ["Yes.", "no", "no", "left kidney", "a CT slice"]
    metrics, rows = score_vqa(test, preds, base)
    assert metrics["closed/accuracy"] == pytest.approx(2 / 3)
    assert metrics["closed/n"] == 3
    assert metrics["closed/majority_type"] == pytest.approx(1 / 3)  # "no" for every presence question
    assert metrics["closed/majority_template"] == pytest.approx(1 / 3)  # "yes", "no", "yes"
    assert metrics["closed/accuracy/modality=MRI"] == pytest.approx(0.5)
    assert metrics["closed/accuracy/modality=CT"] == 1.0
    assert metrics["open/recall"] == 0.5 and metrics["open/majority_type"] == 0.5
    assert metrics["caption/recall"] == pytest.approx(2 / 5)  # "ct", "slice" of ct slice with one lesion
    assert [r["score"] for r in rows] == [1.0, 0.0, 1.0, 0.5, 0.4]
    assert rows[0]["majority_template"] == "yes" and rows[1]["majority_template"] == "no"
    with pytest.raises(ValueError, match="5 records but 4 predictions"):
        score_vqa(test, preds[:4], base)


def test_image_scores_with_baselines_and_ceiling() -> None:
    torch.manual_seed(0)
    target = torch.rand(4, 1, 16, 16)
    kinds = [("modality_conversion", "CT"), ("modality_conversion", "MRI"), ("super_resolution", "CT")] + [
        ("super_resolution", "CT")
    ]
    recs = [{"id": str(i), "kind": k, "modality": m} for i, (k, m) in enumerate(kinds)]
    metrics, rows = score_images(recs, target.clone(), target, torch.zeros_like(target), target * 0.9)
    assert metrics["generation/ssim"] == pytest.approx(1.0) and metrics["generation/psnr"] == 100.0
    assert metrics["generation/copy_ssim"] < 0.1
    assert 0.5 < metrics["generation/vq_ceiling_ssim"] < 1.0
    assert metrics["generation/n/modality_conversion/CT"] == 1 and metrics["generation/n/super_resolution"] == 2
    assert len(rows) == 4 and rows[0]["group"] == "modality_conversion/CT"
