"""ElaLoRA's slots, allocator and rank pattern over a tiny Llama (issue 5 acceptance; METHODS.md §2).

    .venv/bin/pytest tests/unit/adapters/test_elalora.py

The table-driven properties every method shares (zero-init identity, save/load, only adapter parameters train ...)
are in ``test_methods.py``; this file checks what only ElaLoRA has.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from components.adapters import apply_adapter
from components.adapters.elalora import (
    ElaLoraConfig,
    ElaLoraLayer,
    RankAllocator,
    pattern_for_kind,
    rank_pattern,
    reallocation_budget,
)

R0, R_MAX = 4, 8


def tiny_lm(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def token_batch(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 128, (4, 12), generator=torch.Generator().manual_seed(seed))


def elalora(total_step: int = 40, **overrides: object) -> PeftModel:
    settings: dict[str, object] = dict(
        r=R0, r_max=R_MAX, total_step=total_step, t_init=5, t_final=5, delta_t=5, b0=4, k=2
    )
    settings.update(overrides)
    return get_peft_model(tiny_lm(), ElaLoraConfig(**settings))  # type: ignore[arg-type]


def optimizer_for(model: torch.nn.Module, lr: float = 1e-2) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)


def step_once(model: PeftModel, optimizer: torch.optim.Optimizer, allocator: RankAllocator, step: int) -> object:
    ids = token_batch(step)
    model.train()
    loss = model(input_ids=ids, labels=ids).loss + allocator.regularizer()
    loss.backward()
    optimizer.step()
    moved = allocator.after_step(step)
    optimizer.zero_grad(set_to_none=True)
    return moved


def run(model: PeftModel, steps: int, seed: int = 0) -> tuple[torch.optim.Optimizer, RankAllocator]:
    optimizer = optimizer_for(model)
    allocator = RankAllocator.from_model(model, optimizer, seed=seed)
    for step in range(1, steps + 1):
        step_once(model, optimizer, allocator, step)
    return optimizer, allocator


def layers_of(model: torch.nn.Module) -> dict[str, ElaLoraLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, ElaLoraLayer)}


def test_growing_a_rank_leaves_the_layer_output_unchanged() -> None:
    model = elalora()
    run(model, 3)  # E is no longer zero: the active ranks contribute
    layer = layers_of(model)["base_model.model.model.layers.0.self_attn.q_proj"]
    x = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(0))
    layer.eval()
    with torch.no_grad():
        before = layer(x)
        active_before = layer.active_slots("default").tolist()
        grown = layer.grow_slots("default", 2, generator=torch.Generator().manual_seed(1))
        after = layer(x)
    assert layer.active_rank("default") == R0 + 2 and set(grown).isdisjoint(active_before)
    assert not torch.equal(before, layer.get_base_layer()(x))  # the adapter does change the output...
    assert torch.equal(after, before)  # ...and the new ranks do not (E = 0 at insertion)
    # the new A rows / B columns are unit vectors orthogonal to the ranks that were active
    a, b = layer.elalora_A["default"].detach(), layer.elalora_B["default"].detach()
    for slot in grown:
        assert a[slot].norm().item() == pytest.approx(1.0, abs=1e-5)
        assert b[:, slot].norm().item() == pytest.approx(1.0, abs=1e-5)
        assert (a[active_before] @ a[slot]).abs().max() < 1e-5
        assert (b[:, slot] @ b[:, active_before]).abs().max() < 1e-5


def test_total_rank_is_constant_and_no_matrix_loses_its_last_rank() -> None:
    # k large and r0 small: pruning would empty matrices if the pool offered every rank
    model = elalora(total_step=80, r=2, r_max=6, t_init=2, t_final=2, delta_t=2, b0=8, k=5)
    optimizer = optimizer_for(model)
    allocator = RankAllocator.from_model(model, optimizer)
    budget = 2 * 14
    moved = 0
    for step in range(1, 81):
        done = step_once(model, optimizer, allocator, step)
        ranks = allocator.ranks()
        assert sum(ranks.values()) == budget, step
        assert min(ranks.values()) >= 1, (step, ranks)
        assert max(ranks.values()) <= 6
        moved += len(getattr(done, "grown", []))
    assert moved > 20  # ranks really moved
    assert len(set(allocator.ranks().values())) > 1  # and the distribution is no longer uniform
    assert allocator.rounds[-1].total_rank == budget


def test_b_decays_cubically_and_rounds_follow_the_schedule() -> None:
    args = dict(total_step=100, t_init=10, t_final=20, delta_t=10, b0=6)
    budgets = {step: reallocation_budget(step, **args) for step in range(1, 101)}
    rounds = [s for s in range(1, 101) if s > 10 and s <= 80 and (s - 10) % 10 == 0]
    assert rounds == [20, 30, 40, 50, 60, 70, 80]
    for step in rounds:
        p = (step - 10) / 70
        assert budgets[step] == math.floor(6 * (1 - p**3) + 0.5), step
    assert [budgets[s] for s in rounds] == [6, 6, 6, 5, 4, 2, 0]
    assert all(b == 0 for s, b in budgets.items() if s not in rounds)  # warm-up, between rounds, final freeze
    # a run moves exactly that many ranks per round (the pool is large enough here)
    model = elalora(total_step=40, t_init=5, t_final=5, delta_t=5, b0=3, k=2)
    _, allocator = run(model, 40)
    expected = [
        reallocation_budget(r.step, total_step=40, t_init=5, t_final=5, delta_t=5, b0=3) for r in allocator.rounds
    ]
    assert [r.step for r in allocator.rounds] == [10, 15, 20, 25, 30, 35]
    assert [len(r.grown) for r in allocator.rounds] == [len(r.pruned) for r in allocator.rounds] == expected


def _round_with_grown_slots_scored_lowest(grace: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    model = elalora(total_step=40, t_init=5, t_final=5, delta_t=5, b0=2, k=2, grace=grace)
    optimizer = optimizer_for(model)
    allocator = RankAllocator.from_model(model, optimizer)
    for step in range(1, 11):  # the first round is at step 10
        step_once(model, optimizer, allocator, step)
    grown = allocator.rounds[0].grown
    assert grown
    # every active rank important, the new ones least: without a grace period they would be pruned next
    for name, layer in allocator.layers.items():
        for tensor in (*allocator.sensitivity[name], *allocator.uncertainty[name]):
            tensor.fill_(1.0)
        for _, slot in [g for g in grown if g[0] == name]:
            for index, (_param, where) in enumerate(allocator._slot_views(layer, slot)):
                allocator.sensitivity[name][index][where] = 0.0
    optimizer.zero_grad(set_to_none=True)  # no gradient: after_step keeps the EMAs as set
    assert reallocation_budget(15, total_step=40, t_init=5, t_final=5, delta_t=5, b0=2) == 2
    second = allocator.after_step(15)
    assert second is not None
    return grown, second.pruned


def test_a_just_grown_rank_is_not_pruned_inside_its_grace_period() -> None:
    grown, pruned = _round_with_grown_slots_scored_lowest(grace=0)  # 0: one Δ, so step 15 is inside it
    assert pruned and not set(grown) & set(pruned)
    grown, pruned = _round_with_grown_slots_scored_lowest(grace=4)  # the control: grace over by step 15
    assert set(grown) & set(pruned)


def test_adam_moments_survive_for_untouched_slots_and_reset_for_moved_ones() -> None:
    model = elalora(total_step=40, t_init=5, t_final=5, delta_t=5, b0=4, k=2)
    optimizer = optimizer_for(model, lr=1e-2)
    allocator = RankAllocator.from_model(model, optimizer)
    for step in range(1, 10):
        step_once(model, optimizer, allocator, step)
    state = {p: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    lr_before = optimizer.param_groups[0]["lr"]
    moved = step_once(model, optimizer, allocator, 10)
    assert moved is not None and moved.grown and moved.pruned
    changed = set(moved.grown) | set(moved.pruned)
    for name, layer in allocator.layers.items():
        for slot in range(R_MAX):
            for param, where in allocator._slot_views(layer, slot):
                now, before = optimizer.state[param], state[param]
                if (name, slot) in changed:
                    assert not now["exp_avg"][where].any() and not now["exp_avg_sq"][where].any(), (name, slot)
                elif layer.elalora_mask["default"][slot] > 0:
                    # untouched: the moments went on from step 9's (one more Adam update, not a restart)
                    assert now["exp_avg"][where].abs().sum() > 0
                    assert not torch.equal(now["exp_avg_sq"][where], torch.zeros_like(now["exp_avg_sq"][where]))
                    assert now["step"] == before["step"] + 1
    assert optimizer.param_groups[0]["lr"] == lr_before  # the same optimizer object and schedule
    # step handling: a grown slot's first update is a fresh Adam's first update, lr x sign(g) for E
    name, slot = moved.grown[0]
    e = allocator.layers[name].elalora_E["default"]
    value = float(e[slot].detach())
    assert value == 0.0
    step_once(model, optimizer, allocator, 11)
    assert abs(float(e[slot].detach()) - value) == pytest.approx(1e-2, rel=1e-3)  # uncorrected it would be ~3.2e-2


def test_save_and_load_restore_the_masks_and_the_pattern(tmp_path: Path) -> None:
    model = elalora(total_step=30, t_init=5, t_final=5, delta_t=5, b0=4, k=2)
    _, allocator = run(model, 30)
    pattern = rank_pattern(model)
    assert pattern == allocator.ranks() and len(set(pattern.values())) > 1
    ids = token_batch(99)
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "ELALORA" and saved["rank_pattern"] == pattern

    loaded = PeftModel.from_pretrained(tiny_lm(), tmp_path)
    assert rank_pattern(loaded) == pattern
    masks = {n: layer.elalora_mask["default"] for n, layer in layers_of(model).items()}
    for name, layer in layers_of(loaded).items():
        assert torch.equal(layer.elalora_mask["default"], masks[name]), name
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, expected)


def test_merge_equals_the_masked_forward() -> None:
    model = get_peft_model(tiny_lm(), ElaLoraConfig(r=R0, r_max=R_MAX, init_lora_weights=False))
    layer = next(iter(layers_of(model).values()))
    layer.prune_slots("default", [0, 2])
    ids = token_batch()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        merged = model.merge_and_unload()(input_ids=ids).logits
    assert torch.allclose(merged, expected, atol=1e-5)


def test_the_regularizer_is_zero_for_orthonormal_ranks_and_counts_only_active_ones() -> None:
    model = elalora()
    allocator = RankAllocator.from_model(model, None)
    assert allocator.regularizer() > 0  # N(0, 0.02²) rows are far from orthonormal
    with torch.no_grad():
        for layer in allocator.layers.values():
            a, b = layer.elalora_A["default"], layer.elalora_B["default"]
            a.copy_(torch.eye(R_MAX, a.shape[1]))
            b.copy_(torch.eye(b.shape[0], R_MAX))
            a[R0:] = 5.0  # inactive slots: ignored
    assert allocator.regularizer().item() == pytest.approx(0.0, abs=1e-6)


def test_the_pattern_feeds_hlora_and_lora_configs() -> None:
    model = elalora(total_step=30, r=8, r_max=16, t_init=5, t_final=5, delta_t=5, b0=4, k=2)
    run(model, 30)
    pattern = rank_pattern(model)
    total = sum(pattern.values())
    assert total == 8 * 14
    hlora = pattern_for_kind(pattern, "hlora", num_experts=4)
    assert all(v % 4 == 0 and v >= 4 for v in hlora.values())
    assert abs(sum(hlora.values()) - total) < 4 and hlora != {n: 8 for n in pattern}
    assert pattern_for_kind(pattern, "lora") == pattern
    for kind, expected in (("hlora", hlora), ("lora", pattern)):
        kwargs = {"num_experts": 4} if kind == "hlora" else {}
        wrapped = apply_adapter(tiny_lm(), kind, adapter_name="comprehension", rank=8, rank_pattern=expected, **kwargs)
        for name, module in wrapped.named_modules():
            key = name.removeprefix("base_model.model.")
            if key in expected and hasattr(module, "r") and isinstance(module.r, dict) and "comprehension" in module.r:
                experts = module.num_experts["comprehension"] if kind == "hlora" else 1
                assert module.r["comprehension"] * experts == expected[key], (kind, key)
        config = wrapped.peft_config["comprehension"]
        assert config.rank_pattern == expected  # what adapter_config.json records


def test_hlora_mapping_rounds_by_largest_remainder() -> None:
    pattern = {"a": 5, "b": 3, "c": 9, "d": 1, "e": 14}  # total 32 = 8 units of 4
    assert pattern_for_kind(pattern, "hlora", num_experts=4) == {"a": 4, "b": 4, "c": 8, "d": 4, "e": 12}
    with pytest.raises(ValueError, match="positive"):
        pattern_for_kind({"a": 0}, "hlora")
    with pytest.raises(ValueError, match="known: elalora, hlora, lora"):
        pattern_for_kind(pattern, "qlora")


def test_bad_settings_fail_with_the_setting_named() -> None:
    with pytest.raises(ValueError, match="r_max"):
        ElaLoraConfig(r=8, r_max=4)
    with pytest.raises(ValueError, match="rank_pattern"):
        ElaLoraConfig(r=4, r_max=8, rank_pattern={"q_proj": 9})
    with pytest.raises(ValueError, match="total_step"):
        RankAllocator.from_model(get_peft_model(tiny_lm(), ElaLoraConfig(r=2)), None)
    model = elalora()
    with pytest.raises(TypeError, match="Adam"):
        RankAllocator.from_model(model, torch.optim.SGD(model.parameters(), lr=0.1))
