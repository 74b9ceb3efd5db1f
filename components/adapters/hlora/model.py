"""The H-LoRA tuner: puts :class:`~components.adapters.hlora.layer.Linear` plugins into a model (METHODS.md §1).

Used through peft, like any peft method::

    from peft import PeftModel, get_peft_model
    import components.adapters.hlora  # registers "hlora" with peft
    from components.adapters.hlora import HLoraConfig

    model = get_peft_model(lm, HLoraConfig(r=16, num_experts=4), adapter_name="comprehension")
    model.add_adapter("generation", HLoraConfig(r=64, num_experts=4))
    model.set_adapter("generation")          # HealthGPT's hard task router: one plugin per task
    model.save_pretrained(path)              # path/adapter_model.safetensors + path/generation/...
    again = PeftModel.from_pretrained(base, path, adapter_name="comprehension")
    again.load_adapter(path / "generation", adapter_name="generation")

Targets default to every ``nn.Linear`` of the language model except the output head
(:func:`components.adapters.peft_ext.lm_linear_targets`), resolved once when the plugin is injected and stored
as explicit names in the saved adapter config.
"""

from __future__ import annotations

from typing import Any

from peft.config import PeftConfig
from peft.utils.other import get_pattern_key
from torch import nn

from components.adapters.hlora.config import HLoraConfig
from components.adapters.hlora.layer import MERGE_MESSAGE, HLoraLayer, Linear, MergeNotSupportedError
from components.adapters.peft_ext import LmTuner


class HLoraModel(LmTuner):
    """peft tuner for H-LoRA plugins; one adapter name per plugin (e.g. comprehension, generation)."""

    prefix: str = "hlora_"
    tuner_layer_cls = HLoraLayer
    method_name = "H-LoRA"

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
        if not isinstance(peft_config, HLoraConfig):
            raise TypeError(f"HLoraModel needs an HLoraConfig, got {type(peft_config).__name__}")
        if current_key is None:
            raise ValueError("current_key must not be None")
        r_key = get_pattern_key(list(peft_config.rank_pattern), current_key)
        if r_key in peft_config.rank_pattern:
            r = peft_config.expert_rank(peft_config.rank_pattern[r_key])
        else:
            r = peft_config.r
        alpha_key = get_pattern_key(list(peft_config.alpha_pattern), current_key)
        alpha = peft_config.alpha_pattern.get(alpha_key, peft_config.module_alpha(r))
        kwargs: dict[str, Any] = {
            "r": r,
            "num_experts": peft_config.num_experts,
            "lora_alpha": float(alpha),
            "lora_dropout": peft_config.lora_dropout,
            "init_lora_weights": peft_config.init_lora_weights,
            "inference_mode": peft_config.inference_mode,
        }
        self._wrap_linear(Linear, adapter_name, target, target_name, parent, current_key, kwargs)

    def _check_merge_allowed(self) -> None:
        # Fail before any layer is touched: merge_adapter, merge_and_unload and unload(merge) all come here.
        raise MergeNotSupportedError(MERGE_MESSAGE)

    def merge_and_unload(self, *args: Any, **kwargs: Any) -> nn.Module:
        """Always raises :class:`MergeNotSupportedError` (the router makes the delta input-dependent)."""
        raise MergeNotSupportedError(MERGE_MESSAGE)
