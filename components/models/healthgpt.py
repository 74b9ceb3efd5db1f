"""Import HealthGPT's released weights into a medtune model folder (issue 16 point 4; METHODS.md §1).

A converter into :class:`~components.models.vlm.MedVLM`'s format (DESIGN.md "Model backends"), not a backend::

    medtune import healthgpt --lm /models/Phi-3-mini-4k-instruct --vision /models/clip-vit-large-patch14-336 \\
        --hlora /models/HealthGPT-M3/com_hlora_weights.bin --gen-hlora /models/HealthGPT-M3/gen_hlora_weights.bin \\
        --fusion /models/HealthGPT-M3/fusion_layer_weights.bin --out /models/healthgpt-m3-medtune
    medtune run -c configs/healthgpt-m3.yaml model.path=/models/healthgpt-m3-medtune

    from components.models.healthgpt import import_healthgpt
    provenance = import_healthgpt(lm=..., vision=..., hlora=..., out=...)   # the import.json content

Output folder: a ``MedVLM.save`` folder (``vlm.json``, ``lm/``, ``vision/``, ``projectors.safetensors``, tokenizer
files) plus ``plugins/comprehension/`` and ``plugins/generation/`` (peft adapter folders of medtune's H-LoRA:
``adapter_config.json`` + ``adapter_model.safetensors``) and ``import.json`` (the sources with their sha256, the
release's settings, what is exact). It is written to a hidden sibling folder and renamed at the end: a failed import
leaves nothing. :func:`components.training.plugins.prepare_model` starts each plugin from ``plugins/<task>``.

**The release** (DCDmllm/HealthGPT: ``llava/peft/tuners/lora.py``, ``llava/demo/{com,gen}_infer.py``, ``utils.py``,
``config.py``, ``llava/model/language_model/llava_phi3.py``, ``llava/conversation.py``). HealthGPT-M3 is a
``LlavaPhiForCausalLM`` (Phi-3-mini + LLaVA's CLIP tower + ``mm_projector`` of type ``mlp2x_gelu``) wrapped by the
release's own copy of peft (``PeftModel`` -> ``LoraModel`` -> model) whose ``Linear`` is H-LoRA. Targets are every
``nn.Linear`` of the LM but ``lm_head`` (``find_all_linear_names`` runs before the vision modules exist: Phi-3's
``qkv_proj``, ``o_proj``, ``gate_up_proj``, ``down_proj``). Each ``.bin`` is a state dict of that ``PeftModel``,
loaded with ``load_state_dict(strict=False)``; comprehension and generation are two separate models: the
comprehension one loads ``com_hlora_weights.bin``, the generation one ``gen_hlora_weights.bin`` then
``fusion_layer_weights.bin``. Key layout (prefix ``base_model.model.``) and where each tensor goes:

====================================================  ==============================================================
release key (after ``base_model.model.``)             medtune (``plugins/<task>/adapter_model.safetensors`` keys)
====================================================  ==============================================================
``model.layers.{i}.{m}.lora_A.weight`` (k*r, d_in)    ``base_model.model.model.layers.{i}.{m}.hlora_A``
``model.layers.{i}.{m}.lora_B.weight`` (d_out, k*r)   ``base_model.model.model.layers.{i}.{m}.hlora_B``
``model.layers.{i}.{m}.lora_route.weight`` (k, d_in)  ``base_model.model.model.layers.{i}.{m}.hlora_router``
``model.mm_projector.{0,2}.{weight,bias}``            ``projectors.safetensors``: ``<task>.{0,2}.{weight,bias}``
``model.embed_tokens.weight`` (optional)              ``lm/``: ``model.embed_tokens.weight`` (the shared vocabulary)
``lm_head.weight`` (optional)                         ``lm/``: ``lm_head.weight``
====================================================  ==============================================================

``--hlora``/``--gen-hlora`` must hold the three H-LoRA tensors of every target and the four projector tensors (the
release builds its projector at random and takes it from that file); ``--fusion`` holds the embeddings and/or the
head (and may hold a projector). Any other key, a missing one, or a wrong shape is an error naming the key. The
repository does not list the files' keys: this layout follows from how its code builds and loads the model (the
real files cannot be fetched here), so a real file outside it fails on the first differing key, not silently.

**H-LoRA, release vs medtune: no mismatch, mapped exactly; medtune's layer is unchanged.** Release:
``y = W x + b + B (repeat_interleave(softmax(R x), r) * dropout(A x * s))`` with ``s = alpha / (k r) * k``;
medtune (:mod:`components.adapters.hlora.layer`): ``y = W x + b + B (dropout(A x) * repeat_each(softmax(R x) * s))``.
The router reads the clean x in both; expert e owns rows ``e r .. (e+1) r - 1`` of A in both (``repeat_interleave``
= medtune's ``unflatten(k, r)``); the scale is alpha / r_per_expert in both; 4 experts, dense softmax, no top-k.
Equal in eval (the release infers with dropout 0); in training dropout commutes with the positive scale. The
router softmax runs in float32 in medtune (the release: model dtype), identical in float32. Ranks and experts come
from the shapes (A's rows = k r, the router's rows = k); alpha is not stored in the files: the release passes it on
the command line (``config.py``: M3 64/128 and 256/512, L14 32/64), always 2 x the total rank, the default here.

**Vocabulary.** The release adds ``<start_index>``, ``<idx_0>`` .. ``<idx_{N-1}>`` (N = ``vq_idx_nums`` = 8192),
``<end_index>``, ``<pixel_newline>`` to the Phi-3 tokenizer, resizes to ``len(tokenizer)`` and sets every row from
the old tokenizer's length (32011 for Phi-3) on to the mean of the rows before it, Phi-3's padding rows included:
reproduced here, in float32 (the release averages in its model dtype). Tokens keep their release names and ids;
the code tokens index the release's VQGAN codebook, which is not imported (medtune's generation path adds its own
``<img_start>``/``<code_i>`` tokens after them when it trains). medtune's ``<image>`` placeholder then takes one
more row; its embedding never reaches the LM (placeholders are replaced by image features, exactly where LLaVA
splices its 576 features in), and the logits gain its column.

**The fusion layer and the shared vocabulary.** medtune shares one embedding and head between the plugins (stage
2, "so the plugins share one vocabulary"); the release runs two models. The shared rows are what one model loading
``--hlora``, ``--gen-hlora`` and ``--fusion`` in the release's order would hold (later files overwrite; none: the
mean-row rule above). A task whose release model used other rows (e.g. a comprehension file without embeddings,
whose demo never loads the fusion file) does not reproduce the release's forward exactly: ``import.json`` records
``exact`` per task and the largest row difference, and the command says so.

**Projectors and HVP.** Comprehension reads CLIP ``hidden_states[-2]``, generation ``hidden_states[1]``, patch
tokens only (``mm_vision_select_layer`` -2 / 1, ``mm_vision_select_feature`` patch): ``VLMArgs(comp_layer=-2,
gen_layer=1, merge=1)``. Each task's projector is its own file's ``mm_projector``. Without ``--gen-hlora`` the
release has no generation model: the generation projector is a copy of the comprehension one (reading the shallow
level, issue 16 point 2) and no generation plugin is written (``prepare_model`` creates a fresh one).

Not imported / recorded only: the VQGAN decoder; the chat template (``phi3_instruct``) and the image preprocessing
(``expand2square`` with the CLIP mean colour, then CLIP's processor) go to ``import.json`` for the collator to use.
CLIP's ``image_mean``/``image_std`` go to ``VLMArgs`` (medtune then normalises pixels as the release does) and the
source's ``preprocessor_config.json`` is copied into ``vision/``. Files are read only with
``torch.load(path, map_location="cpu", weights_only=True)``. ``dtype="auto"`` keeps every source tensor exact (one
dtype if all sources share it, else float32); a narrower explicit dtype is recorded as lossy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from components.data.records import TASKS

FORMAT = "medtune.healthgpt-import"
VERSION = 1
PLUGINS = "plugins"  # plugins/<task>/: peft folders that components.training.imported_plugins starts from
PREFIX = "base_model.model."  # the release's PeftModel -> LoraModel -> LlavaPhiForCausalLM
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
PROJECTOR = ("model.mm_projector.0.weight", "model.mm_projector.0.bias")
PROJECTOR_KEYS = (*PROJECTOR, "model.mm_projector.2.weight", "model.mm_projector.2.bias")
LORA_PARTS = {"lora_A": "hlora_A", "lora_B": "hlora_B", "lora_route": "hlora_router"}
LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_route)\.weight$")
SELECT_LAYER = {"comprehension": -2, "generation": 1}  # llava/demo/utils.py com_vision_args / gen_vision_args
RELEASE_VQ_CODES = 8192  # vq_idx_nums of every released config
# llava/conversation.py conv_phi3_instruct (SeparatorStyle.MPT): system + sep, then role + message + sep per turn
CONVERSATION = {
    "name": "phi3_instruct",
    "system": "<|system|>\nYou are a helpful AI assistant.",
    "roles": ["\n<|user|>\n", "\n<|assistant|>\n"],
    "sep": "<|end|>",
    "user_message": "<image>\n{question}",  # com_infer.py; the prompt ends with the assistant role
}
PREPROCESS = "expand2square (pad with the CLIP mean colour), then CLIPImageProcessor (resize, centre crop, mean/std)"


class HealthGPTImportError(ValueError):
    """A bad input of the import: ``option`` (e.g. ``--hlora``) and ``path`` name it; nothing was written."""

    def __init__(self, option: str, path: object, reason: str) -> None:
        self.option, self.path, self.reason = option, str(path), reason
        super().__init__(f"{option} {path}: {reason}" if str(path) else f"{option}: {reason}")


def release_tokens(codes: int) -> list[str]:
    """The tokens ``add_special_tokens_and_resize_model`` adds, in id order."""
    return ["<start_index>", *(f"<idx_{i}>" for i in range(codes)), "<end_index>", "<pixel_newline>"]


@dataclass
class ReleaseFile:
    """One ``.bin`` of the release: its tensors keyed without the ``base_model.model.`` prefix."""

    option: str
    path: Path
    tensors: dict[str, Tensor]
    sha256: str

    def fail(self, reason: str) -> HealthGPTImportError:
        return HealthGPTImportError(self.option, self.path, reason)

    @property
    def vocabulary(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.tensors.items() if k in (EMBED, HEAD)}


@dataclass(frozen=True)
class PluginShape:
    """An H-LoRA plugin as its tensors show it: total rank k*r and experts k."""

    total_rank: int
    experts: int


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_release_file(option: str, path: str | Path) -> ReleaseFile:
    """Load a release ``.bin`` with ``torch.load(weights_only=True)`` only; a flat dict of tensors or an error."""
    file = Path(path)
    if not file.is_file():
        raise HealthGPTImportError(option, file, "no such file")
    try:
        raw = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (UnpicklingError, RuntimeError, EOFError ...: all mean "not readable")
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        reason = f"not a tensor checkpoint that torch.load(weights_only=True) reads ({first})"
        raise HealthGPTImportError(option, file, reason) from None
    if not isinstance(raw, dict) or not raw:
        raise HealthGPTImportError(option, file, f"expected a state dict of tensors, got {type(raw).__name__}")
    tensors: dict[str, Tensor] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key.startswith(PREFIX):
            raise HealthGPTImportError(option, file, f"unexpected key {key!r} (release keys start with {PREFIX!r})")
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise HealthGPTImportError(option, file, f"{key} is not a floating-point tensor")
        tensors[key.removeprefix(PREFIX)] = value
    return ReleaseFile(option, file, tensors, _sha256(file))


def check_layout(
    file: ReleaseFile, *, targets: dict[str, tuple[int, int]], lm_hidden: int, vision_hidden: int, fusion: bool = False
) -> PluginShape | None:
    """Check ``file`` against the release layout (see the module docstring); the plugin's shape (None: fusion)."""
    allowed = set(PROJECTOR_KEYS) | {EMBED, HEAD}
    for key in file.tensors:
        match = LORA_KEY.match(key)
        if key in allowed or (not fusion and match is not None and match["module"] in targets):
            continue
        raise file.fail(f"unexpected key {PREFIX + key!r} (not in the HealthGPT release layout)")
    if fusion:  # the vocabulary layer (at least one of embeddings and head), and may be a projector
        required = [] if file.vocabulary else [EMBED]
        required += list(PROJECTOR_KEYS) if any(k in file.tensors for k in PROJECTOR_KEYS) else []
    else:  # a plugin: H-LoRA on every target, its projector
        required = [f"{m}.{part}.weight" for m in targets for part in LORA_PARTS] + list(PROJECTOR_KEYS)
    for key in required:
        if key not in file.tensors:
            raise file.fail(f"missing key {PREFIX + key!r} (the release layout has it)")

    def shape(key: str, want: tuple[int, ...]) -> None:
        got = tuple(file.tensors[key].shape)
        if got != want:
            raise file.fail(f"{PREFIX + key} has shape {got}; the release layout with this --lm/--vision needs {want}")

    for key, value in file.vocabulary.items():
        shape(key, (int(value.shape[0]) if value.ndim == 2 else -1, lm_hidden))
    if any(k in file.tensors for k in PROJECTOR_KEYS):
        wants = [(lm_hidden, vision_hidden), (lm_hidden,), (lm_hidden, lm_hidden), (lm_hidden,)]
        for key, want in zip(PROJECTOR_KEYS, wants, strict=True):
            shape(key, want)
    if fusion:
        return None
    first = next(iter(targets))
    total = int(file.tensors[f"{first}.lora_A.weight"].shape[0])
    experts = int(file.tensors[f"{first}.lora_route.weight"].shape[0])
    if total % experts:
        raise file.fail(f"lora_A has {total} rows, not a multiple of the router's {experts} experts")
    for module, (d_in, d_out) in targets.items():
        shape(f"{module}.lora_A.weight", (total, d_in))
        shape(f"{module}.lora_B.weight", (d_out, total))
        shape(f"{module}.lora_route.weight", (experts, d_in))
    return PluginShape(total, experts)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No load reports, progress bars nor warnings from the libraries while importing (the command prints a summary)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():  # library deprecation notes (transformers, peft) are not the user's business
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _config_dtype(cfg: Any) -> torch.dtype:
    value = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) else torch.float32


