"""Gradient (activation) checkpointing of the two model backends (issue 20, item 1: train.gradient_checkpointing).

    from components.models.memory import enable_gradient_checkpointing
    parts = enable_gradient_checkpointing(model)     # before training; e.g. ["lm", "vision", "projectors"]

Checkpointing keeps only each decoder (and vision encoder) layer's input in the forward and recomputes the layer in
the backward: the activations saved for backward shrink from every layer's intermediates to one tensor per layer,
for about one more forward of compute (benchmarks/README.md, "Memory": measured on the tiny model).

- **Hugging Face modules** (the tiny model's ``LlamaForCausalLM`` and ``CLIPVisionModel``, a loaded LM, a whole
  HF VLM) use transformers' own switch, ``activation_checkpointing_enable`` (transformers 5's name for
  ``gradient_checkpointing_enable``, which it keeps as a deprecated alias) with ``use_reentrant=False``: the
  non-reentrant torch.utils.checkpoint needs no input that requires grad, so a frozen embedding in front of peft
  plugins works, and it handles keyword arguments and ``torch.autocast``. Under peft the wrapped model is switched
  (``PeftModel.get_base_model()``); plugin layers sit inside the checkpointed decoder layers and are recomputed too.
- **In-house modules**: the tiny model's projectors run under ``torch.utils.checkpoint.checkpoint`` (non-reentrant)
  when ``MedVLM.checkpoint_projectors`` is set (:meth:`components.models.vlm.MedVLM.image_features`).
- **The vision tower**: switched on with the rest; layers recompute only when a backward runs through them, i.e.
  when the vision tower trains (the base bootstrap). Frozen (stages 1-3), no graph is kept through it, so the flag
  costs nothing there.

Checkpointing acts only in training mode (``model.train()``) with gradients enabled; evaluation and generation
are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

CHECKPOINT_KWARGS = {"use_reentrant": False}


def _unwrap(module: Any) -> Any:
    """The transformers model inside a peft ``PeftModel`` (or the module itself)."""
    get_base = getattr(module, "get_base_model", None)
    return get_base() if callable(get_base) else module


def enable_hf_checkpointing(model: Any) -> None:
    """transformers' own checkpointing switch of one ``PreTrainedModel`` (non-reentrant); a ValueError naming the
    class when the architecture does not support it."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if callable(enable):  # transformers >= 5
        enable(activation_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))
        return
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))


def enable_gradient_checkpointing(model: nn.Module, *, vision: bool = True) -> list[str]:
    """Switch checkpointing on in ``model`` (a MedVLM or an HFVLM, plugins attached or not); returns the parts
    switched on. ``vision=False`` leaves the vision tower (and the tiny model's projectors) alone."""
    parts: list[str] = []
    hf_model = getattr(model, "hf_model", None)
    if hf_model is not None:  # HFVLM: the whole checkpoint's modules (vision tower + decoder, shared with model.lm)
        enable_hf_checkpointing(hf_model if vision else _unwrap(model.lm))
        return ["lm", "vision"] if vision else ["lm"]
    enable_hf_checkpointing(_unwrap(model.lm))
    parts.append("lm")
    if vision:
        enable_hf_checkpointing(model.vision)
        parts.append("vision")
        if hasattr(model, "checkpoint_projectors"):
            setattr(model, "checkpoint_projectors", True)  # noqa: B010  (an nn.Module attribute, not a submodule)
            parts.append("projectors")
    return parts


def is_checkpointing(module: nn.Module) -> bool:
    """Whether any layer of ``module`` has checkpointing switched on (transformers' per-layer flag)."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in module.modules())


# -- measuring it (benchmarks/memory.py, tests/unit/models/test_memory.py) -----------------------------------------
#: the columns of torch's memory timeline (torch.profiler._memory_profiler._CATEGORY_TO_INDEX + 1)
TIMELINE_COLUMNS = ("parameter", "optimizer_state", "input", "temporary", "activation", "gradient",
                    "autograd_detail", "unknown")  # fmt: skip


def step_memory(step: Callable[[], Any], device: torch.device | str = "cpu") -> dict[str, float]:
    """Peak memory (MiB) of one call of ``step`` (a forward + backward), beyond the tensors that exist before it.

    CUDA: ``torch.cuda.max_memory_allocated`` minus what was allocated before. CPU (no allocator statistics): the
    profiler's memory timeline (``torch.profiler.profile(profile_memory=True)``, ``export_memory_timeline``, which
    torch marks deprecated in favour of the CUDA-only snapshot), which attributes every allocation to a category:
    ``peak`` is the largest sum over the non-parameter categories at any instant (activations saved for backward,
    recomputed ones, temporaries, gradients), ``activation`` the largest activation total alone."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        step()
        torch.cuda.synchronize(dev)
        return {"peak": (torch.cuda.max_memory_allocated(dev) - before) / 2**20, "activation": float("nan")}
    import json
    import tempfile
    import warnings

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        path = f"{tmp}/timeline.json"
        prof.export_memory_timeline(path, device="cpu")
        with open(path) as fh:
            _, sizes = json.load(fh)
    rows = [dict(zip(TIMELINE_COLUMNS, row[1:], strict=True)) for row in sizes]
    beyond = [sum(v for k, v in row.items() if k not in ("parameter", "optimizer_state")) for row in rows]
    return {
        "peak": max(beyond, default=0) / 2**20,
        "activation": max((row["activation"] for row in rows), default=0) / 2**20,
    }
