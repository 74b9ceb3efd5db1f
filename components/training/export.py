"""A trained medtune model in the formats other tools read: peft adapters, a merged Hugging Face model, or the whole
model as a Transformers folder (issue 20, item 3). ``medtune export`` calls it; here it takes a trained model folder
(:func:`components.training.plugins.save_trained`, the registered model's ``model`` artifact).

    from components.training.export import export_trained
    export_trained(model_dir, Path("out/peft"), "peft")                  # out/peft/comprehension, out/peft/generation
    export_trained(model_dir, Path("out/merged"), "merged", task="comprehension")
    export_trained(model_dir, Path("out/hf"), "hf")

or ``python -m components.training.export MODEL_DIR OUT --format peft``. Tests:
``.venv/bin/pytest tests/unit/training/test_export.py``.

What a format holds (``export.json`` in every folder says which base, task and vocabulary size):

- ``peft``: one plain peft adapter folder per plugin (``comprehension/``, ``generation/``), for the *user's* base:
  the whole VLM (``AutoModelForImageTextToText`` of ``model.path``) for a whole-VLM run, the causal LM otherwise
  (``model.lm.path``; the tiny default's bootstrapped LM is written to ``base/``, since no checkpoint of the user's
  exists). ``base_model_name_or_path`` names that checkpoint. Target names are the base's own module names. What the
  stages trained outside the plugins (stage 2's embedding and head rows, a whole VLM's comprehension projector) is in
  peft's ``modules_to_save`` of each adapter, so adapter + base give the pipeline model's logits exactly. The
  image-code tokens grow the vocabulary: ``base.resize_token_embeddings(vocab_rows)`` first (``export.json``; the
  tokenizer with those tokens is saved beside the adapters). LoRA loads with plain peft; H-LoRA, FLix and ElaLoRA
  after ``import medtune`` (which registers them with peft).
- ``merged``: one plugin (``task``) merged into the base weights, saved with ``save_pretrained`` together with its
  tokenizer (processor): ``AutoModelForImageTextToText`` / ``AutoModelForCausalLM`` load it with no medtune
  installed. LoRA and ElaLoRA merge; H-LoRA and FLix refuse (:class:`ExportError` with their reason).
- ``hf``: the medtune model as Transformers folders: the base with every non-plugin tensor the stages trained written
  in (vocabulary grown, no resize needed) — a whole VLM at the top (``config.json``, safetensors, processor), the tiny
  model's ``lm/`` and ``vision/`` — plus ``adapters/<task>/`` (peft folders whose ``base_model_name_or_path`` is this
  folder; plugins stay unmerged because one folder holds both and H-LoRA/FLix cannot merge), ``medtune/`` (the
  parts Transformers has no class for: the generation projector of HVP, the VQ image tokenizer, ``vlm.json``).

The generation plugin's image path reads a shallow vision level through its own projector (HVP, METHODS.md §1),
which no Transformers class has: exported on a plain base it reproduces the generation plugin's logits on text and
image-code tokens, not on images (``hf`` keeps that projector in ``medtune/``).
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.data.records import TASKS

FORMATS = ("peft", "merged", "hf")
EXPORT_FILE = "export.json"
#: adapter types that cannot be merged into one weight matrix, with the reason (one line each)
UNMERGEABLE = {
    "HLORA": "H-LoRA cannot be merged: its router weighs the experts per token, so the delta depends on the input "
    "(W + delta is not one fixed matrix); export --format peft or hf instead",
    "FLIX": "FLix cannot be merged: each example adds the adapters of its own feature values, so the delta depends "
    "on the input; export --format peft or hf instead",
}


class ExportError(ValueError):
    """An export that cannot be made (unmergeable method, not a trained model folder ...); one line."""


@dataclass
class _Loaded:
    """The trained model and what an export needs to know about it."""

    model: Any  # MedVLM or HFVLM with both plugins (components.training.plugins.load_trained)
    folder: Path
    meta: dict[str, Any]
    whole_vlm: bool

    @property
    def peft_lm(self) -> Any:
        return self.model.lm

    @property
    def adapter_type(self) -> str:
        return str(self.meta.get("adapter_type", "")).upper()


def _load(model_dir: Path) -> _Loaded:
    from components.training.plugins import load_trained

    meta_file = model_dir / "trained.json"
    if not meta_file.is_file():
        raise ExportError(f"{model_dir} holds no trained.json: not a trained medtune model folder")
    try:
        meta = json.loads(meta_file.read_text())
        model = load_trained(model_dir)
    except (OSError, ValueError, KeyError) as e:  # a damaged or foreign folder: one line, not a traceback
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ExportError(f"{model_dir}: cannot load the trained model ({reason})") from None
    return _Loaded(model, model_dir, meta, whole_vlm=getattr(model, "input_kind", "tensor") == "pil")


def user_base(loaded: _Loaded, base: str | None = None) -> str:
    """The checkpoint the exported adapters name: ``base`` if given, else the user's checkpoint the run started
    from (a whole VLM's ``model.path``, recorded as its base folder's ``source``; ``model.lm.path``), else ""
    (the tiny default: the export writes the base LM itself)."""
    if base:
        return str(base)
    vlm = json.loads((loaded.folder / "base" / "vlm.json").read_text())
    if loaded.whole_vlm:
        return str(vlm.get("source") or "")
    return str((vlm.get("args") or {}).get("lm_path") or "")


def _fresh_root(loaded: _Loaded) -> Any:
    """The untrained base as the user loads it: the whole VLM, or the causal LM; vocabulary grown to the trained
    model's rows (the values of new rows do not matter: the trained ones come from ``modules_to_save``)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    dtype = next(loaded.peft_lm.parameters()).dtype
    if loaded.whole_vlm:
        root: Any = AutoModelForImageTextToText.from_pretrained(
            str(loaded.folder / "base" / "hf"), local_files_only=True, dtype=dtype
        )
    else:
        root = AutoModelForCausalLM.from_pretrained(
            str(loaded.folder / "base" / "lm"), local_files_only=True, dtype=dtype
        )
    rows = int(loaded.peft_lm.get_input_embeddings().weight.shape[0])
    if int(root.get_input_embeddings().weight.shape[0]) != rows:
        root.resize_token_embeddings(rows, mean_resizing=False)
    return root.eval()


