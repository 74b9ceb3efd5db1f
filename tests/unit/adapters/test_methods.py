"""Every adapter method over a tiny Llama, one table row per method (STYLE.md point 4; issue 4 acceptance).

    .venv/bin/pytest tests/unit/adapters

A new method adds one :class:`Method` row to ``METHODS`` (how to read its per-layer rank and scale) and,
if it needs any, its own ``test_<method>.py`` beside this file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from components.adapters import add_adapter, apply_adapter
from components.adapters.flix import use_features

RANK = 8  # total rank per layer; H-LoRA: 4 experts x 2


@dataclass(frozen=True)
class Method:
    kind: str
    prefix: str  # the method's parameter-name prefix (peft's PEFT_TYPE_TO_PREFIX_MAPPING)
    total_rank: Callable[[Any, str], int]  # (tuner layer, adapter name) -> the layer's total rank
    default_scale: float  # the scale of every layer when alpha is left at its default (2 x total rank)
    kwargs: dict[str, Any] = field(default_factory=dict)
    # entered around each test of the method (FLix: the per-example features of token_batch()'s two rows)
    context: Callable[[], AbstractContextManager[Any]] = nullcontext
    train_lr: float = 1e-2  # learning rate of the "loss falls" test


METHODS = [
    Method("lora", "lora_", lambda layer, name: layer.r[name], default_scale=2.0),
    Method(
        "hlora",
        "hlora_",
        lambda layer, name: layer.r[name] * layer.num_experts[name],
        default_scale=8.0,  # alpha / r_per_expert = 2 * k * r / r = 2k
        kwargs={"num_experts": 4},
    ),
    # ElaLoRA: rank = initial active rank r0 of r_max = 2 r0 slots; scale alpha / r0 = 2 whatever the pattern says
    # (AdaLoRA's init: A, B ~ N(0, 0.02²), E = 0, so the delta grows slowly at first: a larger rate for 8 steps)
    Method("elalora", "elalora_", lambda layer, name: layer.active_rank(name), default_scale=2.0, train_lr=5e-2),
]
METHODS.append(  # FLix: rank = an example's total rank, 2 features x 4; default alpha gives a scale of 2 per feature
    Method(
        "flix",
        "flix_",
        lambda layer, name: layer.r[name] * len(layer.flix_spec[name].names),
        default_scale=2.0,
        kwargs={"features": {"task": ["comprehension", "generation"], "modality": ["CT", "MRI", "X-ray"]}},
        context=lambda: use_features([{"task": "comprehension", "modality": "CT"}, {"task": "generation"}]),
    )
)
IDS = [method.kind for method in METHODS]


@pytest.fixture(autouse=True)
def _method_context(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run each parametrised test inside its method's ``context`` (a FLix forward needs per-example features)."""
    method = getattr(getattr(request.node, "callspec", None), "params", {}).get("method")
    with method.context() if isinstance(method, Method) else nullcontext():
        yield


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
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 128, (2, 12), generator=generator)


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def wrap(method: Method, model: nn.Module, name: str = "comprehension", **overrides: Any) -> PeftModel:
    kwargs = {**method.kwargs, **overrides}
    return apply_adapter(model, method.kind, adapter_name=name, rank=kwargs.pop("rank", RANK), **kwargs)


def tuner_layers(model: nn.Module) -> dict[str, BaseTunerLayer]:
    return {name: module for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)}


