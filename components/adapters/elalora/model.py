"""The ElaLoRA tuner: puts :class:`~components.adapters.elalora.layer.Linear` layers into a model (METHODS.md §2).

Used through peft, like any peft method, with an :class:`~components.adapters.elalora.allocator.RankAllocator`
driving the rank moves during training::

    from peft import PeftModel, get_peft_model
    from components.adapters.elalora import ElaLoraConfig, RankAllocator, rank_pattern

    model = get_peft_model(lm, ElaLoraConfig(r=8, r_max=16, total_step=300, t_init=30, t_final=30, delta_t=10))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    allocator = RankAllocator.from_model(model, optimizer)
    for step in range(1, 301):
        loss = model(**batch).loss + allocator.regularizer()
        loss.backward(); optimizer.step()
        allocator.after_step(step)           # importance EMAs, and every Δ steps one reallocation round
        optimizer.zero_grad()
    rank_pattern(model)                      # {"model.layers.0.self_attn.q_proj": 11, ...}
    model.save_pretrained(path)              # masks in the safetensors, the pattern in adapter_config.json
    again = PeftModel.from_pretrained(base, path)

Targets default to every ``nn.Linear`` of the language model except the output head
(:func:`components.adapters.peft_ext.lm_linear_targets`), as for the other medtune methods.
"""

from __future__ import annotations

from typing import Any

from peft.config import PeftConfig
from peft.utils.other import get_pattern_key
from torch import nn

from components.adapters.elalora.config import ElaLoraConfig
from components.adapters.elalora.layer import ElaLoraLayer, Linear
from components.adapters.peft_ext import LmTuner


class ElaLoraModel(LmTuner):
    """peft tuner for ElaLoRA adapters."""

    prefix: str = "elalora_"
    tuner_layer_cls = ElaLoraLayer
    method_name = "ElaLoRA"

    def _create_and_replace(
        self,
        peft_config: PeftConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        parameter_name: str | None = None,
        **optional_kwargs: Any,
    ) -> None:
        if not isinstance(peft_config, ElaLoraConfig):
            raise TypeError(f"ElaLoraModel needs an ElaLoraConfig, got {type(peft_config).__name__}")
        if current_key is None:
            raise ValueError("current_key must not be None")
        r_key = get_pattern_key(list(peft_config.rank_pattern), current_key)
        r = int(peft_config.rank_pattern.get(r_key, peft_config.r))
        assert peft_config.r_max is not None  # set by __post_init__
        kwargs: dict[str, Any] = {
            "r": r,
            "r_max": peft_config.r_max,
            "lora_alpha": peft_config.scale_alpha,
            "scale_rank": peft_config.r,
            "lora_dropout": peft_config.lora_dropout,
            "init_lora_weights": peft_config.init_lora_weights,
            "inference_mode": peft_config.inference_mode,
        }
        self._wrap_linear(Linear, adapter_name, target, target_name, parent, current_key, kwargs)
