"""Idefics3 and SmolVLM (``Idefics3ForConditionalGeneration``: Idefics3-8B, SmolVLM-256M/500M/2B;
``SmolVLMForConditionalGeneration``: SmolVLM2).

    model = HFVLM.from_checkpoint("/models/SmolVLM-256M-Instruct", gen_layer=1)   # picked by config.json

SmolVLM-256M/500M-Instruct are ``idefics3`` checkpoints with an ``Idefics3Processor``; SmolVLM2 is ``smolvlm``.

HVP (METHODS.md §1): comprehension reads the vision transformer's ``last_hidden_state`` (the last encoder layer after
its ``post_layernorm``, what the checkpoint's ``get_image_features`` reads) through the pretrained ``connector``
(pixel shuffle by ``scale_factor`` + linear); generation reads ``hidden_states[gen_layer]`` (a shallow layer) through
a copy of it. Choice: the shallow level also passes through ``post_layernorm``, so the copied connector starts on
per-token normalised inputs with the affine it was trained on (the connector has no norm of its own).

Dynamic resolution: the processor splits an image into ``rows x cols`` sub-images plus a global view, all of the
vision encoder's size. The checkpoint's batch layout is ``(records, sub-images, 3, H, W)`` with all-zero padding
sub-images (and ``pixel_attention_mask`` zero on padded pixels). medtune keeps one row per *image*
(``(images, sub-images, 3, H, W)``, the same zero padding), because HVP picks a level and a projector per image:
:meth:`Idefics3.segment_images` splits one processor call's sub-images per image (an image's last sub-image is its
global view, announced by ``<global-img>`` in the ids), :meth:`Idefics3.merge_images` pads rows, sub-images and
pixels to the batch's largest the way the processor pads a batch, and :meth:`Idefics3.encode` drops padding images
by the checkpoint's own rule (a sub-image whose every value is 0) before one vision forward. The sub-images keep
their order, so the image tokens are filled exactly as the checkpoint fills them (its ``get_image_features``
flattens the batch and concatenates the real sub-images in order): the forward is the checkpoint's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from components.models.hf.family import Family, Parts, causal_lm_class_for, register


def _real(pixel_values: Tensor) -> Tensor:
    """(images, sub-images) -> True where a sub-image is real: the checkpoint's rule, a padding image is all 0."""
    flat = pixel_values.flatten(2)
    return (flat == 0.0).sum(dim=-1) != flat.shape[-1]


def _pad_to(x: Tensor, shape: Sequence[int]) -> Tensor:
    """Zero-pad ``x`` at the end of every dimension to ``shape``."""
    pad: list[int] = []
    for have, want in zip(reversed(x.shape), reversed(shape), strict=True):
        pad += [0, want - have]
    return F.pad(x, pad) if any(pad) else x