def train_steps(model: nn.Module, ids: torch.Tensor, steps: int, lr: float = 1e-2) -> list[float]:
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_zero_initialised_b_leaves_outputs_unchanged(method: Method) -> None:
    lm, ids = tiny_lm(), token_batch()
    expected = logits(lm, ids)
    model = wrap(method, lm)
    assert torch.equal(logits(model, ids), expected)


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_save_then_load_gives_identical_outputs_for_both_plugins(method: Method, tmp_path: Path) -> None:
    ids = token_batch()
    model = wrap(method, tiny_lm(), init_lora_weights=False)
    add_adapter(model, method.kind, adapter_name="generation", rank=2 * RANK, init_lora_weights=False, **method.kwargs)
    expected = {}
    for name in ("comprehension", "generation"):
        model.set_adapter(name)
        expected[name] = logits(model, ids)
    assert not torch.equal(expected["comprehension"], expected["generation"])
    model.save_pretrained(tmp_path)

    for name in ("comprehension", "generation"):  # peft stores each plugin in its own folder, as safetensors
        assert (tmp_path / name / "adapter_model.safetensors").is_file()
        assert json.loads((tmp_path / name / "adapter_config.json").read_text())["peft_type"] == method.kind.upper()
    loaded = PeftModel.from_pretrained(tiny_lm(), tmp_path / "comprehension", adapter_name="comprehension")
    loaded.load_adapter(tmp_path / "generation", adapter_name="generation")
    for name in ("comprehension", "generation"):
        loaded.set_adapter(name)
        assert torch.equal(logits(loaded, ids), expected[name]), name


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_only_the_active_adapter_parameters_require_grad(method: Method) -> None:
    model = wrap(method, tiny_lm())
    add_adapter(model, method.kind, adapter_name="generation", rank=RANK, **method.kwargs)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for name in trainable:
        assert f".{method.prefix}" in name and ".comprehension" in name, name
    model.set_adapter("generation")
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".generation" in name for name in trainable)


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_the_loss_falls_over_a_few_adamw_steps(method: Method) -> None:
    model = wrap(method, tiny_lm())
    losses = train_steps(model, token_batch(), steps=8, lr=method.train_lr)
    assert losses[-1] < losses[0] - 0.1, losses


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_rank_pattern_sets_the_rank_per_module_and_keeps_the_default_scale(method: Method) -> None:
    pattern = {"down_proj": 16, r"layers\.1\.self_attn\.q_proj": 4}
    model = wrap(method, tiny_lm(), rank_pattern=pattern)
    layers = tuner_layers(model)
    for name, layer in layers.items():
        if name.endswith("down_proj"):
            expected = 16
        elif name.endswith("layers.1.self_attn.q_proj"):
            expected = 4
        else:
            expected = RANK
        assert method.total_rank(layer, "comprehension") == expected, name
        assert layer.scaling["comprehension"] == pytest.approx(method.default_scale), name


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_default_targets_are_every_linear_of_the_lm_except_lm_head(method: Method) -> None:
    model = wrap(method, tiny_lm())
    wrapped = set(tuner_layers(model))
    linears = {name for name, m in tiny_lm().named_modules() if isinstance(m, nn.Linear)}
    assert {name.removeprefix("base_model.model.") for name in wrapped} == linears - {"lm_head"}
    assert len(wrapped) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    assert isinstance(model.get_base_model().lm_head, nn.Linear)


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_a_configured_subset_of_targets(method: Method) -> None:
    model = wrap(method, tiny_lm(), target_modules=["q_proj", "v_proj"])
    assert sorted(name.rsplit(".", 1)[-1] for name in tuner_layers(model)) == ["q_proj"] * 2 + ["v_proj"] * 2


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_training_one_plugin_leaves_the_other_exactly_unchanged(method: Method) -> None:
    ids = token_batch()
    model = wrap(method, tiny_lm())
    add_adapter(model, method.kind, adapter_name="generation", rank=RANK, init_lora_weights=False, **method.kwargs)
    model.set_adapter("generation")
    generation_before = logits(model, ids)
    model.set_adapter("comprehension")
    comprehension_before = logits(model, ids)

    train_steps(model, ids, steps=3)

    comprehension_after = logits(model, ids)
    model.set_adapter("generation")
    assert torch.equal(logits(model, ids), generation_before)
    assert not torch.equal(comprehension_after, comprehension_before)
    assert not torch.equal(comprehension_after, generation_before)


def test_an_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown adapter kind 'qlora'.*hlora.*lora"):
        apply_adapter(tiny_lm(), "qlora", adapter_name="x")
