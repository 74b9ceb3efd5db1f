"""HFVLM: a whole Hugging Face VLM (``AutoModelForImageTextToText`` + ``AutoProcessor``) as medtune's base model.

The checkpoint is loaded whole, then seen through the three parts every medtune caller uses — ``vision`` (the
family's vision tower), ``projectors`` (``comprehension``: the checkpoint's pretrained projector; ``generation``: a
copy of it that reads a shallow vision level, HealthGPT's HVP, METHODS.md §1) and ``lm`` (a ``...ForCausalLM`` over
the checkpoint's own decoder and head, which the adapters wrap) — so the trainer, the three stages, evaluation,
safety, the pyfunc model and the federated client work on it as on the tiny :class:`~components.models.vlm.MedVLM`.
Every tensor of those parts *is* the checkpoint's (shared modules, nothing re-initialised); the test suite compares
all of them with the files. What differs per family lives in :mod:`components.models.hf.family`.

Usage::

    model = HFVLM.from_checkpoint("/models/llava-med-v1.5", dtype="bfloat16", gen_layer=1)
    batch = model.collator(load_image)(records)       # the checkpoint's processor and chat template
    loss = model(**batch, labels=batch.pop("labels")).loss
    model.save(folder); model = HFVLM.load(folder)    # vlm.json + hf/ (save_pretrained of model and processor)

Choices where neither METHODS.md nor the checkpoint decides: the generation projector starts as an exact copy of the
pretrained one (HealthGPT trains its own from the comprehension projector's initialisation); images of a record
all use the record's task level; image-code tokens are added to the checkpoint's tokenizer, their rows at the mean
of the real tokens' rows (padding rows past the tokenizer's length are reused, never removed).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForImageTextToText
from transformers.modeling_outputs import CausalLMOutputWithPast

from components.data.records import TASKS
from components.models.hf.family import Family, causal_lm_shell, family_for, levels_for
from components.models.vocab import grow_vocabulary

FORMAT = "medtune.hf-vlm"
FORMAT_VERSION = 1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFVLM(nn.Module):
    """A whole HF VLM seen as vision + per-task projectors + causal LM. See the module docstring."""

    input_kind = "pil"  # the collator takes PIL images; the processor does the pixels

    def __init__(self, hf_model: nn.Module, processor: Any, *, gen_layer: int = 1, source: str = "") -> None:
        super().__init__()
        self.family: Family = family_for(hf_model.config)
        parts = self.family.parts(hf_model)
        self.vision = parts.vision
        self.projectors = nn.ModuleDict(
            {"comprehension": parts.projector, "generation": copy.deepcopy(parts.projector)}
        )
        self.lm: Any = causal_lm_shell(parts.causal_lm_class, parts)
        self.hf_model: Any
        object.__setattr__(self, "hf_model", hf_model)  # not a submodule: its tensors are the parts' tensors
        self.processor = processor
        self.source = source
        self.gen_layer = gen_layer
        depth = self._vision_depth()
        native = self.family.native_levels()
        for idx in (*native, gen_layer):
            if not -depth <= idx < depth:
                raise ValueError(
                    f"vision level {idx} is outside hidden_states of a {depth - 1}-layer vision tower ({depth} entries)"
                )
        self.levels = levels_for(native, gen_layer)
        self.image_token_id = self.family.image_token_id(processor)
        from components.models.tokenizer import ensure_pad_token

        ensure_pad_token(self.tokenizer)

    def _vision_depth(self) -> int:
        cfg = getattr(self.family.config, "vision_config", None)
        layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "depth", None)
        if layers is None:
            raise ValueError(f"the {self.family.name} config names no vision depth (num_hidden_layers / depth)")
        return int(layers) + 1

    # -- what callers read --------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @tokenizer.setter
    def tokenizer(self, value: Any) -> None:
        self.processor.tokenizer = value

    @property
    def max_length(self) -> int:
        cfg = self.lm.config
        return int(getattr(cfg, "max_position_embeddings", 0) or 4096)

    @property
    def lm_hidden(self) -> int:
        return int(self.lm.config.hidden_size)

    @property
    def family_name(self) -> str:
        return self.family.name

    def collator(
        self,
        load_image: Callable[[str], Any],
        *,
        target_codes: Callable[[Mapping[str, Any]], Sequence[int]] | None = None,
        max_length: int | None = None,
        with_features: bool = False,
    ) -> Any:
        from components.models.hf.collate import ChatCollator

        return ChatCollator(
            self.processor, self.family, load_image, target_codes=target_codes,
            max_length=max_length or self.max_length, with_features=with_features,
        )  # fmt: skip

    # -- forward ------------------------------------------------------------------------------------------------
    def image_features(self, images: Mapping[str, Tensor], image_tasks: Sequence[str]) -> Tensor:
        """All images' tokens in image order -> (tokens, lm width); image i through the level and projector of
        ``image_tasks[i]`` (HVP). One vision forward serves both levels."""
        present = [t for t in TASKS if t in image_tasks]
        feats = self.family.encode(self.vision, images, [self.levels[t] for t in present])
        per_image: list[Tensor | None] = [None] * len(image_tasks)
        for task, level_feats in zip(present, feats, strict=True):
            # a float32 (trainable: master weights) projector over a bf16 tower: CPU autocast does not cast every
            # op a family's projector uses (Gemma 3's raw matmul), so the features meet the projector's dtype
            level_feats = level_feats.to(next(self.projectors[task].parameters()).dtype)
            rows = [i for i, t in enumerate(image_tasks) if t == task]
            index = torch.tensor(rows, device=level_feats.device)
            for i, tokens in zip(
                rows, self.family.project(self.projectors[task], level_feats, images, index), strict=True
            ):
                per_image[i] = tokens
        return torch.cat([t for t in per_image if t is not None], dim=0)

    def embed_inputs(
        self,
        input_ids: Tensor,
        pixel_values: Tensor | None = None,
        tasks: Sequence[str] = (),
        image_counts: Sequence[int] | Tensor | None = None,
        **images: Any,
    ) -> Tensor:
        embeds = self.lm.get_input_embeddings()(input_ids)
        is_image = input_ids == self.image_token_id
        if pixel_values is None:
            if bool(is_image.any()):
                raise ValueError("input_ids hold image tokens but pixel_values is None")
            return embeds
        counts = [int(c) for c in (image_counts if image_counts is not None else [1] * len(tasks))]
        if len(counts) != len(tasks):
            raise ValueError(f"{len(counts)} image counts for {len(tasks)} records")
        image_tasks = [t for t, c in zip(tasks, counts, strict=True) for _ in range(c)]
        batch_images = {"pixel_values": pixel_values, **images}
        if self.family.image_count(batch_images) != len(image_tasks):
            raise ValueError(f"{self.family.image_count(batch_images)} images for image counts {counts}")
        feats = self.image_features(batch_images, image_tasks)
        if int(is_image.sum()) != feats.shape[0]:
            raise ValueError(f"{int(is_image.sum())} image tokens in input_ids for {feats.shape[0]} image features")
        return embeds.masked_scatter(is_image.unsqueeze(-1), feats.to(embeds.dtype))

    def position_ids(self, input_ids: Tensor, attention_mask: Tensor, **images: Any) -> Tensor | None:
        return self.family.position_ids(self, input_ids, attention_mask, images)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        pixel_values: Tensor | None = None,
        tasks: Sequence[str] = (),
        labels: Tensor | None = None,
        image_counts: Sequence[int] | Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        image_keys = set(self.family.image_keys) - {"pixel_values"}
        images = {k: kwargs.pop(k) for k in list(kwargs) if k in image_keys}
        embeds = self.embed_inputs(input_ids, pixel_values, tasks, image_counts, **images)
        if "position_ids" not in kwargs and pixel_values is not None:
            positions = self.position_ids(input_ids, attention_mask, pixel_values=pixel_values, **images)
            if positions is not None:
                kwargs["position_ids"] = positions
        kwargs = {"attention_mask": attention_mask, **kwargs}
        kwargs.update(self.family.lm_kwargs(self, input_ids, embeds, attention_mask, kwargs))
        return self.lm(inputs_embeds=embeds, labels=labels, **kwargs)

    # -- vocabulary ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def resize_token_embeddings_mean(self, new_vocab_size: int, first_new: int | None = None) -> None:
        grow_vocabulary(self.lm, new_vocab_size, first_new)
        # growing replaces the shell's head (an untied head is a new Linear): the whole model keeps the same one,
        # and its configs the new size, so that save_pretrained writes what the shell computes with
        self.hf_model.set_output_embeddings(self.lm.get_output_embeddings())
        rows = int(self.lm.get_input_embeddings().weight.shape[0])
        for config in (self.hf_model.config, getattr(self.hf_model.config, "text_config", None)):
            if config is not None and hasattr(config, "vocab_size"):
                config.vocab_size = rows

    # -- persistence --------------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """The whole VLM and its processor under ``hf/`` (safetensors), and ``vlm.json``."""
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        self.hf_model.save_pretrained(str(path / "hf"))
        self.processor.save_pretrained(str(path / "hf"))
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "family": self.family.name,
            "gen_layer": self.gen_layer,
            "source": self.source,
            "dtype": str(next(self.lm.parameters()).dtype).removeprefix("torch."),
        }
        (path / "vlm.json").write_text(json.dumps(meta, indent=2) + "\n")
        return path

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, dtype: str = "float32", gen_layer: int = 1) -> HFVLM:
        """Load a checkpoint folder (see :func:`components.models.hf.resolve_checkpoint` for hub ids)."""
        folder = str(path)
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        family = family_for(config)  # the family error before the weights load
        model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True, dtype=DTYPES[dtype])
        processor = family.load_processor(folder)
        return cls(model, processor, gen_layer=gen_layer, source=folder).eval()

    @classmethod
    def load(cls, folder: str | Path, dtype: str | None = None) -> HFVLM:
        path = Path(folder)
        meta = json.loads((path / "vlm.json").read_text())
        if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path / 'vlm.json'}: expected {FORMAT} v{FORMAT_VERSION}, got {meta.get('format')}")
        return cls.from_checkpoint(path / "hf", dtype=dtype or meta["dtype"], gen_layer=int(meta["gen_layer"]))
