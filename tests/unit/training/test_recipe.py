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

from components.training.recipe import train_recipe
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