def _shell(loaded: _Loaded) -> nn.Module:
    """The module the pipeline's plugins wrap (its names are the adapter's keys)."""
    shell: nn.Module = loaded.peft_lm.get_base_model()
    return shell


def _renamer(loaded: _Loaded) -> dict[str, str]:
    """Pipeline LM module name -> the user base's module name. A whole VLM's LM is a shell over the VLM's own
    decoder and head (the same modules), so the VLM's names are found by identity; the tiny model's LM is the base."""
    shell = _shell(loaded)
    if not loaded.whole_vlm:
        return {name: name for name, _ in shell.named_modules()}
    in_vlm = {id(m): n for n, m in loaded.model.hf_model.named_modules()}
    return {name: in_vlm[id(m)] for name, m in shell.named_modules() if id(m) in in_vlm}


def _adapted(loaded: _Loaded, task: str) -> list[str]:
    """Names (in the pipeline LM) of the layers that carry ``task``'s plugin."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    names = []
    for name, module in _shell(loaded).named_modules():
        if isinstance(module, BaseTunerLayer) and any(
            task in getattr(module, attr, {}) for attr in module.adapter_layer_names
        ):
            names.append(name)
    return names


def _rename_key(key: str, renames: dict[str, str]) -> str:
    """``base_model.model.<module>.<param...>`` with the module path renamed (the longest known module prefix)."""
    prefix = "base_model.model."
    if not key.startswith(prefix):
        raise ExportError(f"unexpected adapter key {key!r}")
    parts = key[len(prefix) :].split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:cut])
        if module in renames:
            return prefix + ".".join([renames[module], *parts[cut:]])
    raise ExportError(f"adapter key {key!r} names no module of the language model")


def _trained_modules(loaded: _Loaded, root: Any, task: str) -> dict[str, nn.Module]:
    """Root module name -> the pipeline's trained module, for every non-plugin module the stages changed that
    ``task`` uses: word embeddings and output head (stage 2), a whole VLM's comprehension projector (stages 1, 3)."""
    lm = loaded.peft_lm
    pairs: list[tuple[nn.Module, nn.Module]] = [
        (root.get_input_embeddings(), lm.get_input_embeddings()),
    ]
    head = root.get_output_embeddings()
    if head is not None:
        pairs.append((head, lm.get_output_embeddings()))
    if loaded.whole_vlm and task == "comprehension":
        pairs.append((_vlm_projector(loaded, root), loaded.model.projectors["comprehension"]))
    names = {id(m): n for n, m in root.named_modules()}
    out: dict[str, nn.Module] = {}
    for mine, trained in pairs:
        theirs = trained.state_dict()
        if all(torch.equal(v, theirs[k]) for k, v in mine.state_dict().items()):
            continue  # not trained (e.g. stage 2 skipped): the base's own module is right
        out[names[id(mine)]] = trained
    return out