def _lm_config(lm: Path) -> Any:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if not (lm / "config.json").is_file():
        raise HealthGPTImportError("--lm", lm, "no such model folder (config.json missing)")
    try:
        cfg = AutoConfig.from_pretrained(str(lm), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise HealthGPTImportError("--lm", lm, f"unreadable model config ({str(e).splitlines()[0][:200]})") from None
    if type(cfg) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise HealthGPTImportError("--lm", lm, f"model_type {cfg.model_type!r} is not a causal language model")
    return cfg


def _vision_config(vision: Path) -> Any:
    from transformers import CLIPVisionConfig

    config = vision / "config.json"
    if not config.is_file():
        raise HealthGPTImportError("--vision", vision, "no such model folder (config.json missing)")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError):
        model_type = None
    if model_type not in ("clip", "clip_vision_model"):
        raise HealthGPTImportError("--vision", vision, f"not a CLIP vision model (model_type {model_type!r})")
    return CLIPVisionConfig.from_pretrained(str(vision), local_files_only=True)


def _resolve_dtype(dtype: str, sources: list[torch.dtype]) -> tuple[torch.dtype, bool]:
    """The output dtype and whether it holds every source tensor exactly."""
    from components.models.vlm import DTYPES, torch_dtype

    exact_in = {torch.float32: set(DTYPES.values()), torch.bfloat16: {torch.bfloat16}, torch.float16: {torch.float16}}
    if dtype == "auto":
        kinds = set(sources)
        chosen = kinds.pop() if len(kinds) == 1 and next(iter(kinds)) in exact_in else torch.float32
    else:
        chosen = torch_dtype(dtype)
    return chosen, all(s in exact_in[chosen] for s in sources)


