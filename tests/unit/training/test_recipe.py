"""The recipe in process on the toy dataset: stage by stage (``medtune train --stage 1``, ``--stage 2``, ...) equals
all stages in one call, and a later stage without its predecessor fails with the command to run. Run::

    .venv/bin/pytest tests/unit/training/test_recipe.py -q
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from components.training.recipe import evaluate_recipe, train_recipe
from tests.unit.training.conftest import TINY


def run(out: Path, stages: str, toy_dataset: Path, toy_base: Path, toy_vq: Path) -> Any:
    return train_recipe(
        toy_dataset, out, model_args=TINY, base_dir=toy_base, vq_dir=toy_vq, rank=4, generation_rank=8,
        num_experts=2, stage_steps={1: 2, 2: 2, 3: 2}, batch_size=2, stages=stages, evaluate=False,
    )  # fmt: skip


def test_stage_by_stage_equals_all_stages(toy_dataset: Path, toy_base: Path, toy_vq: Path, tmp_path: Path) -> None:
    together = run(tmp_path / "together", "1,2,3", toy_dataset, toy_base, toy_vq)
    for stage in ("1", "2", "3"):
        apart = run(tmp_path / "apart", stage, toy_dataset, toy_base, toy_vq)
    want = load_file(str(together.model_dir / "trained.safetensors"))
    got = load_file(str(apart.model_dir / "trained.safetensors"))
    assert want.keys() == got.keys()
    for name, value in want.items():
        assert torch.equal(got[name], value), name
    assert set(together.loss_curves) == {"1", "2", "3"} and together.adapters["generation"].is_dir()


def test_a_later_stage_needs_its_predecessor(toy_dataset: Path, toy_base: Path, toy_vq: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train stage 2 first"):
        run(tmp_path / "w", "3", toy_dataset, toy_base, toy_vq)


def test_progress_names_every_phase_and_evaluation_counts_records(
    toy_dataset: Path, toy_base: Path, tmp_path: Path
) -> None:
    """The callbacks behind the progress lines (issue 17): each phase announces its start, then reports every step;
    evaluation reports records answered, batch by batch, up to the split's total."""
    calls: list[tuple[str, int, int, float | None]] = []
    result = train_recipe(
        toy_dataset, tmp_path / "w", model_args=TINY, base_dir=toy_base, vq_steps=3, rank=4, generation_rank=8,
        num_experts=2, stage_steps={1: 2, 2: 2, 3: 2}, batch_size=2, evaluate=False,
        progress=lambda *call: calls.append(call),
    )  # fmt: skip
    assert list(dict.fromkeys(name for name, *_ in calls)) == ["VQ tokenizer", "stage 1", "stage 2", "stage 3"]
    assert [(s, n) for name, s, n, _ in calls if name == "VQ tokenizer"] == [(1, 3), (2, 3), (3, 3)]
    for stage in ("stage 1", "stage 2", "stage 3"):
        mine = [(s, n, loss) for name, s, n, loss in calls if name == stage]
        assert mine[0] == (0, 2, None) and [(s, n) for s, n, _ in mine[1:]] == [(1, 2), (2, 2)]
        assert all(isinstance(loss, float) for *_, loss in mine[1:])

    counted: list[tuple[int, int, float | None]] = []
    evaluation = evaluate_recipe(result.model_dir, toy_dataset, batch_size=2, progress=lambda *c: counted.append(c))
    total = len(evaluation.predictions)
    assert counted[0] == (0, total, None) and counted[-1] == (total, total, None)
    steps = [b[0] - a[0] for a, b in zip(counted, counted[1:], strict=False)]
    assert all(1 <= d <= 2 for d in steps) and {n for _, n, _ in counted} == {total}
