"""What differs between VLM families, in one small class per family (DESIGN.md "Model backends").

A family says where a whole Hugging Face VLM keeps its vision tower, its pretrained projector, its language model and
its output head; which vision hidden states HVP reads (METHODS.md §1: comprehension the family's own level, generation
a shallow one); how the processor's image outputs of several records become one batch; and, where the family needs
them, its own position ids (Qwen2.5-VL's multimodal RoPE). Everything else — the chat template, the processor, the
adapters, the training loop — is shared. Families register by the ``model_type`` of the checkpoint's ``config.json``::

    family = family_for(config)          # a clear error listing the supported families otherwise
    parts = family.parts(hf_model)       # vision, projector, language model, head (the modules, not copies)

Add a family: subclass :class:`Family`, implement the abstract methods, decorate it with :func:`register`, and import
its module in :mod:`components.models.hf` (one line). The tests build a tiny random checkpoint of it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

FAMILIES: dict[str, type[Family]] = {}


@dataclass
class Parts:
    """The modules of a loaded VLM that medtune uses (shared with it, never copied)."""

    vision: nn.Module
    projector: nn.Module
    language_model: nn.Module  # the decoder stack (``...Model``: embeddings, layers, final norm)
    lm_head: nn.Module
    text_config: Any
    causal_lm_class: type[nn.Module]  # a ``...ForCausalLM`` whose ``model`` / ``lm_head`` take the parts above


class Family:
    """One VLM family. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]  # short name used in configs and messages ("llava")
    model_types: ClassVar[tuple[str, ...]]  # config.json model_type values it reads
    # one line each for the README's family table
    hvp: ClassVar[str]
    targets: ClassVar[str] = "the language model's attention and MLP linears (q/k/v/o, gate/up/down)"
    limits: ClassVar[str] = ""

    def __init__(self, config: Any) -> None:
        self.config = config

    # -- structure ----------------------------------------------------------------------------------------------
    def parts(self, model: nn.Module) -> Parts:
        raise NotImplementedError

    def load_processor(self, folder: str | Path) -> Any:
        """The checkpoint's processor (tokenizer, image processor, chat template); a family may load it otherwise."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(str(folder), local_files_only=True)

    def image_token_id(self, processor: Any) -> int:
        """The id that marks image positions in ``input_ids`` after the processor's expansion."""
        tok = processor.tokenizer
        token = getattr(processor, "image_token", None)
        if not isinstance(token, str):
            raise ValueError(f"the {self.name} processor names no image_token")
        return int(tok.convert_tokens_to_ids(token))

    # -- HVP ----------------------------------------------------------------------------------------------------
    def native_levels(self) -> tuple[int, ...]:
        """The vision hidden states the checkpoint's own projector reads (comprehension keeps them)."""
        raise NotImplementedError

    def encode(self, vision: nn.Module, images: Mapping[str, Any], levels: Sequence[tuple[int, ...]]) -> list[Tensor]:
        """One vision forward over the batch's images; per entry of ``levels``, the features of every image at that
        level (concatenated over the level tuple), batched the way :meth:`project` takes them."""
        raise NotImplementedError

    def project(self, projector: nn.Module, features: Tensor, images: Mapping[str, Any], rows: Tensor) -> list[Tensor]:
        """Project the features of the images ``rows`` (indices into the batch's images, ascending) -> one
        (tokens, lm width) tensor per image of ``rows``, in that order."""
        raise NotImplementedError

    # -- batching -----------------------------------------------------------------------------------------------
    image_keys: ClassVar[tuple[str, ...]] = ("pixel_values",)

    def segment_images(self, processor: Any, output: Mapping[str, Any]) -> dict[str, Tensor]:
        """The image tensors of one processor call (one segment of a record; ``output`` also holds its
        ``input_ids``), laid out the way :meth:`merge_images` takes them. Default: the ``image_keys`` as they are."""
        return {k: output[k] for k in self.image_keys if k in output}

    def merge_images(self, outputs: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """Per-segment processor outputs (each with ``image_keys``) -> one batch of images, images in order."""
        return {k: torch.cat([o[k] for o in outputs], dim=0) for k in self.image_keys if outputs and k in outputs[0]}

    def image_count(self, images: Mapping[str, Tensor]) -> int:
        return int(images["pixel_values"].shape[0])

    def position_ids(
        self, model: Any, input_ids: Tensor, attention_mask: Tensor, images: Mapping[str, Tensor]
    ) -> Tensor | None:
        """Position ids for the language model (None: the LM's own from the attention mask / cache)."""
        return None

    def lm_kwargs(
        self, model: Any, input_ids: Tensor, inputs_embeds: Tensor, attention_mask: Tensor, call: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Keyword arguments added to (or replacing, ``attention_mask`` included) those of the language model's call
        in ``HFVLM.forward``; ``call`` holds the others it already has (``position_ids``, ``cache``). Gemma 3 hands
        its bidirectional image mask over here. Default: none."""
        return {}


def register(cls: type[Family]) -> type[Family]:
    FAMILIES[cls.name] = cls
    return cls


def supported() -> str:
    return ", ".join(f"{name} ({'/'.join(f.model_types)})" for name, f in sorted(FAMILIES.items()))


def family_for(config: Any) -> Family:
    """The family of a checkpoint's config, or a ValueError listing the supported ones."""
    model_type = str(getattr(config, "model_type", ""))
    for cls in FAMILIES.values():
        if model_type in cls.model_types:
            return cls(config)
    raise ValueError(f"model_type {model_type!r} is not a supported VLM family; supported: {supported()}")


def causal_lm_shell(cls: type[nn.Module], parts: Parts) -> nn.Module:
    """A ``...ForCausalLM`` over the VLM's own decoder and head: built on the meta device (no memory, no random
    init), then its ``model`` and ``lm_head`` replaced by the loaded modules, so peft, generation and the loss see a
    plain causal LM whose every tensor is the checkpoint's."""
    with torch.device("meta"):
        shell = cls(parts.text_config)
    shell.model = parts.language_model
    shell.lm_head = parts.lm_head
    return shell


def causal_lm_class_for(text_config: Any) -> type[nn.Module]:
    """The ``...ForCausalLM`` class transformers maps a text config to (a clear error when there is none)."""
    from transformers import AutoModelForCausalLM

    mapping: Any = AutoModelForCausalLM._model_mapping  # noqa: SLF001  (the public registry of Auto classes)
    try:
        cls = mapping[type(text_config)]
    except KeyError:
        raise ValueError(f"no causal-LM class for text config {type(text_config).__name__}") from None
    return cast(type[nn.Module], cls[0] if isinstance(cls, tuple) else cls)


def levels_for(native: tuple[int, ...], gen_layer: int) -> dict[str, tuple[int, ...]]:
    """HVP's two levels: comprehension reads the native levels, generation ``gen_layer`` (as many times as the
    native tuple is long, so the copied projector's input width fits)."""
    return {"comprehension": native, "generation": (gen_layer,) * len(native)}


Hook = Callable[..., Any]
