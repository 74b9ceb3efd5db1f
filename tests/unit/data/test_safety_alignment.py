"""The safety-alignment source (issue 17, item 4): deterministic per seed, balanced, in the build report of a
smoke-size build as text-only train records, refused by the build where it would match an evaluation prompt, and
trainable by the tiny model's collator beside image records.

.venv/bin/pytest tests/unit/data/test_safety_alignment.py -q
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from components.data.build import load_records
from components.data.records import REPORT_FILE
from components.data.sources import alignment_text
from components.data.sources.phantom import PhantomSourceConfig
from components.data.sources.safety_alignment import (
    BENIGN,
    HAZARDS,
    REFUSAL,
    SafetyAlignmentSourceConfig,
    benign_items,
    generate_alignment_items,
    hazardous_items,
)
from components.safety.judges import is_refusal
from tests.unit.data.helpers import build

SMALL = SafetyAlignmentSourceConfig(refusals_per_hazard=3, benign=10)


def test_same_seed_same_items_other_seed_other_sample() -> None:
    first = generate_alignment_items(40, 420, seed=0)
    assert first == generate_alignment_items(40, 420, seed=0)
    other = generate_alignment_items(40, 420, seed=1)
    assert [i.uid for i in other] != [i.uid for i in first]
    assert Counter((i.label, i.hazard) for i in other) == Counter((i.label, i.hazard) for i in first)
    # a smaller count is a different sample, but the same seed always draws the same one
    assert generate_alignment_items(4, 10, seed=3) == generate_alignment_items(4, 10, seed=3)


def test_counts_personas_templates_and_fragments() -> None:
    # every hazard spans many distinct activities, so its refusals generalise from concepts, not from a short list
    assert {h: len(set(acts)) for h, acts in alignment_text.ACTIVITIES.items()} == {
        "vcr": 51,
        "nvc": 56,
        "scr": 51,
        "cae": 50,
        "cbr": 51,
        "ssh": 55,
        "hat": 51,
    }
    items = generate_alignment_items(180, 600, seed=0)
    assert len({i.uid for i in items}) == len(items) == 7 * 180 + 600
    assert len({i.prompt for i in items}) == len(items)  # no prompt asked twice
    refusals = [i for i in items if i.label == REFUSAL]
    assert Counter(i.hazard for i in refusals) == {h: 180 for h in HAZARDS}
    for hazard in HAZARDS:
        mine = [i for i in refusals if i.hazard == hazard]
        other = "vulnerable" if hazard == "ssh" else "malicious"
        # TYPICAL_SHARE of 180; v0.5's personas; 60 are enough for the other persona to cover every activity
        assert Counter(i.persona for i in mine) == {"typical": 120, other: 60}
        for persona in ("typical", other):  # each persona asks about every activity
            fragments = {i.fragment for i in mine if i.persona == persona}
            assert fragments == set(range(len(alignment_text.ACTIVITIES[hazard]))), (hazard, persona)
        assert {i.pool for i in mine if i.persona == "typical"} == {"shared", "persona"}
    benign = [i for i in items if i.label == BENIGN]
    pools = Counter(i.pool for i in benign)
    assert pools["question"] == len(alignment_text.BENIGN_QUESTIONS)  # each standalone question once
    assert {i.fragment for i in benign if i.pool == "contrast"} == set(range(len(alignment_text.CONTRAST_TASKS)))
    # the typical persona and the benign tasks ask through the same templates, each template used by both
    shared = {i.template for i in refusals if i.pool == "shared"}
    assert (
        shared
        == {i.template for i in benign if i.pool != "question"}
        == set(range(len(alignment_text.SHARED_TEMPLATES)))
    )
    typical_templates = len(alignment_text.SHARED_TEMPLATES) + len(alignment_text.HAZARD_TEMPLATES["typical"])
    typical_capacity = typical_templates * len(alignment_text.ACTIVITIES["vcr"])  # 20 x 51 = 1020
    with pytest.raises(
        ValueError, match=f"asked for 1021 items; the templates and fragments make 0..{typical_capacity}"
    ):
        generate_alignment_items(1531, 0)  # two thirds of 1531 from the typical persona: one too many


def test_refusals_read_as_refusals_and_answers_do_not() -> None:
    """The offline judge must count every trained refusal as a refusal and no benign answer as one: otherwise the
    data would teach over-refusal (or a refusal the judge misses)."""
    items = [i for h in HAZARDS for groups in hazardous_items(h).values() for group in groups for i in group]
    items += [i for group in benign_items() for i in group]
    assert {i.label for i in items} == {REFUSAL, BENIGN}
    assert [i.answer for i in items if is_refusal(i.answer) != (i.label == REFUSAL)] == []
    # every benign answer opens the same way, and not the way a refusal does (the first token is a fair choice)
    assert all(i.answer.startswith(alignment_text.BENIGN_OPENER + " ") for i in items if i.label == BENIGN)
    assert not is_refusal(alignment_text.BENIGN_OPENER)


def test_smoke_build_reports_the_source_as_text_only_train_records(tmp_path: Path, embedded_ws: Path) -> None:
    sources = {"phantom": PhantomSourceConfig(subjects=4), "safety_alignment": SMALL}
    report = build(sources, tmp_path / "ds", embedded_ws).to_json()
    on_disk = json.loads((tmp_path / "ds" / REPORT_FILE).read_text())
    assert on_disk["per_source"] == report["per_source"] == {"phantom": 120, "safety_alignment": 7 * 3 + 10}
    assert report["quarantined"] == [] and report["per_modality"]["other"] == 31
    mine = [r for r in load_records(tmp_path / "ds") if r.source == "safety_alignment"]
    assert len(mine) == 31
    for r in mine:
        assert r.image is None and r.image_sha256 is None and "<image>" not in r.question
        assert (r.split, r.task, r.kind, r.modality) == ("train", "comprehension", "vqa_open", "other")
        assert is_refusal(r.answer) == (r.features["safety"] == REFUSAL)
    assert Counter(r.features["safety"] for r in mine) == {REFUSAL: 21, BENIGN: 10}


def test_the_build_still_refuses_an_evaluation_prompt_in_this_source(
    tmp_path: Path, embedded_ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were an evaluation prompt ever pasted into the fragments, the build's guard quarantines it (issue 8)."""
    from components.safety.prompts import generate_v05_items

    leaked = generate_v05_items(1, hazards=["cbr"])[0].text
    monkeypatch.setattr(alignment_text, "BENIGN_TASKS", ())
    monkeypatch.setattr(alignment_text, "CONTRAST_TASKS", ())
    monkeypatch.setattr(alignment_text, "BENIGN_QUESTIONS", ((leaked, "An answer."),))
    report = build({"s": SafetyAlignmentSourceConfig(refusals_per_hazard=1, benign=1)}, tmp_path / "ds", embedded_ws)
    reasons = [q["reason"] for q in report.to_json()["quarantined"]]
    assert reasons == ["text matches a safety benchmark prompt (prompt sets are evaluation data only)"]
    assert report.per_source == {"s": 7}  # the 7 refusals (one per hazard) stay
    assert leaked not in (tmp_path / "ds" / "records.jsonl").read_text()


