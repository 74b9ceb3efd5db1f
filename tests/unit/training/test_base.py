"""The base bootstrap's vision warm-up: which questions it learns from, what it trains, and that it lands in the
cache key and the summary. Run::

    .venv/bin/pytest tests/unit/training/test_base.py -q
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import components.training.base as base
from components.models.vlm import MedVLM
from components.training.base import base_key, bootstrap_base, image_answer_tasks, warm_up_vision
from components.training.data import ImageStore, read_records, select
from tests.unit.training.conftest import TINY


def rec(
    question: str, answer: str, image: str, kind: str = "vqa_closed", task: str = "comprehension"
) -> dict[str, Any]:
    turns = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]
    return {"id": f"{image}/{question}", "image": image, "task": task, "kind": kind, "conversations": turns}


def test_tasks_are_repeated_questions_whose_answer_varies() -> None:
    records = [rec("Is there a lesion?", "yes" if i % 2 else "No.", f"i{i}") for i in range(4)]
    records += [rec("What organ?", "liver", f"i{i}") for i in range(4)]  # one answer: nothing to learn
    records += [rec("Rare question?", "yes" if i else "no", f"i{i}") for i in range(2)]  # too few
    records += [rec("Describe.", f"text {i}", f"i{i}", kind="caption") for i in range(4)]  # captions excluded
    records += [rec("Convert.", str(i % 2), f"i{i}", task="generation") for i in range(4)]  # not comprehension
    tasks = image_answer_tasks(records, min_examples=3)
    assert [t.question for t in tasks] == ["is there lesion"]
    assert tasks[0].classes == ("no", "yes") and tasks[0].labels == (0, 1, 0, 1)
    assert tasks[0].images == ("i0", "i1", "i2", "i3")


def test_warm_up_trains_the_encoder_only_and_is_seeded(toy_base: Path, toy_dataset: Path) -> None:
    train = select(read_records(toy_dataset), split="train")
    tasks = image_answer_tasks(train, min_examples=4)
    assert {t.question for t in tasks} == {"is there lesion", "is this ct or mri", "what modality is this"}

    def warmed(seed: int) -> tuple[MedVLM, list[float]]:
        model = MedVLM.load(toy_base)
        store = ImageStore(toy_dataset, model.image_size, model.channels)
        return model, warm_up_vision(model, tasks, store, steps=40, lr=3e-3, batch_size=8, seed=seed)

    before = MedVLM.load(toy_base)
    model, losses = warmed(0)
    assert len(losses) == 40 and sum(losses[-10:]) < 0.5 * sum(losses[:10]), losses
    state, start = model.state_dict(), before.state_dict()
    changed = {n for n in state if not torch.equal(state[n], start[n])}
    assert changed and all(n.startswith("vision.") for n in changed), sorted(changed)
    assert all(p.grad is None for p in model.parameters())
    again, _ = warmed(0)
    assert all(torch.equal(v, again.state_dict()[n]) for n, v in state.items())


def test_bootstrap_records_the_warm_up_and_keys_on_it(
    toy_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = bootstrap_base(toy_dataset, tmp_path, args=TINY, vocab_size=300, steps=2, batch_size=4, vision_warmup=3)
    summary = json.loads((folder / "base.json").read_text())
    assert summary["vision_warmup"]["steps"] == 3 and summary["vision_warmup"]["tasks"] == 0  # 10 records < 32
    common: dict[str, Any] = {"vocab_size": 300, "steps": 2, "batch_size": 4, "lr": 5e-4, "seed": 0, "warmup": 1}
    assert base_key(TINY, dataset="d", vision_warmup=0, **common) != base_key(
        TINY, dataset="d", vision_warmup=9, **common
    )

    monkeypatch.setattr(base, "image_answer_tasks", lambda records: image_answer_tasks(records, min_examples=4))
    warmed = bootstrap_base(
        toy_dataset, tmp_path / "w", args=TINY, vocab_size=300, steps=2, batch_size=4, vision_warmup=3
    )
    summary = json.loads((warmed / "base.json").read_text())["vision_warmup"]
    assert summary["tasks"] == 3 and summary["first_loss"] > 0 and "resumed" not in summary
    assert not list((tmp_path / "w").glob(".base-*"))  # the work folder (and the saved warm-up) is gone once finished
    with pytest.raises(ValueError, match="no train-split comprehension records"):
        empty = tmp_path / "empty"
        empty.mkdir()
        (empty / "records.jsonl").write_text("")
        bootstrap_base(empty, tmp_path / "o", args=TINY, steps=1, vision_warmup=1)