def _release_vocabulary(lm: Any, first_new: int, rows: int) -> None:
    """The release's resize: exactly ``rows`` rows; rows from ``first_new`` on at the mean of the rows before."""
    inp = lm.get_input_embeddings().weight
    head = lm.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == inp.data_ptr()
    mean_in = inp[:first_new].float().mean(dim=0)
    mean_out = head.weight[:first_new].float().mean(dim=0) if head is not None and not tied else None
    lm.resize_token_embeddings(rows, mean_resizing=False)
    with torch.no_grad():
        new_in = lm.get_input_embeddings().weight
        new_in[first_new:] = mean_in.to(new_in.dtype)
        if mean_out is not None:
            new_out = lm.get_output_embeddings().weight
            new_out[first_new:] = mean_out.to(new_out.dtype)


@dataclass
class Release:
    """The checked inputs of one import (nothing loaded but configs, the tokenizer and the .bin tensors)."""

    lm_dir: Path
    vision_dir: Path
    lm_cfg: Any
    vision_cfg: Any
    tokenizer: Any
    targets: dict[str, tuple[int, int]]  # LM linear layer -> (d_in, d_out): the release's H-LoRA targets
    files: dict[str, ReleaseFile]  # "comprehension", and "generation" + "fusion" when given
    shapes: dict[str, PluginShape]
    alphas: dict[str, float]
    codes: int  # the release's image-code tokens (vq_idx_nums)
    dtype: torch.dtype
    lossless: bool

    @property
    def order(self) -> list[ReleaseFile]:
        """The files in the release's load order (a later one overwrites what it shares with an earlier one)."""
        return [self.files[n] for n in ("comprehension", "generation", "fusion") if n in self.files]

    @property
    def task_files(self) -> dict[str, list[ReleaseFile]]:
        """What each task's release model loads (comprehension: com; generation: gen then fusion)."""
        tasks = {"comprehension": [self.files["comprehension"]]}
        if "generation" in self.files:
            tasks["generation"] = [self.files["generation"], self.files["fusion"]]
        return tasks

    def projector_source(self, task: str) -> ReleaseFile:
        fusion = self.files.get("fusion")
        if task == "generation" and fusion is not None and PROJECTOR[0] in fusion.tensors:
            return fusion
        return self.files.get(task, self.files["comprehension"])