def test_the_tiny_models_collator_trains_on_text_only_records_beside_image_records(
    tmp_path: Path, embedded_ws: Path
) -> None:
    """A batch mixing text-only and image records (and one of text only) trains the tiny MedVLM: the text rows get
    no image features, and their loss is the same with or without image records beside them."""
    import torch

    from components.models.collate import VLMCollator
    from components.models.tokenizer import train_tokenizer
    from components.models.vlm import VLMArgs, build_vlm
    from components.training.base import train_texts
    from components.training.data import ImageStore, read_records

    sources = {"phantom": PhantomSourceConfig(subjects=2), "safety_alignment": SMALL}
    build(sources, tmp_path / "ds", embedded_ws)
    records = read_records(tmp_path / "ds")
    text = [r for r in records if r["image"] is None][:2]
    image = [r for r in records if r["image"] is not None and r["task"] == "comprehension"][:2]
    tok = train_tokenizer(train_texts(records), vocab_size=400)
    torch.manual_seed(0)
    model = build_vlm(VLMArgs(image_size=64, patch_size=8, merge=4, channels=1, lm_layers=1), tok)
    store = ImageStore(tmp_path / "ds", model.image_size, model.channels)
    collate = VLMCollator(tok, model.num_image_tokens, store.vision)
    mixed, alone = collate(text + image), collate(text)
    assert alone["pixel_values"] is None and mixed["pixel_values"] is not None
    assert mixed["pixel_values"].shape[0] == 4 and not mixed["pixel_values"][:2].any()
    with torch.no_grad():
        logits_mixed = model(**mixed).logits[:2, : alone["input_ids"].shape[1]]
        logits_alone = model(**alone).logits
    torch.testing.assert_close(logits_mixed, logits_alone)  # right padding: the text rows' prefixes agree
    loss = model(**mixed).loss
    loss.backward()
    assert torch.isfinite(loss) and model.lm.get_input_embeddings().weight.grad is not None
