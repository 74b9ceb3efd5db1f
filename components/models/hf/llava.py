"""LLaVA (``LlavaForConditionalGeneration``: LLaVA-1.5, LLaVA-Med v1.5 in llava-hf format).

HVP: comprehension reads ``vision_feature_layer`` (LLaVA-1.5: -2, the penultimate CLIP layer) through the
pretrained ``multi_modal_projector``; generation reads ``model.generation_layer`` (a shallow CLIP layer) through a copy
of it. ``vision_feature_select_strategy: default`` drops CLS, ``full`` keeps it, as the checkpoint says. A list of
feature layers is read concatenated, as LLaVA does. LLaVA-NeXT's any-resolution tiling is a different model class
(``LlavaNextForConditionalGeneration``) and is not supported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from components.models.hf.family import Family, Parts, causal_lm_class_for, register


@register
class Llava(Family):
    name = "llava"
    model_types = ("llava",)
    hvp = (
        "comprehension: vision_feature_layer (CLS per strategy) -> pretrained projector; "
        "generation: a shallow CLIP layer -> copy"
    )
    limits = "one 336 px (or the checkpoint's) view per image; LLaVA-NeXT tiling not supported"

    def parts(self, model: nn.Module) -> Parts:
        inner: Any = model.model
        text_config = self.config.text_config
        return Parts(
            vision=inner.vision_tower,
            projector=inner.multi_modal_projector,
            language_model=inner.language_model,
            lm_head=model.lm_head,  # type: ignore[arg-type]
            text_config=text_config,
            causal_lm_class=causal_lm_class_for(text_config),
        )

    def native_levels(self) -> tuple[int, ...]:
        layer = self.config.vision_feature_layer
        return tuple(int(x) for x in layer) if isinstance(layer, (list, tuple)) else (int(layer),)

    def encode(self, vision: nn.Module, images: Mapping[str, Any], levels: Sequence[tuple[int, ...]]) -> list[Tensor]:
        pixels = images["pixel_values"].to(next(vision.parameters()).dtype)
        hidden = vision(pixels, output_hidden_states=True, return_dict=True).hidden_states
        drop_cls = self.config.vision_feature_select_strategy == "default"
        out = []
        for level in levels:
            feats = [hidden[i][:, 1:] if drop_cls else hidden[i] for i in level]
            out.append(torch.cat(feats, dim=-1))
        return out

    def project(self, projector: nn.Module, features: Tensor, images: Mapping[str, Any], rows: Tensor) -> list[Tensor]:
        return list(projector(features[rows]))
