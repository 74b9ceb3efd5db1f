"""The FLix tuner: puts :class:`~components.adapters.flix.layer.Linear` layers into a model (METHODS.md §3).

Used through peft, like any peft method; each call carries one mapping of feature values per example::

    from peft import PeftModel, get_peft_model
    import components.adapters.flix  # registers "flix" with peft
    from components.adapters.flix import FLixConfig, use_features

    config = FLixConfig(features={"task": ["comprehension", "generation"], "modality": ["CT", "MRI"]}, r=4)
    model = get_peft_model(lm, config, adapter_name="comprehension")
    rows = [{"task": "comprehension", "modality": "CT"}, {"task": "comprehension", "modality": "MRI"}]
    out = model(input_ids=ids, flix_features=rows)        # a mixed batch: each row its own adapters
    with use_features(rows):                                # or: several calls (a decoding loop) share one batch
        out = model(input_ids=ids)
    model.save_pretrained(path)                              # the vocabulary is in adapter_config.json
    again = PeftModel.from_pretrained(base, path, adapter_name="comprehension")

``flix_features=`` is taken out of the call by a forward pre-hook on the wrapped transformers model (so it works
through ``PeftModel``, through the tuner and on the wrapped model itself, and the transformers model never sees
it); a forward hook restores the previous state afterwards, also when the forward raises. A forward without
features fails with :class:`~components.adapters.flix.features.FeaturesMissingError` as soon as a FLix layer runs
(a disabled adapter, ``with model.disable_adapter():``, needs none).

Targets default to every ``nn.Linear`` of the language model except the output head
(:func:`components.adapters.peft_ext.lm_linear_targets`), resolved once when the adapter is injected and stored as
explicit names in the saved config.
"""

from __future__ import annotations

from typing import Any

from peft.config import PeftConfig
from peft.utils.other import get_pattern_key
from torch import nn
from torch.utils.hooks import RemovableHandle

from components.adapters.flix.config import FLixConfig
from components.adapters.flix.features import FEATURES_KWARG, enter_call, exit_call
from components.adapters.flix.layer import MERGE_MESSAGE, FLixLayer, Linear, MergeNotSupportedError
from components.adapters.peft_ext import LmTuner


class FLixModel(LmTuner):
    """peft tuner for FLix adapters; see the module docstring for how features are passed."""

    prefix: str = "flix_"
    tuner_layer_cls = FLixLayer
    method_name = "FLix"

    def __init__(self, model: nn.Module, peft_config: Any, adapter_name: str, **kwargs: Any) -> None:
        super().__init__(model, peft_config, adapter_name, **kwargs)
        self._hooks: list[RemovableHandle] = [
            self.model.register_forward_pre_hook(_take_features, with_kwargs=True),
            self.model.register_forward_hook(_release_features, always_call=True),
        ]

    # -- injection ---------------------------------------------------------------------------------------------------
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
        if not isinstance(peft_config, FLixConfig):
            raise TypeError(f"FLixModel needs a FLixConfig, got {type(peft_config).__name__}")
        if current_key is None:
            raise ValueError("current_key must not be None")
        r_key = get_pattern_key(list(peft_config.rank_pattern), current_key)
        if r_key in peft_config.rank_pattern:
            r = peft_config.feature_rank(peft_config.rank_pattern[r_key])
        else:
            r = peft_config.r
        alpha_key = get_pattern_key(list(peft_config.alpha_pattern), current_key)
        alpha = peft_config.alpha_pattern.get(alpha_key, peft_config.lora_alpha)
        kwargs: dict[str, Any] = {
            "spec": peft_config.spec(),
            "r": r,
            "lora_alpha": float(alpha) if alpha is not None else 2.0 * r,
            "feature_scales": peft_config.feature_scales(r, alpha),
            "feature_dropout": peft_config.feature_dropout,
            "lora_dropout": peft_config.lora_dropout,
            "init_lora_weights": peft_config.init_lora_weights,
            "inference_mode": peft_config.inference_mode,
        }
        self._wrap_linear(Linear, adapter_name, target, target_name, parent, current_key, kwargs)

    # -- no merging ----------------------------------------------------------------------------------------------
    def _check_merge_allowed(self) -> None:
        # Fail before any layer is touched: merge_adapter, merge_and_unload and unload(merge) all come here.
        raise MergeNotSupportedError(MERGE_MESSAGE)

    def merge_and_unload(self, *args: Any, **kwargs: Any) -> nn.Module:
        """Always raises :class:`MergeNotSupportedError` (the delta depends on each example's features)."""
        raise MergeNotSupportedError(MERGE_MESSAGE)

    def unload(self) -> nn.Module:
        """The base model without the FLix layers and without the feature hooks."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        return super().unload()


def _take_features(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Forward pre-hook on the wrapped model: take ``flix_features=`` out of the call and make it the call's."""
    enter_call(kwargs.pop(FEATURES_KWARG, None))
    return args, kwargs


def _release_features(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    """Forward hook (``always_call``): restore the features from before the call."""
    exit_call()