def check_release(
    *,
    lm: str | Path,
    vision: str | Path,
    hlora: str | Path,
    gen_hlora: str | Path | None = None,
    fusion: str | Path | None = None,
    alpha: float | None = None,
    gen_alpha: float | None = None,
    vq_codes: int | None = None,
    dtype: str = "auto",
) -> Release:
    """Every check that needs no weights loaded: folders, configs, tokenizer, the .bin layouts and shapes."""
    from transformers import AutoModelForCausalLM

    from components.adapters.peft_ext import lm_linear_targets
    from components.models.tokenizer import load_tokenizer

    lm_dir, vision_dir = Path(lm), Path(vision)
    if (gen_hlora is None) != (fusion is None):
        missing, given = ("--fusion", "--gen-hlora") if fusion is None else ("--gen-hlora", "--fusion")
        raise HealthGPTImportError(missing, "", f"required with {given}: the release's generation model loads "
                                   "gen_hlora_weights.bin, then fusion_layer_weights.bin")  # fmt: skip
    lm_cfg = _lm_config(lm_dir)
    vision_cfg = _vision_config(vision_dir)
    for option, path in (("--hlora", hlora), ("--gen-hlora", gen_hlora), ("--fusion", fusion)):
        if path is not None and not Path(path).is_file():
            raise HealthGPTImportError(option, path, "no such file")
    with torch.device("meta"):
        meta_lm = AutoModelForCausalLM.from_config(lm_cfg)
    modules = dict(meta_lm.named_modules())
    targets = {n: (int(modules[n].in_features), int(modules[n].out_features)) for n in lm_linear_targets(meta_lm)}
    lm_hidden, vision_hidden = int(lm_cfg.hidden_size), int(vision_cfg.hidden_size)
    try:
        tokenizer = load_tokenizer(lm_dir)
    except (OSError, ValueError, TypeError) as e:
        raise HealthGPTImportError("--lm", lm_dir, f"no tokenizer ({str(e).splitlines()[0][:200]})") from None

    files = {"comprehension": read_release_file("--hlora", hlora)}
    if gen_hlora is not None and fusion is not None:
        files["generation"] = read_release_file("--gen-hlora", gen_hlora)
        files["fusion"] = read_release_file("--fusion", fusion)
    shapes: dict[str, PluginShape] = {}
    for name, file in files.items():
        shape = check_layout(file, targets=targets, lm_hidden=lm_hidden, vision_hidden=vision_hidden,
                             fusion=name == "fusion")  # fmt: skip
        if shape is not None:
            shapes[name] = shape
    chosen = {"comprehension": alpha, "generation": gen_alpha}
    alphas = {t: float(a) if (a := chosen[t]) is not None else 2.0 * s.total_rank for t, s in shapes.items()}

    # the number of image-code tokens: from the files' vocabulary rows (tokenizer + codes + 3), else vq_codes / 8192
    n_tok = len(tokenizer)
    seen = [(f, k, int(v.shape[0])) for f in files.values() for k, v in f.vocabulary.items()]
    codes = seen[0][2] - n_tok - 3 if seen else (vq_codes or RELEASE_VQ_CODES)
    for file, key, rows in seen:
        if rows != seen[0][2]:
            raise file.fail(f"{PREFIX + key} has {rows} rows; {seen[0][0].option} has {seen[0][2]}")
        if codes < 1:
            raise file.fail(f"{PREFIX + key} has {rows} rows: not the --lm tokenizer's {n_tok} tokens plus image "
                            "codes and 3 special tokens")  # fmt: skip
    if vq_codes is not None and codes != vq_codes:
        raise HealthGPTImportError("--vq-codes", vq_codes, f"the files' vocabulary holds {codes} image codes")
    sources = [_config_dtype(lm_cfg), _config_dtype(vision_cfg)]
    sources += [t.dtype for f in files.values() for t in f.tensors.values()]
    out_dtype, lossless = _resolve_dtype(dtype, sources)
    return Release(lm_dir, vision_dir, lm_cfg, vision_cfg, tokenizer, targets, files, shapes, alphas, codes,
                   out_dtype, lossless)  # fmt: skip


