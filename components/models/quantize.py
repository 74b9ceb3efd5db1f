"""A 4-/8-bit frozen base through bitsandbytes (QLoRA; issue 20, item 1: ``model.quantize: none | int8 | nf4``).

    from components.models.quantize import check_quantize, quantize_language_model
    check_quantize("nf4", device)                                  # config time: a QuantizeError naming the key
    names = quantize_language_model(model, "nf4", device=device)   # before the plugins are attached

Every ``nn.Linear`` of the language model that the adapters target (:func:`components.adapters.peft_ext.
lm_linear_targets`: the decoder's linears, output head excluded) becomes a ``bitsandbytes.nn.Linear4bit`` (NF4,
double quantization of the block scales, bf16 compute: QLoRA, Dettmers et al. 2023, §3) or a
``bitsandbytes.nn.Linear8bitLt`` (LLM.int8(), outlier threshold 6.0), its weight quantized by bitsandbytes itself
when it is moved to ``device`` (``Params4bit`` / ``Int8Params``), the way transformers' ``replace_with_bnb_linear``
and ``from_pretrained(quantization_config=...)`` do. What stays in the base dtype: the vision tower, the projectors,
the embeddings, the output head and the norms (they train in some stages, or are small).

The adapters then wrap the bitsandbytes layers: peft's LoRA through its own bnb dispatch (``peft.tuners.lora.bnb``),
medtune's H-LoRA, FLix and ElaLoRA through their ``Linear`` wrappers, which only call the base layer and add their
delta (bitsandbytes' layers are ``nn.Linear`` subclasses with ``in_features``/``out_features``; the deltas are
computed in the adapters' float32 and added in the base output's dtype). Merging a delta into a quantized weight is
refused (:func:`is_quantized` / ElaLoRA's ``merge``): load the base unquantized to merge or export merged weights.

Why after loading rather than ``from_pretrained(quantization_config=...)``: one code path for both backends (the
tiny ``MedVLM`` whose LM is a submodule, a whole HF VLM) and for the base the stages add rows to; the cost is the
base's bf16 weights in host memory while loading (the GPU holds only the quantized layers). bitsandbytes is
imported only here, only when ``quantize`` is not "none" (``pip install 'medtune[gpu]'``).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch
from torch import nn

MODES = ("none", "int8", "nf4")
KEY = "model.quantize"


class QuantizeError(ValueError):
    """A quantize setting this machine cannot run; the message is one line naming ``model.quantize``."""


def load_bitsandbytes(mode: str) -> ModuleType:
    """``bitsandbytes``, imported now (never at module import); a QuantizeError saying how to install it."""
    try:
        return importlib.import_module("bitsandbytes")
    except ImportError as e:
        raise QuantizeError(
            f"{KEY}: {mode} needs bitsandbytes, which is not installed ({e.msg}); install the GPU extra: "
            "pip install 'medtune[gpu]' (or set model.quantize: none)"
        ) from None


def check_quantize(mode: str, device: torch.device | str, *, cuda_available: bool | None = None) -> None:
    """Fail at config time, before any data work: an unknown mode, a 4-/8-bit base without CUDA (bitsandbytes'
    kernels; the frozen base of a QLoRA run lives on the GPU), or bitsandbytes missing."""
    if mode not in MODES:
        raise QuantizeError(f"{KEY}: unknown mode {mode!r}; known: {', '.join(MODES)}")
    if mode == "none":
        return
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cpu" or not cuda:
        where = "train.device is cpu" if dev.type == "cpu" and cuda else "this machine has no CUDA device"
        raise QuantizeError(
            f"{KEY}: {mode} loads the frozen base in {'4' if mode == 'nf4' else '8'}-bit through bitsandbytes on a "
            f"CUDA GPU, but {where}; set model.quantize: none"
        )
    load_bitsandbytes(mode)


def quantized_linear(linear: nn.Linear, mode: str, *, device: torch.device, compute_dtype: torch.dtype) -> nn.Module:
    """A bitsandbytes layer holding ``linear``'s weight quantized on ``device`` (and its bias in ``compute_dtype``)."""
    if mode not in ("int8", "nf4"):
        raise QuantizeError(f"{KEY}: cannot quantize a layer to {mode!r}; known: int8, nf4")
    bnb = load_bitsandbytes(mode)
    has_bias = linear.bias is not None
    weight = linear.weight.detach()
    layer: Any
    if mode == "nf4":
        layer = bnb.nn.Linear4bit(
            linear.in_features, linear.out_features, bias=has_bias, compute_dtype=compute_dtype,
            compress_statistics=True, quant_type="nf4", device="meta",
        )  # fmt: skip
        layer.weight = bnb.nn.Params4bit(
            weight, requires_grad=False, compress_statistics=True, quant_type="nf4", module=layer
        )
    else:
        layer = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False, threshold=6.0,
            device="meta",
        )  # fmt: skip
        # Int8Params quantizes when it moves off the host: stage the weight there first
        layer.weight = bnb.nn.Int8Params(weight.to("cpu", torch.float16), requires_grad=False, has_fp16_weights=False)
    if has_bias:
        assert linear.bias is not None
        layer.bias = nn.Parameter(linear.bias.detach().to(compute_dtype), requires_grad=False)
    return layer.to(device)


def quantize_language_model(
    model: nn.Module, mode: str, *, device: torch.device | str, compute_dtype: torch.dtype = torch.bfloat16
) -> list[str]:
    """Replace the adapter targets of ``model.lm`` (a MedVLM's or an HFVLM's language model, no plugins attached
    yet) by bitsandbytes layers on ``device``; returns their names in ``model.lm``. "none" changes nothing."""
    from components.adapters.peft_ext import lm_linear_targets

    if mode == "none":
        return []
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    lm: Any = model.lm
    if hasattr(lm, "peft_config"):
        raise ValueError("quantize the base before attaching the plugins (peft dispatches on the layer type)")
    names = lm_linear_targets(lm)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = lm.get_submodule(parent_name) if parent_name else lm
        linear = getattr(parent, child)
        setattr(parent, child, quantized_linear(linear, mode, device=dev, compute_dtype=compute_dtype))
        del linear  # the full-precision weight goes as soon as its quantized copy exists
    # what from_pretrained(quantization_config=...) sets, and what peft's LoRA reads to pick its bnb layers
    lm.is_loaded_in_4bit, lm.is_loaded_in_8bit = mode == "nf4", mode == "int8"
    return names


def is_quantized(layer: nn.Module) -> bool:
    """Whether ``layer`` (a base layer of an adapter) holds a bitsandbytes 4-/8-bit weight."""
    weight = getattr(layer, "weight", None)
    return type(weight).__name__ in ("Params4bit", "Int8Params") or (
        isinstance(weight, torch.Tensor) and weight.dtype in (torch.uint8, torch.int8)
    )
