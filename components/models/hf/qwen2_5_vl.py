"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``, model_type ``qwen2_5_vl``: Qwen2.5-VL-3B/7B/32B/72B-Instruct
and models fine-tuned from them).

    model = HFVLM.from_checkpoint("/models/Qwen2.5-VL-3B-Instruct", gen_layer=1)   # this family is picked by config

What HVP reads (METHODS.md §1). Qwen2.5-VL keeps its projector — the patch merger (RMSNorm, then an MLP over each 2x2
block of patch features) — *inside* its vision module (``model.visual.merger``), after the last block. Here the
vision part is that module without its merger (patch embedding, rotary table, blocks: :class:`VisionTower`), and the
merger is the comprehension projector; the generation projector is a copy of it. Levels index the vision hidden
states: 0 = the patch embeddings, i = the output of block i (``depth`` blocks, no final norm).

- comprehension: level -1, the last block's output — exactly what the checkpoint's merger reads — through the
  pretrained merger: with an unchanged projector these image tokens equal the checkpoint's own, and medtune's forward
  equals ``Qwen2_5_VLForConditionalGeneration``'s (tested to 1e-5).
- generation: level ``gen_layer`` (default 1: the first block's output, a shallow level as HealthGPT's
  hidden_states[1]) through the copy of the merger. The merger's RMSNorm sits in the projector, so the shallow level
  is normalised the way the pretrained merger normalises the deep one.

How the levels are read: the vision forward runs on a stand-in for the merger that has no parameters (it returns the
merge units unmerged), and ``output_hidden_states`` records the chosen levels. Qwen's blocks see the patches permuted
into attention windows; every level is put back in the processor's patch order with the inverse of that permutation
(the one the checkpoint applies after its merger), so both projectors read 2x2 merge units in image order. The
parameters are grouped once each: ``vision.`` (patch embedding, blocks), ``projectors.`` (the merger and its copy),
``lm.`` (decoder and head); the loaded model itself is untouched, so ``save_pretrained`` still writes the merger.

Position ids are the checkpoint's multimodal RoPE (3 x batch x length: temporal, height, width), from the model's own
``get_rope_index`` with ``image_grid_thw`` and the attention mask; text-only batches use the language model's plain
positions, as the checkpoint does. Images only: videos (``pixel_values_videos``) are not supported. transformers builds
the Qwen2.5-VL processor only with torchvision installed (its video processor needs it); without torchvision this
family loads the checkpoint's own image processor, tokenizer and chat template into :class:`ImageOnlyProcessor`, which
gives the same text and image outputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Qwen2_5_VLProcessor, Qwen2ForCausalLM

from components.models.hf.family import Family, Parts, register


class ImageOnlyProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor without its video processor, for machines without torchvision (which transformers needs
    to build the full one). Text and image outputs are the full processor's; ``save_pretrained`` writes the class
    name ``Qwen2_5_VLProcessor``, so the folder stays a plain Qwen2.5-VL folder."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any):
        # the processor's attributes come from this signature: no video_processor, so none is checked or loaded
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


ImageOnlyProcessor.__name__ = "Qwen2_5_VLProcessor"  # what save_pretrained records as the processor class


class _Unmerged(nn.Module):
    """Stands in for the merger during :class:`VisionTower`'s forward: the merge units, unmerged (no parameters)."""

    def __init__(self, unit: int) -> None:
        super().__init__()
        self.unit = unit

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(-1, self.unit * x.shape[-1])


class VisionTower(nn.Module):
    """Qwen2.5-VL's vision transformer without its patch merger: ``forward(pixel_values, grid_thw, levels)`` -> one
    (patches, width) tensor per level, patches in the processor's order (the window permutation undone). Its modules
    are the checkpoint's (shared, not copied)."""

    def __init__(self, visual: Any) -> None:
        super().__init__()
        self.patch_embed = visual.patch_embed
        self.rotary_pos_emb = visual.rotary_pos_emb
        self.blocks = visual.blocks
        self.visual: Any
        object.__setattr__(self, "visual", visual)  # not a submodule: its merger is a projector
        self.unit = int(visual.spatial_merge_unit)
        self.depth = len(visual.blocks)

    @contextmanager
    def _without_merger(self) -> Iterator[None]:
        modules = self.visual._modules  # noqa: SLF001  (a swap for one forward; the model keeps its merger)
        merger = modules["merger"]
        modules["merger"] = _Unmerged(self.unit)
        try:
            yield
        finally:
            modules["merger"] = merger

    def window_index(self, grid_thw: Tensor) -> tuple[Tensor, Tensor]:
        """The order of merge units inside the blocks (attention windows) and the windows' cumulative lengths."""
        from transformers.vision_utils import get_vision_window_index

        v = self.visual
        return get_vision_window_index(
            grid_thw, spatial_merge_size=v.spatial_merge_size, window_size=v.window_size, patch_size=v.patch_size
        )

    def forward(self, pixel_values: Tensor, grid_thw: Tensor, levels: Sequence[int]) -> list[Tensor]:
        wanted = sorted({lv % (self.depth + 1) for lv in levels})
        window_index, cu_window_seqlens = self.window_index(grid_thw)
        pixels = pixel_values.to(next(self.patch_embed.parameters()).dtype)
        with self._without_merger():
            # the precomputed window order is the one the forward uses (vision_utils pops it from the kwargs)
            out = self.visual(
                pixels, grid_thw=grid_thw, output_hidden_states=wanted,
                window_index=window_index, cu_window_seqlens=cu_window_seqlens,
            )  # fmt: skip
        reverse = torch.argsort(window_index.to(pixels.device))
        feats = []
        for level in levels:
            hidden = out.hidden_states[level % (self.depth + 1)]
            feats.append(hidden.reshape(-1, self.unit, hidden.shape[-1])[reverse].reshape(hidden.shape))
        return feats