def _load_checkpoints(release: Release) -> tuple[Any, Any]:
    """The LM and the CLIP vision tower in the output dtype; a checkpoint that lacks a weight is an error."""
    from transformers import AutoModelForCausalLM, CLIPVisionModel

    loaded = []
    kinds: list[tuple[str, Path, Any]] = [
        ("--lm", release.lm_dir, AutoModelForCausalLM),
        ("--vision", release.vision_dir, CLIPVisionModel),
    ]
    for option, folder, cls in kinds:
        pair: Any = cls.from_pretrained(
            str(folder), local_files_only=True, dtype=release.dtype, output_loading_info=True
        )
        model, info = pair
        missing = sorted(info["missing_keys"])
        if missing:
            raise HealthGPTImportError(option, folder, f"the checkpoint lacks {len(missing)} weights (first: "
                                       f"{missing[0]}): not a complete {'CLIP vision ' if option == '--vision' else ''}"
                                       "checkpoint")  # fmt: skip
        loaded.append(model)
    return loaded[0], loaded[1]


def _shared_vocabulary(lm_model: Any, release: Release) -> tuple[dict[str, bool], dict[str, float]]:
    """Give ``lm_model`` the release's vocabulary (see the module docstring); per task: exact? largest difference."""
    from transformers.tokenization_utils_base import AddedToken

    tokenizer, n_tok = release.tokenizer, len(release.tokenizer)
    n_rel = n_tok + release.codes + 3
    names = release_tokens(release.codes)
    added = tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in names], special_tokens=True)
    if added != len(names) or len(tokenizer) != n_rel:
        raise HealthGPTImportError("--lm", release.lm_dir, "its tokenizer already holds some of the release's tokens")
    _release_vocabulary(lm_model, n_tok, n_rel)
    embed, head = lm_model.get_input_embeddings().weight, lm_model.get_output_embeddings().weight
    base = {EMBED: embed.detach().clone(), HEAD: head.detach().clone()}
    shared = dict(base)
    for file in release.order:
        shared.update({k: v.to(release.dtype) for k, v in file.vocabulary.items()})
    exact: dict[str, bool] = {}
    difference: dict[str, float] = {}
    for task, loaded in release.task_files.items():
        rows = dict(base)
        for file in loaded:
            rows.update({k: v.to(release.dtype) for k, v in file.vocabulary.items()})
        difference[task] = max(float((rows[k].float() - shared[k].float()).abs().max()) for k in rows)
        exact[task] = difference[task] == 0.0 and release.lossless
    with torch.no_grad():
        embed.copy_(shared[EMBED])
        if head.data_ptr() != embed.data_ptr():
            head.copy_(shared[HEAD])
    return exact, difference


