"""The rank-search stage's component on the toy dataset and tiny base (issue 5): a short ElaLoRA run whose pattern
keeps the budget, is written with its plots, is re-used, and becomes the train stage's plugin ranks.

    .venv/bin/pytest tests/unit/training/test_rank_search.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from components.adapters.elalora import pattern_for_kind
from components.training.plugins import AdapterArgs, prepare_model
from components.training.rank_search import SearchArgs, layer_and_module, search_ranks

ARGS = SearchArgs(steps=12, rank=4, r_max=8, b0=2, k=2, delta_t=2, t_init=2, t_final=2, batch_size=4, lr=5e-3)
MATRICES = 2 * 7  # the tiny LM: 2 layers x (q, k, v, o, gate, up, down)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_the_search_keeps_the_budget_writes_its_files_and_is_reused(
    toy_dataset: Path, toy_base: Path, tmp_path: Path
) -> None:
    seen: list[tuple[int, dict[str, float]]] = []
    told: list[tuple[int, int, float | None]] = []
    result = search_ranks(
        toy_base, toy_dataset, tmp_path, ARGS, on_metrics=lambda s, m: seen.append((s, m)),
        progress=lambda *call: told.append(call),
    )  # fmt: skip
    assert told == [(0, ARGS.steps, None)] + [(s, ARGS.steps, loss) for s, loss in enumerate(result.losses, 1)]
    pattern = result.pattern
    assert len(pattern) == MATRICES and all(name.startswith("model.layers.") for name in pattern)
    assert sum(pattern.values()) == ARGS.rank * MATRICES
    assert min(pattern.values()) >= 1 and max(pattern.values()) <= 8
    assert result.rounds == 4 and result.moved > 0 and len(set(pattern.values())) > 1
    assert json.loads(result.pattern_file.read_text()) == pattern
    trajectory = json.loads(result.trajectory_file.read_text())
    assert trajectory[0] == {"step": 0, "ranks": {name: 4 for name in pattern}}
    assert trajectory[-1] == {"step": ARGS.steps, "ranks": pattern}
    assert all(sum(t["ranks"].values()) == ARGS.rank * MATRICES for t in trajectory)
    for png in (result.heatmap, result.trajectory_plot):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [s for s, _ in seen] == list(range(1, 13)) and all("rank_search/loss" in m for _, m in seen)
    assert sum(m.get("rank_search/moved", 0) for _, m in seen) == result.moved

    again = search_ranks(toy_base, toy_dataset, tmp_path, ARGS, progress=lambda *call: told.append(call))
    assert again.reused and again.pattern == pattern and len(told) == ARGS.steps + 1  # re-used: nothing to report
    other = search_ranks(toy_base, toy_dataset, tmp_path, SearchArgs(**{**ARGS.__dict__, "seed": 1}))
    assert not other.reused  # other settings: searched again, not the stale result


def test_the_pattern_becomes_the_plugins_ranks(toy_dataset: Path, toy_base: Path, tmp_path: Path) -> None:
    pattern = search_ranks(toy_base, toy_dataset, tmp_path, ARGS).pattern
    mapped = pattern_for_kind(pattern, "hlora", num_experts=2)
    adapter = AdapterArgs(kind="hlora", rank=4, generation_rank=8, num_experts=2, rank_pattern=mapped)
    model = prepare_model(toy_base, codebook_size=16, adapter=adapter)
    checked = 0
    for name, module in model.lm.named_modules():
        key = name.split("base_model.model.")[-1]
        if key in mapped and hasattr(module, "num_experts"):
            assert module.r["comprehension"] * 2 == mapped[key], key
            assert module.r["generation"] * 2 == 2 * mapped[key], key  # generation_rank / rank = 2
            checked += 1
    assert checked == MATRICES
    assert model.lm.peft_config["comprehension"].rank_pattern == mapped  # what adapter_config.json records


def test_layer_and_module_names() -> None:
    assert layer_and_module("model.layers.3.self_attn.q_proj") == (3, "q_proj")
    assert layer_and_module("lm_head") == (-1, "lm_head")


def test_bad_search_settings_fail_early() -> None:
    with pytest.raises(ValueError, match="t_init"):
        SearchArgs(steps=10, t_init=6, t_final=6)
