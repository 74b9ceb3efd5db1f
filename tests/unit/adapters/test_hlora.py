"""H-LoRA's own properties (METHODS.md §1): the fused forward is the per-expert mixture, the router is a softmax,
dropout sits on A x, merging is refused, the peft registration is idempotent.

    .venv/bin/pytest tests/unit/adapters/test_hlora.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft.utils.peft_types import PeftType
from torch import nn
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from components.adapters import apply_adapter
from components.adapters.hlora import HLoraConfig, HLoraModel, Linear, MergeNotSupportedError
from components.adapters.peft_ext import ensure_peft_type, lm_linear_targets, register_method
from tests.unit.adapters.test_methods import logits, tiny_lm, token_batch


def hlora_linear(k: int, r: int, *, alpha: float = 6.0, dropout: float = 0.0, seed: int = 0) -> Linear:
    torch.manual_seed(seed)
    layer = Linear(
        nn.Linear(24, 40),
        "p",
        r=r,
        num_experts=k,
        lora_alpha=alpha,
        lora_dropout=dropout,
        init_lora_weights=False,
    )
    return layer.double()


def expert_loop(layer: Linear, x: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
    """The definition, one expert at a time: base(x) + sum_e g_e(x) * B_e A_e x * alpha / r."""
    k, r, scale = layer.num_experts["p"], layer.r["p"], layer.scaling["p"]
    a, b, router = layer.hlora_A["p"], layer.hlora_B["p"], layer.hlora_router["p"]
    gates = torch.softmax(x @ router.T, dim=-1)
    hidden = x @ a.T if hidden is None else hidden
    out = layer.base_layer(x)
    for e in range(k):
        rows = slice(e * r, (e + 1) * r)
        out = out + gates[..., e : e + 1] * (hidden[..., rows] @ b[:, rows].T) * scale
    return out


@pytest.mark.parametrize(("k", "r", "shape"), [(1, 4, (5, 24)), (4, 3, (2, 7, 24)), (8, 2, (3, 2, 5, 24))])
def test_the_fused_forward_and_its_gradients_equal_the_per_expert_loop(k: int, r: int, shape: tuple[int, ...]) -> None:
    layer = hlora_linear(k, r)
    x = torch.randn(*shape, dtype=torch.float64)
    fused = layer(x)
    reference = expert_loop(layer, x)
    torch.testing.assert_close(fused, reference, rtol=1e-12, atol=1e-12)

    params = [layer.hlora_A["p"], layer.hlora_B["p"], layer.hlora_router["p"]]
    upstream = torch.randn_like(fused)
    fused_grads = torch.autograd.grad(fused, params, upstream)
    reference_grads = torch.autograd.grad(expert_loop(layer, x), params, upstream)
    for got, want in zip(fused_grads, reference_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_dropout_applies_to_the_experts_hidden_activations_before_b() -> None:
    layer = hlora_linear(4, 3, dropout=0.5).train()
    x = torch.randn(6, 24, dtype=torch.float64)
    torch.manual_seed(7)
    fused = layer(x)
    torch.manual_seed(7)  # the same mask: dropout is the only random draw, on the (..., k*r) activations A x
    hidden = F.dropout(x @ layer.hlora_A["p"].T, p=0.5, training=True)
    torch.testing.assert_close(fused, expert_loop(layer, x, hidden), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(fused, expert_loop(layer, x))


def test_router_weights_are_a_softmax_over_the_experts() -> None:
    layer = hlora_linear(4, 3)
    gates = layer.router_weights("p", torch.randn(2, 9, 24, dtype=torch.float64))
    assert gates.shape == (2, 9, 4)
    assert bool((gates > 0).all())
    torch.testing.assert_close(gates.sum(-1), torch.ones(2, 9, dtype=gates.dtype))
    assert gates.std(dim=(0, 1)).max() > 0  # the weights depend on the token


def test_default_alpha_is_twice_the_total_rank_so_the_scale_is_2k() -> None:
    config = HLoraConfig(r=16, num_experts=4)
    assert config.module_alpha(16) == 128.0  # HealthGPT M3: total rank 64, alpha 128
    assert config.module_alpha(16) / 16 == 8.0
    assert config.expert_rank(64) == 16 and config.expert_rank(10) == 2 and config.expert_rank(3) == 1
    assert HLoraConfig(lora_alpha=32).module_alpha(16) == 32.0


def test_merging_is_refused_with_a_clear_error_and_unload_returns_the_base_model() -> None:
    lm, ids = tiny_lm(), token_batch()
    expected = logits(lm, ids)
    model = apply_adapter(lm, "hlora", adapter_name="comprehension", rank=8, init_lora_weights=False)
    before = logits(model, ids)
    for merge in (model.merge_and_unload, model.base_model.merge_adapter):
        with pytest.raises(MergeNotSupportedError, match="router.*depend"):
            merge()
    assert torch.equal(logits(model, ids), before)  # nothing was touched
    with model.disable_adapter():
        assert torch.equal(logits(model, ids), expected)
    assert torch.equal(logits(model.unload(), ids), expected)


def test_the_saved_config_is_deterministic_and_records_the_resolved_targets(tmp_path: Path) -> None:
    model = apply_adapter(tiny_lm(), "hlora", adapter_name="comprehension", rank=8, rank_pattern={"down_proj": 16})
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "comprehension" / "adapter_config.json").read_text())
    assert saved["target_modules"] == sorted(saved["target_modules"]) and len(saved["target_modules"]) == 14
    assert saved["rank_pattern"] == {"down_proj": 16} and saved["r"] == 2 and saved["num_experts"] == 4


def test_the_total_rank_must_be_a_multiple_of_the_experts() -> None:
    with pytest.raises(ValueError, match="TOTAL rank"):
        apply_adapter(tiny_lm(), "hlora", adapter_name="x", rank=10, num_experts=4)


def test_peft_registration_is_idempotent() -> None:
    member = ensure_peft_type("hlora")
    assert member is ensure_peft_type("hlora") is PeftType("HLORA") is PeftType["HLORA"] is PeftType.HLORA
    assert [m for m in PeftType if m == "HLORA"] == [member]
    assert register_method(name="hlora", config_cls=HLoraConfig, model_cls=HLoraModel) is member

    class Other(HLoraModel):
        pass

    with pytest.raises(KeyError, match="already registered"):
        register_method(name="hlora", config_cls=HLoraConfig, model_cls=Other)


def test_default_targets_of_a_vlm_are_its_language_model_only() -> None:
    torch.manual_seed(0)
    text = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    vlm = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_id=127))
    names = lm_linear_targets(vlm)
    assert len(names) == 7 and all(".language_model." in name for name in names)
    assert not any("vision" in name or "projector" in name or "lm_head" in name for name in names)


def test_a_bf16_model_with_float32_plugins_runs_and_starts_unchanged() -> None:
    lm, ids = tiny_lm().to(torch.bfloat16), token_batch()
    expected = logits(lm, ids)
    model = apply_adapter(lm, "hlora", adapter_name="comprehension", rank=8)
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    assert layer.hlora_A["comprehension"].dtype == torch.float32  # peft's autocast_adapter_dtype
    assert torch.equal(logits(model, ids), expected)
    layer.hlora_B["comprehension"].data.normal_()
    assert logits(model, ids).dtype == torch.bfloat16 and not torch.equal(logits(model, ids), expected)
