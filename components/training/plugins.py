"""The trainable VLM of the three stages: base model + image-code tokens + two H-LoRA (or LoRA) plugins, and its
saved form (METHODS.md §1: "one adapter set per task type ... stored separately").

    from components.training.plugins import AdapterArgs, prepare_model, save_trained, load_trained
    model = prepare_model(base_dir, codebook_size=256, adapter=AdapterArgs(kind="hlora", rank=64))
    model.lm.set_adapter("generation")          # model.lm is a peft PeftModel around the LM
    folder = save_trained(model, Path("work/model"), base_dir=base_dir)
    model = load_trained(folder)                # the same model, eval mode

``prepare_model`` loads the base (:func:`components.training.base.bootstrap_base` or any MedVLM folder), adds
``<img_start>``, ``<img_end>`` and one token per VQ code to its tokenizer, grows the vocabulary with rows at the
mean of the old ones (``resize_token_embeddings_mean``), then wraps ``model.lm`` in a ``PeftModel`` with two
plugins named after the tasks. MedVLM works unchanged with the wrapped LM (peft forwards ``get_input_embeddings``,
``config`` and the forward's keyword arguments to the wrapped model).

Saved layout (``save_trained``)::

    folder/trained.json                  format, adapter args, vocabulary size, the stages that were run
    folder/base/                         the base MedVLM folder (vision, LM, projectors, tokenizer); its weights
                                         hard-linked when the base is interned (components/blobs.py), else copied
    folder/tokenizer/                    the tokenizer with the image-code tokens
    folder/adapters/comprehension/       peft save_pretrained (adapter_config.json + adapter_model.safetensors)
    folder/adapters/generation/
    folder/trained.safetensors           what the stages changed outside the plugins: projectors, embeddings, head

What the paper leaves open: HealthGPT releases per-task plugin weights and a merged base; medtune keeps the base
untouched and stores the stage-2 embedding/head rows and the stage-1/3 projectors beside the plugins, so the whole
folder is the deliverable and the two adapter folders are plain peft adapters (``PeftModel.from_pretrained``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft import PeftModel
from safetensors.torch import load_file

from components.data.records import TASKS
from components.models.backend import load_vlm
from components.models.tokenizer import add_image_code_tokens, load_tokenizer, save_tokenizer
from components.models.vlm import MedVLM
from components.training.stages import parameter_groups

FORMAT = "medtune.trained-vlm"
VERSION = 1


@dataclass(frozen=True)
class AdapterArgs:
    """The two plugins. ``rank`` is the total rank of a plugin (H-LoRA: ``num_experts`` x rank per expert)."""

    kind: str = "hlora"  # "hlora", "lora", "flix" ... (components.adapters registry)
    rank: int = 16  # comprehension plugin, total rank
    generation_rank: int | None = None  # generation plugin (None: = rank); HealthGPT uses 4x the comprehension rank
    num_experts: int = 4  # H-LoRA experts (ignored by "lora")
    alpha: float | None = None  # None: 2 x total rank (HealthGPT)
    dropout: float = 0.05
    # module regex/suffix -> total rank of the comprehension plugin (a rank search's output, issue 5); the generation
    # plugin gets the same pattern scaled by generation_rank / rank, so each plugin keeps its own budget
    rank_pattern: dict[str, int] = field(default_factory=dict)
    target_modules: list[str] | None = None  # None: every Linear of the LM except lm_head
    # FLix (METHODS.md §3): feature name -> its values (the vocabulary, e.g. the train split's values), the rank of
    # each value's adapter (None: the plugin's total rank / number of features) and the feature dropout.
    feature_values: dict[str, list[str]] = field(default_factory=dict)
    rank_per_feature: int | None = None
    feature_dropout: float = 0.1

    def pattern_for(self, task: str) -> dict[str, int]:
        """``rank_pattern`` for ``task``'s plugin: as given for comprehension, x generation_rank / rank (rounded,
        at least 1) for generation. H-LoRA then rounds each total down to a multiple of its experts."""
        ratio = (self.generation_rank or self.rank) / self.rank if task == "generation" else 1.0
        return {key: max(1, round(value * ratio)) for key, value in self.rank_pattern.items()}

    def for_task(self, task: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "rank": self.generation_rank if task == "generation" and self.generation_rank else self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "rank_pattern": self.pattern_for(task),
            "target_modules": self.target_modules,
        }
        if self.kind == "hlora":
            kwargs["num_experts"] = self.num_experts
        if self.kind == "flix":
            if not self.feature_values:
                raise ValueError("a flix adapter needs feature_values (feature name -> its values)")
            kwargs["features"] = {name: list(values) for name, values in self.feature_values.items()}
            kwargs["feature_dropout"] = self.feature_dropout
            if self.rank_per_feature is not None:
                kwargs["rank_per_feature"] = self.rank_per_feature
        return kwargs


def attach_plugins(model: MedVLM, adapter: AdapterArgs) -> MedVLM:
    """Wrap ``model.lm`` in a PeftModel with one plugin per task ("comprehension" active)."""
    from components.adapters import add_adapter, apply_adapter

    if isinstance(model.lm, PeftModel):
        raise ValueError("the model's LM already carries peft plugins")
    first, *others = TASKS
    peft_lm = apply_adapter(model.lm, adapter.kind, adapter_name=first, **adapter.for_task(first))
    for task in others:
        add_adapter(peft_lm, adapter.kind, adapter_name=task, **adapter.for_task(task))
    peft_lm.set_adapter(first)
    model.lm = peft_lm  # type: ignore[assignment]  # MedVLM types lm as the bare LM; peft forwards its API
    return model


def prepare_model(
    base_dir: str | Path, *, codebook_size: int, adapter: AdapterArgs, quantize: str = "none", device: Any = "cuda"
) -> MedVLM:
    """Load the base, add the image-code tokens (rows at the mean), attach the two plugins.

    ``quantize`` "int8"/"nf4" puts the language model's adapter targets in 4-/8-bit on ``device`` through
    bitsandbytes before the plugins wrap them (QLoRA, :mod:`components.models.quantize`).

    A base with ``plugins/<task>/`` (``medtune import healthgpt`` writes them) starts that plugin from those weights;
    its rank, experts, alpha and targets then come from the plugin, and an ``adapter`` that contradicts them is a
    ValueError naming the config key (``adapter.rank`` ...)."""
    from components.training.imported_plugins import adapter_for_base_plugins, base_plugins, load_base_plugins

    imported = base_plugins(base_dir)
    if imported:
        adapter = adapter_for_base_plugins(adapter, imported)
    model = load_vlm(base_dir)
    if model.tokenizer is None:
        raise ValueError(f"{base_dir} holds no tokenizer: a base for the stages must be saved with its tokenizer")
    first_new = len(model.tokenizer)  # rows past the tokenizer are padding (Qwen2.5, Phi-3): new tokens take them
    add_image_code_tokens(model.tokenizer, codebook_size)
    model.resize_token_embeddings_mean(len(model.tokenizer), first_new=first_new)
    if quantize != "none":
        import torch

        from components.models.quantize import quantize_language_model
        from components.training.precision import low_precision_dtype

        compute = low_precision_dtype(model) or torch.bfloat16  # QLoRA computes in bf16 over a float32 base too
        quantize_language_model(model, quantize, device=device, compute_dtype=compute)
    model = attach_plugins(model, adapter)
    load_base_plugins(model.lm, imported)
    return model


def trained_tensor_names(model: MedVLM) -> list[str]:
    """Non-plugin parameters that the stages train: both projectors, the word embeddings and the output head."""
    groups = parameter_groups(model)
    names = [n for g in ("projector.comprehension", "projector.generation", "embeddings", "head") for n in groups[g]]
    return sorted(set(names))


def _strip(name: str) -> str:
    """A MedVLM parameter name without peft's wrapper prefix, so the file also loads into an unwrapped model."""
    return name.replace("lm.base_model.model.", "lm.", 1)