@register
class Idefics3(Family):
    name = "idefics3"
    model_types = ("idefics3", "smolvlm")
    hvp = (
        "comprehension: SigLIP last layer + post_layernorm -> pretrained connector (pixel shuffle + linear); "
        "generation: a shallow layer + post_layernorm -> copy; every sub-image of an image at the image's level"
    )
    limits = (
        "images only (SmolVLM2 video input not supported); SmolVLM2's SmolVLMProcessor needs `pip install num2words`"
    )
    image_keys = ("pixel_values", "pixel_attention_mask")

    def parts(self, model: nn.Module) -> Parts:
        inner: Any = model.model
        text_config = self.config.text_config
        return Parts(
            vision=inner.vision_model,
            projector=inner.connector,
            language_model=inner.text_model,
            lm_head=model.lm_head,  # type: ignore[arg-type]
            text_config=text_config,
            causal_lm_class=causal_lm_class_for(text_config),
        )

    # -- batching -----------------------------------------------------------------------------------------------
    def segment_images(self, processor: Any, output: Mapping[str, Any]) -> dict[str, Tensor]:
        """One processor call's ``(1, sub-images, ...)`` -> ``(images, sub-images, ...)``: each image's sub-images
        end with its global view, the run of image tokens right after ``<global-img>``."""
        tok = processor.tokenizer
        image_id = self.image_token_id(processor)
        tag = getattr(processor, "global_image_tag", None) or getattr(processor, "global_image_token", "<global-img>")
        global_id = int(tok.convert_tokens_to_ids(tag))
        ids = [int(t) for t in output["input_ids"][0].tolist()]
        counts, run = [], 0
        for k, t in enumerate(ids):
            if t == image_id and (k == 0 or ids[k - 1] != image_id):  # a sub-image's run of image tokens starts
                run += 1
                if k > 0 and ids[k - 1] == global_id:
                    counts.append(run)
                    run = 0
        pixels = output["pixel_values"][0]
        if run or sum(counts) != pixels.shape[0]:
            raise ValueError(f"{sum(counts) + run} sub-image token runs for {pixels.shape[0]} processed sub-images")
        width = max(counts)
        result = {}
        for key in self.image_keys:
            if key in output:
                parts = output[key][0].split(counts)
                result[key] = torch.stack([_pad_to(p, (width, *p.shape[1:])) for p in parts])
        return result

    def merge_images(self, outputs: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        pixels = [o["pixel_values"] for o in outputs]
        subs = max(int(p.shape[1]) for p in pixels)
        height = max(int(p.shape[-2]) for p in pixels)
        width = max(int(p.shape[-1]) for p in pixels)
        merged = {
            "pixel_values": torch.cat([_pad_to(p, (p.shape[0], subs, p.shape[2], height, width)) for p in pixels])
        }
        if all("pixel_attention_mask" in o for o in outputs):
            masks = [o["pixel_attention_mask"] for o in outputs]
            merged["pixel_attention_mask"] = torch.cat([_pad_to(m, (m.shape[0], subs, height, width)) for m in masks])
        return merged

    # -- HVP ----------------------------------------------------------------------------------------------------
    def native_levels(self) -> tuple[int, ...]:
        return (-1,)

    def encode(self, vision: nn.Module, images: Mapping[str, Any], levels: Sequence[tuple[int, ...]]) -> list[Tensor]:
        """As the checkpoint's ``get_image_features``: padding images dropped, patch mask from the pixel mask."""
        pixel_values: Tensor = images["pixel_values"]
        n, subs = pixel_values.shape[:2]
        pixels = pixel_values.to(next(vision.parameters()).dtype).reshape(n * subs, *pixel_values.shape[2:])
        real = _real(pixels.reshape(n, subs, -1)).reshape(-1)
        pixels = pixels[real].contiguous()
        mask = images.get("pixel_attention_mask")
        if mask is None:
            mask = torch.ones(pixels.shape[0], *pixels.shape[2:], dtype=torch.bool, device=pixels.device)
        else:
            mask = mask.reshape(n * subs, *mask.shape[2:])[real].contiguous()
        size = int(self.config.vision_config.patch_size)
        patch_mask = mask.unfold(dimension=1, size=size, step=size).unfold(dimension=2, size=size, step=size)
        patch_mask = (patch_mask.sum(dim=(-1, -2)) > 0).bool()
        out = vision(pixel_values=pixels, patch_attention_mask=patch_mask, output_hidden_states=True, return_dict=True)
        hidden, last = out.hidden_states, len(out.hidden_states) - 1
        post_layernorm: nn.Module = vision.post_layernorm  # type: ignore[assignment]
        result = []
        for level in levels:
            feats = [out.last_hidden_state if i % len(hidden) == last else post_layernorm(hidden[i]) for i in level]
            result.append(torch.cat(feats, dim=-1))
        return result

    def project(self, projector: nn.Module, features: Tensor, images: Mapping[str, Any], rows: Tensor) -> list[Tensor]:
        """``features`` holds the batch's real sub-images in order; image i's are the next ``counts[i]`` of them."""
        counts = _real(images["pixel_values"].to(features.dtype)).sum(dim=1).to(features.device)  # as encode's
        starts = torch.cumsum(counts, dim=0) - counts
        picked = [int(r) for r in rows.tolist()]
        index = torch.cat(
            [torch.arange(int(starts[r]), int(starts[r] + counts[r]), device=features.device) for r in picked]
        )
        tokens = projector(features[index])  # (sub-images, tokens per sub-image, lm width)
        per_image = tokens.split([int(counts[r]) for r in picked])
        return [t.reshape(-1, t.shape[-1]) for t in per_image]