@register
class Qwen2_5_VL(Family):
    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    hvp = (
        "comprehension: the last vision block -> pretrained patch merger (it sits inside the vision module; medtune "
        "splits it off as the projector); generation: block gen_layer's output -> copy of the merger"
    )
    limits = "images only (no video); without torchvision, an image-only processor from the checkpoint's files"
    image_keys = ("pixel_values", "image_grid_thw")

    def parts(self, model: nn.Module) -> Parts:
        inner: Any = model.model
        text_config = self.config.text_config
        # the shell's vocabulary resizing ties the head to the embeddings only where its (text) config says so
        text_config.tie_word_embeddings = bool(self.config.tie_word_embeddings)
        return Parts(
            vision=VisionTower(inner.visual),
            projector=inner.visual.merger,
            language_model=inner.language_model,
            lm_head=model.lm_head,  # type: ignore[arg-type]
            text_config=text_config,
            # Qwen2ForCausalLM passes inputs_embeds, attention_mask, position_ids (3-D here), cache and labels to the
            # decoder unchanged; the decoder is Qwen2.5-VL's own, with its multimodal rotary embedding
            causal_lm_class=Qwen2ForCausalLM,
        )

    def load_processor(self, folder: str | Path) -> Any:
        """The full processor where torchvision is installed, else (or for a folder saved without a video processor)
        :class:`ImageOnlyProcessor` from the same files: the same tokenizer, image processor and chat template."""
        from transformers.utils import is_torchvision_available

        if is_torchvision_available():
            try:
                return super().load_processor(folder)
            except OSError:  # no video processor in the folder (saved on a machine without torchvision)
                pass
        return ImageOnlyProcessor.from_pretrained(str(folder), local_files_only=True)

    def native_levels(self) -> tuple[int, ...]:
        return (-1,)

    def encode(self, vision: nn.Module, images: Mapping[str, Any], levels: Sequence[tuple[int, ...]]) -> list[Tensor]:
        flat = [lv for level in levels for lv in level]
        feats = iter(vision(images["pixel_values"], images["image_grid_thw"], flat))
        return [torch.cat([next(feats) for _ in level], dim=-1) for level in levels]

    def project(self, projector: nn.Module, features: Tensor, images: Mapping[str, Any], rows: Tensor) -> list[Tensor]:
        grid = images["image_grid_thw"]
        patches = [int(n) for n in grid.prod(dim=-1).tolist()]
        starts = [sum(patches[:i]) for i in range(len(patches))]
        picked = [int(i) for i in rows.tolist()]
        x = torch.cat([features[starts[i] : starts[i] + patches[i]] for i in picked], dim=0)
        unit = int(self.config.vision_config.spatial_merge_size) ** 2
        return list(projector(x).split([patches[i] // unit for i in picked], dim=0))

    def image_count(self, images: Mapping[str, Tensor]) -> int:
        return int(images["image_grid_thw"].shape[0])

    def position_ids(
        self, model: Any, input_ids: Tensor, attention_mask: Tensor, images: Mapping[str, Tensor]
    ) -> Tensor | None:
        grid = images.get("image_grid_thw")
        if grid is None:
            return None
        cfg = self.config
        types = (input_ids == cfg.image_token_id).int() + 2 * (input_ids == cfg.video_token_id).int()
        positions, _ = model.hf_model.model.get_rope_index(
            input_ids, mm_token_type_ids=types, image_grid_thw=grid.to(input_ids.device), attention_mask=attention_mask
        )
        return positions