def save_trained(
    model: MedVLM, folder: str | Path, *, base_dir: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Write the trained model (see the module docstring); returns ``folder``."""
    from safetensors.torch import save_file

    out = Path(folder)
    if not isinstance(model.lm, PeftModel) or model.tokenizer is None:
        raise ValueError("save_trained expects a model from prepare_model (peft plugins and a tokenizer)")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    from components.blobs import link_or_copy

    shutil.copytree(Path(base_dir), out / "base", copy_function=link_or_copy)  # an interned base is linked, not copied
    save_tokenizer(model.tokenizer, out / "tokenizer")
    model.lm.save_pretrained(str(out / "adapters"), save_embedding_layers=False)
    params = dict(model.named_parameters())
    save_file(
        {_strip(n): params[n].detach().cpu().contiguous() for n in trained_tensor_names(model)},
        str(out / "trained.safetensors"),
    )
    peft_configs: dict[str, Any] = model.lm.peft_config
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "vocab_size": len(model.tokenizer),
        "adapters": {t: str(Path("adapters") / t) for t in TASKS},
        "adapter_type": str(getattr(peft_configs[TASKS[0]].peft_type, "value", peft_configs[TASKS[0]].peft_type)),
        **(extra or {}),
    }
    (out / "trained.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return out


def adapter_folder(folder: str | Path, task: str) -> Path:
    """Where ``save_pretrained`` put ``task``'s plugin (peft writes the first adapter at the top unless named)."""
    root = Path(folder) / "adapters"
    sub = root / task
    return sub if (sub / "adapter_config.json").is_file() else root


def load_trained(folder: str | Path) -> MedVLM:
    """Load what :func:`save_trained` wrote: base + code tokens + both plugins + trained tensors, in eval mode."""
    import components.adapters  # noqa: F401  (registers "hlora" with peft before from_pretrained)

    root = Path(folder)
    meta_file = root / "trained.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{root} holds no trained.json: not a folder written by save_trained")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{meta_file}: expected {FORMAT} v{VERSION}, got {meta.get('format')} v{meta.get('version')}")
    model = load_vlm(root / "base")
    model.tokenizer = load_tokenizer(root / "tokenizer")
    model.resize_token_embeddings_mean(len(model.tokenizer))
    first, *others = TASKS
    peft_lm = PeftModel.from_pretrained(model.lm, str(adapter_folder(root, first)), adapter_name=first)
    for task in others:
        peft_lm.load_adapter(str(adapter_folder(root, task)), adapter_name=task)
    model.lm = peft_lm  # as in attach_plugins
    tensors = load_file(str(root / "trained.safetensors"))
    params = {_strip(n): p for n, p in model.named_parameters()}
    missing = sorted(set(tensors) - set(params))
    if missing:
        raise KeyError(f"{root}/trained.safetensors names parameters the model lacks: {missing[:5]}")
    for name, value in tensors.items():
        params[name].data.copy_(value)
    peft_lm.set_adapter(first)
    return model.eval()