def _vlm_projector(loaded: _Loaded, root: Any) -> nn.Module:
    """The fresh VLM's projector: the module at the name the pipeline VLM keeps its comprehension projector."""
    in_vlm = {id(m): n for n, m in loaded.model.hf_model.named_modules()}
    return root.get_submodule(in_vlm[id(loaded.model.projectors["comprehension"])])


def _peft_for(loaded: _Loaded, root: Any, task: str, *, base: str, with_trained: bool) -> Any:
    """A ``PeftModel`` on ``root`` whose adapter "default" is the pipeline's ``task`` plugin (renamed targets,
    same weights) and, when ``with_trained``, whose ``modules_to_save`` hold the trained non-plugin modules."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    renames = _renamer(loaded)
    config = copy.deepcopy(loaded.peft_lm.peft_config[task])
    adapted = _adapted(loaded, task)
    config.target_modules = sorted(renames[n] for n in adapted)
    for field in ("rank_pattern", "alpha_pattern"):  # full module names move with the targets; suffixes stay
        pattern = getattr(config, field, None)
        if pattern:
            setattr(config, field, {renames.get(k, k): v for k, v in pattern.items()})
    trained = _trained_modules(loaded, root, task) if with_trained else {}
    config.modules_to_save = sorted(trained) or None
    config.inference_mode = True
    config.base_model_name_or_path = getattr(root, "name_or_path", None)  # what peft would set (and warn about)
    model = get_peft_model(root, config, adapter_name="default")
    model.peft_config["default"].base_model_name_or_path = base  # peft sets the folder it was loaded from
    state = get_peft_model_state_dict(loaded.peft_lm, adapter_name=task, save_embedding_layers=False)
    renamed = {_rename_key(k, renames): v for k, v in state.items()}
    for name, module in trained.items():  # saved as peft saves modules_to_save: the module's own keys
        renamed.update({f"base_model.model.{name}.{k}": v for k, v in module.state_dict().items()})
    result: Any = set_peft_model_state_dict(model, renamed, adapter_name="default")
    if result.unexpected_keys:
        raise ExportError(f"the {task} plugin does not fit the base: unexpected keys {result.unexpected_keys[:3]}")
    return model.eval()


def _save_tokenizer(loaded: _Loaded, out: Path) -> None:
    """The tokenizer with the image-code tokens (a whole VLM: its processor, chat template included)."""
    if loaded.whole_vlm:
        loaded.model.processor.save_pretrained(str(out))
    else:
        loaded.model.tokenizer.save_pretrained(str(out))


def _write_info(out: Path, info: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / EXPORT_FILE).write_text(json.dumps(info, indent=2) + "\n")


def _vocab_rows(loaded: _Loaded) -> int:
    return int(loaded.peft_lm.get_input_embeddings().weight.shape[0])


def _base_kind(loaded: _Loaded) -> str:
    return "AutoModelForImageTextToText" if loaded.whole_vlm else "AutoModelForCausalLM"


def export_peft(loaded: _Loaded, out: Path, *, base: str | None = None) -> Path:
    named = user_base(loaded, base)
    if not named:  # the tiny default: no user checkpoint; the bootstrapped LM (and its tokenizer) is the base
        shutil.copytree(loaded.folder / "base" / "lm", out / "base")
        from components.models.tokenizer import load_tokenizer

        load_tokenizer(loaded.folder / "base").save_pretrained(str(out / "base"))
        named = str((out / "base").resolve())
    for task in TASKS:
        model = _peft_for(loaded, _fresh_root(loaded), task, base=named, with_trained=True)
        model.save_pretrained(str(out / task), save_embedding_layers=False)
    _save_tokenizer(loaded, out)
    _write_info(out, {"format": "peft", "adapter_type": loaded.adapter_type, "base": named,
                      "base_class": _base_kind(loaded), "vocab_rows": _vocab_rows(loaded), "tasks": list(TASKS),
                      "needs_medtune": loaded.adapter_type != "LORA"})  # fmt: skip
    return out


def export_merged(loaded: _Loaded, out: Path, *, task: str = "comprehension", base: str | None = None) -> Path:
    if loaded.adapter_type in UNMERGEABLE:
        raise ExportError(UNMERGEABLE[loaded.adapter_type])
    model = _peft_for(loaded, _fresh_root(loaded), task, base=user_base(loaded, base), with_trained=True)
    merged = model.merge_and_unload()
    merged.save_pretrained(str(out))
    _save_tokenizer(loaded, out)
    _write_info(out, {"format": "merged", "adapter_type": loaded.adapter_type, "task": task,
                      "base": user_base(loaded, base), "base_class": _base_kind(loaded),
                      "vocab_rows": _vocab_rows(loaded)})  # fmt: skip
    return out


def export_hf(loaded: _Loaded, out: Path) -> Path:
    """See the module docstring (``hf``)."""
    from safetensors.torch import save_file

    root = _fresh_root(loaded)
    for name, module in _trained_modules(loaded, root, "comprehension").items():
        root.get_submodule(name).load_state_dict(module.state_dict())  # the trained rows / projector, baked in
    if loaded.whole_vlm:
        root.save_pretrained(str(out))
        _save_tokenizer(loaded, out)
        named = str(out.resolve())
    else:
        root.save_pretrained(str(out / "lm"))
        _save_tokenizer(loaded, out / "lm")
        loaded.model.vision.save_pretrained(str(out / "vision"))
        named = str((out / "lm").resolve())
    extras = out / "medtune"
    extras.mkdir(parents=True, exist_ok=True)
    projectors = {
        f"{task}.{k}": v.detach().cpu().contiguous()
        for task in TASKS
        for k, v in loaded.model.projectors[task].state_dict().items()
    }
    save_file(projectors, str(extras / "projectors.safetensors"))
    shutil.copy2(loaded.folder / "base" / "vlm.json", extras / "vlm.json")
    if (loaded.folder / "vq").is_dir():
        shutil.copytree(loaded.folder / "vq", extras / "vq")
    for task in TASKS:
        # the trained rows are in the base now: the adapters hold the plugins only
        model = _peft_for(loaded, copy.deepcopy(root), task, base=named, with_trained=False)
        model.save_pretrained(str(out / "adapters" / task), save_embedding_layers=False)
    _write_info(out, {"format": "hf", "adapter_type": loaded.adapter_type, "base": named,
                      "base_class": _base_kind(loaded), "vocab_rows": _vocab_rows(loaded), "tasks": list(TASKS),
                      "needs_medtune": loaded.adapter_type != "LORA"})  # fmt: skip
    return out


def export_trained(
    model_dir: str | Path, out: str | Path, fmt: str, *, task: str = "comprehension", base: str | None = None
) -> Path:
    """Write ``model_dir`` (a trained model folder) to ``out`` in format ``fmt`` (:data:`FORMATS`); ``task`` picks
    the plugin ``merged`` merges; ``base`` overrides the checkpoint the adapters name. ``out`` must not exist or be
    empty. Raises :class:`ExportError` (one line) when it cannot."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    if task not in TASKS:
        raise ExportError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ExportError(f"{target} exists and is not an empty folder")
    loaded = _load(Path(model_dir))
    if fmt == "merged" and loaded.adapter_type in UNMERGEABLE:  # before writing anything
        raise ExportError(UNMERGEABLE[loaded.adapter_type])
    target.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad():
            if fmt == "peft":
                return export_peft(loaded, target, base=base)
            if fmt == "merged":
                return export_merged(loaded, target, task=task, base=base)
            return export_hf(loaded, target)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # no half-written export
        raise


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("out")
    parser.add_argument("--format", default="peft", choices=FORMATS)
    parser.add_argument("--task", default="comprehension", choices=TASKS)
    a = parser.parse_args()
    try:
        print(export_trained(a.model_dir, a.out, a.format, task=a.task))
    except ExportError as e:
        sys.exit(f"error: {e}")
