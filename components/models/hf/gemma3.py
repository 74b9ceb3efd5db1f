"""Gemma 3 (``Gemma3ForConditionalGeneration``, model_type ``gemma3``: Gemma 3 4B/12B/27B, MedGemma 4B).

    model = HFVLM.from_checkpoint("/models/medgemma-4b-it", gen_layer=1)   # this family is picked by config.json

HVP (METHODS.md §1): comprehension reads the SigLIP tower's ``last_hidden_state`` — the last encoder layer after
SigLIP's ``post_layernorm``, exactly what the checkpoint's ``get_image_features`` reads — through the pretrained
``multi_modal_projector`` (average pooling to ``mm_tokens_per_image`` tokens, RMSNorm, linear); generation reads
``hidden_states[gen_layer]`` (a shallow SigLIP layer) through a copy of it. Choice: the shallow level also passes
through ``post_layernorm``, so the copied projector starts on inputs normalised per token with the affine it was
trained on (SigLIP's raw shallow states have another scale; the projector's own RMSNorm comes only after pooling).

The language model is a ``Gemma3ForCausalLM`` over the checkpoint's ``Gemma3TextModel`` (whose ``embed_tokens``
scales by sqrt(hidden) itself, so text embeddings match the checkpoint's; image features are spliced in unscaled, as
the checkpoint does) and its tied head. The checkpoint's forward lets an image's tokens attend to each other in both
directions (``token_type_ids`` -> ``create_masks_for_vision_model``: full layers OR(causal, image block), sliding
layers AND(window, OR(causal, image block))); :meth:`Gemma3.lm_kwargs` builds that same mask mapping from the image
tokens of ``input_ids`` and hands it to the text model, which takes a dict of masks as ``attention_mask``. Without
image tokens (text-only batches, decoding steps) the text model's own causal/sliding masks are the checkpoint's.

Not supported: pan-and-scan crops (``do_pan_and_scan``: the processor adds crops as extra images, so one record image
would be several model images); a ``final_logit_softcapping`` in the text config (the VLM class ignores it, the
causal-LM class applies it: refused rather than silently different).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from components.models.hf.family import Family, Parts, register


@register
class Gemma3(Family):
    name = "gemma3"
    model_types = ("gemma3",)
    hvp = (
        "comprehension: SigLIP last layer + post_layernorm -> pretrained projector (pool, norm, linear); "
        "generation: a shallow SigLIP layer + post_layernorm -> copy"
    )
    limits = "one view per image (pan-and-scan crops not supported); image tokens attend bidirectionally, as in Gemma 3"

    def parts(self, model: nn.Module) -> Parts:
        from transformers import Gemma3ForCausalLM

        inner: Any = model.model
        text_config = self.config.text_config
        if getattr(text_config, "final_logit_softcapping", None) is not None:
            raise ValueError(
                "this Gemma 3 checkpoint sets text_config.final_logit_softcapping: Gemma3ForConditionalGeneration "
                "ignores it, Gemma3ForCausalLM applies it, so medtune cannot reproduce the checkpoint's forward"
            )
        return Parts(
            vision=inner.vision_tower,
            projector=inner.multi_modal_projector,
            language_model=inner.language_model,
            lm_head=model.lm_head,  # type: ignore[arg-type]
            text_config=text_config,
            causal_lm_class=Gemma3ForCausalLM,
        )

    def image_token_id(self, processor: Any) -> int:
        # Gemma3Processor.image_token is <start_of_image> (what the chat template writes); the positions that receive
        # image features are the <image_soft_token>s it expands to (config.image_token_id)
        return int(self.config.image_token_id)

    # -- HVP ----------------------------------------------------------------------------------------------------
    def native_levels(self) -> tuple[int, ...]:
        return (-1,)

    def encode(self, vision: nn.Module, images: Mapping[str, Any], levels: Sequence[tuple[int, ...]]) -> list[Tensor]:
        pixels = images["pixel_values"].to(next(vision.parameters()).dtype)
        out = vision(pixel_values=pixels, output_hidden_states=True, return_dict=True)
        hidden, last = out.hidden_states, len(out.hidden_states) - 1
        post_layernorm: nn.Module = vision.post_layernorm  # type: ignore[assignment]
        result = []
        for level in levels:
            feats = [out.last_hidden_state if i % len(hidden) == last else post_layernorm(hidden[i]) for i in level]
            result.append(torch.cat(feats, dim=-1))
        return result

    def project(self, projector: nn.Module, features: Tensor, images: Mapping[str, Any], rows: Tensor) -> list[Tensor]:
        return list(projector(features[rows]))

    # -- the language model's call ------------------------------------------------------------------------------
    def lm_kwargs(
        self, model: Any, input_ids: Tensor, inputs_embeds: Tensor, attention_mask: Tensor, call: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The checkpoint's mask mapping (bidirectional within each image, see the module docstring). HFVLM.forward
        uses it; a decoding loop's prompt pass needs it too (later steps add one text token: plain causal masks)."""
        is_image = input_ids == int(self.config.image_token_id)
        if not bool(is_image.any()):
            return {}
        from transformers.models.gemma3.modeling_gemma3 import (
            create_masks_for_vision_model,
            get_block_sequence_ids_for_mask,
        )

        masks = create_masks_for_vision_model(
            config=self.config.text_config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=call.get("cache"),
            position_ids=call.get("position_ids"),
            block_sequence_ids=get_block_sequence_ids_for_mask(is_image.long(), device=inputs_embeds.device),
        )
        return {"attention_mask": masks}