def import_healthgpt(
    *,
    lm: str | Path,
    vision: str | Path,
    hlora: str | Path,
    out: str | Path,
    gen_hlora: str | Path | None = None,
    fusion: str | Path | None = None,
    alpha: float | None = None,
    gen_alpha: float | None = None,
    vq_codes: int | None = None,
    dtype: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Convert the release into a medtune model folder ``out`` (see the module docstring); returns import.json.

    ``alpha``/``gen_alpha`` None: 2 x the plugin's total rank (every released config). ``vq_codes`` None: from the
    files' vocabulary rows, else 8192. ``dtype``: auto | float32 | bfloat16 | float16. A bad input raises
    :class:`HealthGPTImportError` before anything is written; ``progress`` hears one line once the inputs passed."""
    from components.models.tokenizer import ensure_vlm_tokens
    from components.models.vlm import MedVLM, VLMArgs, checkpoint_normalisation, make_projector
    from components.models.vocab import grow_vocabulary

    target = Path(out)
    if target.exists():
        raise HealthGPTImportError("--out", target, "already exists: name a new folder (nothing is overwritten)")
    with _quiet_transformers():
        release = check_release(lm=lm, vision=vision, hlora=hlora, gen_hlora=gen_hlora, fusion=fusion, alpha=alpha,
                                gen_alpha=gen_alpha, vq_codes=vq_codes, dtype=dtype)  # fmt: skip
        if progress is not None:
            names = ", ".join(f.path.name for f in release.order)
            dtype_name = str(release.dtype).removeprefix("torch.")
            progress(f"inputs match the release layout ({names}); loading the checkpoints ({dtype_name}) ...")
        lm_model, vision_model = _load_checkpoints(release)
    exact, difference = _shared_vocabulary(lm_model, release)
    n_rel = len(release.tokenizer)
    image_id = ensure_vlm_tokens(release.tokenizer)
    grow_vocabulary(lm_model, len(release.tokenizer), first_new=n_rel)  # the <image> row, at the mean

    lm_cfg, vision_cfg = release.lm_cfg, release.vision_cfg
    lm_hidden, vision_hidden = int(lm_cfg.hidden_size), int(vision_cfg.hidden_size)
    projectors = nn.ModuleDict({t: make_projector(vision_hidden, lm_hidden) for t in TASKS}).to(release.dtype)
    for task in TASKS:
        src = release.projector_source(task).tensors
        state = {k.removeprefix("model.mm_projector."): src[k].to(release.dtype) for k in PROJECTOR_KEYS}
        projectors[task].load_state_dict(state)
    args = VLMArgs(
        vision_hidden=vision_hidden, vision_layers=int(vision_cfg.num_hidden_layers),
        vision_heads=int(vision_cfg.num_attention_heads), image_size=int(vision_cfg.image_size),
        patch_size=int(vision_cfg.patch_size), merge=1, channels=int(vision_cfg.num_channels), lm_hidden=lm_hidden,
        lm_layers=int(lm_cfg.num_hidden_layers), lm_heads=int(lm_cfg.num_attention_heads),
        lm_intermediate=int(getattr(lm_cfg, "intermediate_size", 4 * lm_hidden)),
        max_positions=int(getattr(lm_cfg, "max_position_embeddings", 2048)), comp_layer=SELECT_LAYER["comprehension"],
        gen_layer=SELECT_LAYER["generation"], lm_path=str(release.lm_dir), vision_path=str(release.vision_dir),
        dtype=str(release.dtype).removeprefix("torch."), **checkpoint_normalisation(str(release.vision_dir)),
        chat_format="phi3_instruct",  # the release's conversation template (llava/conversation.py)
    )  # fmt: skip
    model = MedVLM(vision_model, projectors, lm_model, args, image_id, release.tokenizer)
    provenance = _provenance(release, image_id=image_id, n_rel=n_rel, exact=exact, difference=difference)
    with _quiet_transformers():
        _write(model, target, release, provenance)
    return provenance


def _provenance(
    release: Release, *, image_id: int, n_rel: int, exact: dict[str, bool], difference: dict[str, float]
) -> dict[str, Any]:
    """The import.json content: sources (sha256), the release's settings, the vocabulary and what is exact."""
    plugins = {
        task: {
            "hlora_r": s.total_rank, "hlora_nums": s.experts, "hlora_alpha": release.alphas[task],
            "scaling": release.alphas[task] / (s.total_rank // s.experts),
            "mm_vision_select_layer": SELECT_LAYER[task], "mm_vision_select_feature": "patch",
            "mm_projector_type": "mlp2x_gelu", "folder": str(Path(PLUGINS) / task),
        }
        for task, s in release.shapes.items()
    }  # fmt: skip
    files = {
        f.option.lstrip("-"): {"file": f.path.name, "path": str(f.path), "sha256": f.sha256, "keys": len(f.tensors)}
        for f in release.order
    }
    return {
        "format": FORMAT,
        "version": VERSION,
        "sources": {
            **files,
            "lm": {"path": str(release.lm_dir), "model_type": release.lm_cfg.model_type},
            "vision": {"path": str(release.vision_dir), "model_type": release.vision_cfg.model_type},
        },
        "release": {
            "plugins": plugins,
            "targets": sorted({m.rsplit(".", 1)[-1] for m in release.targets}),
            "vq_idx_nums": release.codes,
            "image_tokens": {
                "first_id": n_rel - release.codes - 3,
                "count": release.codes + 3,
                "names": ["<start_index>", "<idx_0> ..", "<end_index>", "<pixel_newline>"],
            },
            "conversation": CONVERSATION,
            "image_preprocess": PREPROCESS,
        },  # fmt: skip
        "vocabulary": {
            "release_rows": n_rel,
            "image_token_id": image_id,
            "shared_from": [f.option for f in release.order if f.vocabulary] or ["--lm (mean rows)"],
        },
        "projectors": {t: release.projector_source(t).option for t in TASKS},
        "dtype": str(release.dtype).removeprefix("torch."),
        "lossless": release.lossless,
        "exact": exact,
        "vocabulary_max_abs_difference": difference,
    }


def _write(model: Any, target: Path, release: Release, provenance: dict[str, Any]) -> None:
    """Everything into a hidden sibling folder, renamed to ``target`` at the end (removed on any failure)."""
    from peft import get_peft_model

    import components.adapters.hlora  # noqa: F401  (registers "hlora" with peft)
    from components.adapters.hlora import HLoraConfig

    created = next((p for p in reversed(target.parents) if not p.exists()), None)  # removed again on failure
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.importing-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        model.save(tmp)
        processor = release.vision_dir / "preprocessor_config.json"
        if processor.is_file():
            shutil.copy2(processor, tmp / "vision" / processor.name)
        peft_lm: Any = None
        for task, shape in release.shapes.items():
            config = HLoraConfig(
                r=shape.total_rank // shape.experts, num_experts=shape.experts, lora_alpha=release.alphas[task],
                lora_dropout=0.0, target_modules=sorted(release.targets),
            )  # fmt: skip
            if peft_lm is None:
                peft_lm = get_peft_model(model.lm, config, adapter_name=task)
            else:
                peft_lm.add_adapter(task, config)
            params = dict(peft_lm.named_parameters())
            with torch.no_grad():
                for module in release.targets:
                    for part, ours in LORA_PARTS.items():
                        source = release.files[task].tensors[f"{module}.{part}.weight"]
                        params[f"{PREFIX}{module}.{ours}.{task}"].copy_(source)
        peft_lm.save_pretrained(str(tmp / PLUGINS), save_embedding_layers=False)  # the vocabulary is in lm/
        (tmp / PLUGINS / "README.md").unlink(missing_ok=True)
        (tmp / "import.json").write_text(json.dumps(provenance, indent=2) + "\n")
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
