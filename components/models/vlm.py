"""MedVLM: a LLaVA-style VLM with HealthGPT's hierarchical visual perception (METHODS.md §1).

A CLIP vision encoder, one 2-layer GELU MLP projector per task (vision width -> LM width) and a causal LM. The
collator expands each ``<image>`` into ``num_image_tokens`` placeholder ids; :meth:`MedVLM.embed_inputs` replaces
their embeddings with the projected patch features (CLS dropped; with ``merge`` = m, each m x m block of
neighbouring patches is concatenated into one token first, Qwen2-VL's patch merger: the tiny default's 64 px image
is 8 x 8 patches of 8 px, merged 4 x 4 into 4 LM tokens, which the from-scratch LM learns to read far sooner).
**HVP**: one vision forward with
``output_hidden_states=True`` gives every level; a comprehension example reads ``hidden_states[comp_layer]``
(default -2, the penultimate: abstract features) through ``projectors["comprehension"]``, a generation example
``hidden_states[gen_layer]`` (default 1, the first encoder layer's output: concrete features) through
``projectors["generation"]``. Mixed-task batches work; each projector runs only on its own examples, so a
single-task batch leaves the other projector without a gradient (under DDP use ``find_unused_parameters=True``
or the trainer's own handling).

Build (tiny from config, or from local checkpoints), run, save and load::

    tok = train_tokenizer(texts)
    model = build_vlm(VLMArgs(), tok)                       # or VLMArgs(lm_path="/models/phi-3", vision_path=...)
    add_image_code_tokens(tok, 512); model.resize_token_embeddings_mean(len(tok))
    out = model(**batch)                                     # batch from components.models.collate.VLMCollator
    model.save(folder); model = MedVLM.load(folder)          # model.tokenizer comes back too

Choices where METHODS.md is silent: the tiny LM is untied (input and output rows train separately, as in Phi-3);
all parameters require grad after building (the trainer freezes per stage); ``lm_path``/``vision_path`` override
the tiny widths (the projectors follow the loaded widths); a hub id is accepted only if it is already in the local
Hugging Face cache; nothing is downloaded. The folder layout of :meth:`MedVLM.save` is ``vlm.json`` (format, args,
image token id), ``lm/`` and ``vision/`` (``save_pretrained``, safetensors), ``projectors.safetensors`` and the
tokenizer files, so ``AutoModelForCausalLM.from_pretrained(folder / "lm")`` also works alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import (
    AutoModelForCausalLM,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from components.data.records import TASKS
from components.models.tokenizer import ensure_vlm_tokens, load_tokenizer, save_tokenizer
from components.models.vocab import grow_vocabulary

FORMAT = "medtune.vlm"
FORMAT_VERSION = 1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class VLMArgs:
    """Shape of the VLM. The tiny defaults build in well under a second on CPU."""

    vision_hidden: int = 64  # CLIP width
    vision_layers: int = 3  # CLIP encoder layers (hidden_states has vision_layers + 1 entries)
    vision_heads: int = 4
    image_size: int = 64  # pixels per side
    patch_size: int = 8  # -> (64/8)^2 = 64 patches
    merge: int = 1  # m x m patches -> one image token (before the projector); 1: none. The config's default is 4
    channels: int = 1  # 1 = grey (CLIP's conv takes any channel count), 3 = RGB
    lm_hidden: int = 128
    lm_layers: int = 4
    lm_heads: int = 4
    lm_intermediate: int = 344
    max_positions: int = 512
    comp_layer: int = -2  # HVP: comprehension reads hidden_states[comp_layer] (penultimate)
    gen_layer: int = 1  # HVP: generation reads hidden_states[gen_layer] (shallow)
    lm_path: str | None = None  # local HF checkpoint folder (or a hub id already in the local cache)
    vision_path: str | None = None  # local CLIP (vision) checkpoint folder
    dtype: str = "float32"  # float32 | bfloat16 | float16
    # pixel normalisation (x - mean) / std per channel: the tiny encoder's 0.5 / 0.5, or a pretrained vision
    # checkpoint's own image_mean / image_std (read from its preprocessor_config.json by build_vlm)
    image_mean: tuple[float, ...] = (0.5,)
    image_std: tuple[float, ...] = (0.5,)
    chat_format: str = "medtune"  # components.models.collate.CHAT_FORMATS: "phi3_instruct" for imported HealthGPT


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(DTYPES)}")
    return DTYPES[name]


def make_projector(vision_width: int, lm_width: int, merge: int = 1) -> nn.Sequential:
    """LLaVA's mlp2x_gelu: Linear -> GELU -> Linear, over ``merge``^2 concatenated patch features."""
    return nn.Sequential(nn.Linear(vision_width * merge**2, lm_width), nn.GELU(), nn.Linear(lm_width, lm_width))


def merge_patches(features: Tensor, merge: int) -> Tensor:
    """(B, g*g, C) patch features in row-major order -> (B, (g/m)^2, m*m*C): each m x m block of neighbouring
    patches becomes one token (its features concatenated row by row), blocks in row-major order. The patch merger
    of Qwen2-VL / InternVL's pixel shuffle: the encoder keeps its fine patches, the LM reads m^2 fewer tokens."""
    if merge == 1:
        return features
    b, n, c = features.shape
    g = math.isqrt(n)
    if g * g != n or g % merge:
        raise ValueError(
            f"cannot merge {merge}x{merge} patches of a {n}-patch grid (needs a square grid divisible by {merge})"
        )
    blocks = features.reshape(b, g // merge, merge, g // merge, merge, c).permute(0, 1, 3, 2, 4, 5)
    return blocks.reshape(b, (g // merge) ** 2, merge * merge * c)


def _not_local(kind: str, path: str, error: Exception) -> FileNotFoundError:
    if path.startswith(("/", ".", "~")) or "\\" in path:
        return FileNotFoundError(f"{kind} {path!r}: no such checkpoint folder")
    return FileNotFoundError(
        f"{kind} {path!r} is not a local checkpoint folder and is not in the local Hugging Face cache. medtune never "
        f"downloads weights at run time: download it first (e.g. `hf download {path} --local-dir <folder>`) and pass "
        f"that local folder as the path. ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    )


def load_local_lm(path: str, dtype: torch.dtype) -> PreTrainedModel:
    """``AutoModelForCausalLM`` from a local folder (or the local cache); a bare hub id fails with a clear message."""
    try:
        return AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as e:
        if Path(path).is_dir():
            raise
        raise _not_local("lm_path", path, e) from e


def load_local_vision(path: str, dtype: torch.dtype) -> CLIPVisionModel:
    try:
        return CLIPVisionModel.from_pretrained(path, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as e:
        if Path(path).is_dir():
            raise
        raise _not_local("vision_path", path, e) from e


def checkpoint_normalisation(vision_path: str) -> dict[str, tuple[float, ...]]:
    """``image_mean`` / ``image_std`` of a vision checkpoint's preprocessor_config.json (CLIP's own), or {}."""
    for name in ("preprocessor_config.json", "processor_config.json"):
        file = Path(vision_path) / name
        if file.is_file():
            meta = json.loads(file.read_text())
            meta = meta.get("image_processor", meta)
            if "image_mean" in meta and "image_std" in meta:
                return {"image_mean": tuple(map(float, meta["image_mean"])),
                        "image_std": tuple(map(float, meta["image_std"]))}  # fmt: skip
    return {}


def _side(value: object) -> int:
    """A config's image/patch size: an int or an (h, w) pair (square images only)."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"only square images and patches are supported, got {value}")
        value = value[0]
    if not isinstance(value, int):
        raise ValueError(f"expected an integer size, got {value!r}")
    return value


class MedVLM(nn.Module):
    """Vision encoder + per-task projectors + causal LM. See the module docstring."""

    def __init__(
        self,
        vision: CLIPVisionModel,
        projectors: nn.ModuleDict,
        lm: PreTrainedModel,
        args: VLMArgs,
        image_token_id: int,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        super().__init__()
        self.vision = vision
        self.projectors = projectors
        self.lm = lm
        self.args = args
        self.image_token_id = image_token_id
        self.tokenizer = tokenizer  # a plain attribute (not a module): saved beside the weights
        depth = int(vision.config.num_hidden_layers) + 1
        for name, idx in (("comp_layer", args.comp_layer), ("gen_layer", args.gen_layer)):
            if not -depth <= idx < depth:
                raise ValueError(
                    f"{name}={idx} is outside hidden_states of a {depth - 1}-layer encoder ({depth} entries)"
                )
        missing = set(TASKS) - set(projectors.keys())
        if missing:
            raise ValueError(f"projectors lack {sorted(missing)}; one projector per task in {TASKS}")

    input_kind = "tensor"  # the collator takes the normalised pixel tensors of make_image_loader
    # projectors under torch.utils.checkpoint in training (components.models.memory, train.gradient_checkpointing)
    checkpoint_projectors = False

    # -- shapes -------------------------------------------------------------------------------------------------
    @property
    def max_length(self) -> int:
        return self.args.max_positions

    @property
    def family_name(self) -> str:
        return "medtune"

    def collator(
        self,
        load_image: Any,
        *,
        target_codes: Any = None,
        max_length: int | None = None,
        with_features: bool = False,
    ) -> Any:
        """The training/generation collator of this model (the tiny model's fixed template, see collate.py)."""
        from components.models.collate import VLMCollator

        if self.tokenizer is None:
            raise ValueError("the model has no tokenizer")
        return VLMCollator(
            self.tokenizer, self.num_image_tokens, load_image, target_codes=target_codes,
            max_length=max_length or self.args.max_positions, with_features=with_features,
            chat_format=self.args.chat_format,
        )  # fmt: skip

    def position_ids(self, input_ids: Tensor, attention_mask: Tensor, **images: Any) -> Tensor | None:
        return None

    @property
    def image_size(self) -> int:
        return _side(self.vision.config.image_size)

    @property
    def channels(self) -> int:
        return int(self.vision.config.num_channels)

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // _side(self.vision.config.patch_size) // self.args.merge) ** 2

    @property
    def lm_hidden(self) -> int:
        return int(self.lm.config.hidden_size)

    # -- forward ------------------------------------------------------------------------------------------------
    def image_features(self, pixel_values: Tensor, tasks: list[str]) -> Tensor:
        """(B, C, H, W) -> (B, N, lm_hidden); example i uses the level and projector of ``tasks[i]`` (HVP)."""
        if len(tasks) != pixel_values.shape[0]:
            raise ValueError(f"{len(tasks)} tasks for {pixel_values.shape[0]} images")
        unknown = sorted(set(tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
        vision_dtype = next(self.vision.parameters()).dtype
        hidden = self.vision(pixel_values=pixel_values.to(vision_dtype), output_hidden_states=True).hidden_states
        level = {"comprehension": self.args.comp_layer, "generation": self.args.gen_layer}
        out: Tensor | None = None
        for task in TASKS:
            rows = [i for i, t in enumerate(tasks) if t == task]
            if not rows:
                continue
            idx = torch.tensor(rows, device=pixel_values.device)
            patches = merge_patches(hidden[level[task]][idx, 1:], self.args.merge)  # [:, 1:] drops CLS
            if self.checkpoint_projectors and self.training and torch.is_grad_enabled():
                feats = checkpoint(self.projectors[task], patches, use_reentrant=False)
            else:
                feats = self.projectors[task](patches)
            if out is None:
                out = feats.new_zeros(len(tasks), *feats.shape[1:])
            out = out.index_copy(0, idx, feats)
        assert out is not None  # tasks is non-empty: checked above through pixel_values' batch size
        return out

    def embed_inputs(
        self, input_ids: Tensor, pixel_values: Tensor | None, tasks: list[str], image_counts: Any = None
    ) -> Tensor:
        """Token embeddings with the image placeholders replaced by image features (0 or N placeholders a row)."""
        embeds = self.lm.get_input_embeddings()(input_ids)
        is_image = input_ids == self.image_token_id
        counts = is_image.sum(dim=1)
        bad = [(i, int(c)) for i, c in enumerate(counts.tolist()) if c not in (0, self.num_image_tokens)]
        if bad:
            raise ValueError(
                f"each row needs 0 or {self.num_image_tokens} <image> placeholder tokens; got (row, count) {bad}"
            )
        with_image = [i for i, c in enumerate(counts.tolist()) if c]
        if not with_image:
            return embeds
        if pixel_values is None:
            raise ValueError("input_ids contain <image> placeholders but pixel_values is None")
        idx = torch.tensor(with_image, device=input_ids.device)
        feats = self.image_features(pixel_values[idx], [tasks[i] for i in with_image])
        return embeds.masked_scatter(is_image.unsqueeze(-1), feats.to(embeds.dtype))

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        pixel_values: Tensor | None,
        tasks: list[str],
        labels: Tensor | None = None,
        image_counts: Any = None,
        **lm_kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """The LM's output (``loss`` when ``labels`` are given, ``logits``); extra kwargs go to the LM.
        ``image_counts`` (one image or none per record here) is accepted for the callers shared with HFVLM."""
        embeds = self.embed_inputs(input_ids, pixel_values, tasks)
        return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **lm_kwargs)

    # -- vocabulary ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def resize_token_embeddings_mean(self, new_vocab_size: int, first_new: int | None = None) -> None:
        """Rows ``[first_new, new_vocab_size)`` at the mean of the rows before (growing only past the padding);
        see :func:`components.models.vocab.grow_vocabulary`."""
        grow_vocabulary(self.lm, new_vocab_size, first_new)

    # -- persistence --------------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write the model (safetensors + JSON, no pickle) and the tokenizer, if any, into ``folder``."""
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(str(path / "lm"))
        self.vision.save_pretrained(str(path / "vision"))
        save_file(
            {k: v.contiguous() for k, v in self.projectors.state_dict().items()}, str(path / "projectors.safetensors")
        )
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "args": asdict(self.args),
            "image_token_id": self.image_token_id,
            "dtype": str(next(self.lm.parameters()).dtype).removeprefix("torch."),
        }
        (path / "vlm.json").write_text(json.dumps(meta, indent=2) + "\n")
        if self.tokenizer is not None:
            save_tokenizer(self.tokenizer, path)
        return path

    @classmethod
    def load(cls, folder: str | Path, dtype: str | None = None) -> MedVLM:
        """Load what :meth:`save` wrote; ``dtype`` overrides the saved one."""
        path = Path(folder)
        meta_file = path / "vlm.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{path} holds no vlm.json: not a folder written by MedVLM.save")
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{meta_file}: expected format {FORMAT} v{FORMAT_VERSION}, got {meta.get('format')} "
                f"v{meta.get('version')}"
            )
        saved = dict(meta["args"])
        for key in ("image_mean", "image_std"):
            if key in saved:
                saved[key] = tuple(saved[key])
        args = VLMArgs(**saved)
        dt = torch_dtype(dtype or meta["dtype"])
        lm = AutoModelForCausalLM.from_pretrained(str(path / "lm"), local_files_only=True, dtype=dt)
        vision = CLIPVisionModel.from_pretrained(str(path / "vision"), local_files_only=True, dtype=dt)
        projectors = nn.ModuleDict(
            {t: make_projector(int(vision.config.hidden_size), int(lm.config.hidden_size), args.merge) for t in TASKS}
        )
        projectors.load_state_dict(load_file(str(path / "projectors.safetensors")))
        tokenizer = load_tokenizer(path) if (path / "tokenizer_config.json").is_file() else None
        model = cls(vision, projectors.to(dt), lm, args, int(meta["image_token_id"]), tokenizer)
        return model.eval()


def build_vlm(args: VLMArgs, tokenizer: PreTrainedTokenizerBase) -> MedVLM:
    """A MedVLM whose vocabulary covers ``tokenizer`` (which gains ``<image>`` and a pad token if it lacks them).

    Tiny LM/encoder from ``args`` unless ``lm_path``/``vision_path`` name local checkpoints. A loaded LM whose
    vocabulary is smaller than ``len(tokenizer)`` grows with mean-initialised rows; a larger one (padded
    checkpoints) is kept. Seed torch beforehand for a reproducible init."""
    image_token_id = ensure_vlm_tokens(tokenizer)
    dtype = torch_dtype(args.dtype)
    if args.vision_path:
        vision = load_local_vision(args.vision_path, dtype)
        norm = checkpoint_normalisation(args.vision_path)
        if norm:
            args = replace(args, image_mean=norm["image_mean"], image_std=norm["image_std"])
    else:
        vision = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=args.vision_hidden,
                intermediate_size=4 * args.vision_hidden,
                num_hidden_layers=args.vision_layers,
                num_attention_heads=args.vision_heads,
                image_size=args.image_size,
                patch_size=args.patch_size,
                num_channels=args.channels,
            )
        )
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    lm: PreTrainedModel
    if args.lm_path:
        lm = load_local_lm(args.lm_path, dtype)
    else:
        lm = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(tokenizer),
                hidden_size=args.lm_hidden,
                intermediate_size=args.lm_intermediate,
                num_hidden_layers=args.lm_layers,
                num_attention_heads=args.lm_heads,
                num_key_value_heads=args.lm_heads,
                max_position_embeddings=args.max_positions,
                tie_word_embeddings=False,
                **ids,
            )
        )
    for key, value in ids.items():
        setattr(lm.config, key, value)
        if lm.generation_config is not None:
            setattr(lm.generation_config, key, value)
    projectors = nn.ModuleDict(
        {t: make_projector(int(vision.config.hidden_size), int(lm.config.hidden_size), args.merge) for t in TASKS}
    )
    model = MedVLM(vision, projectors, lm, args, image_token_id, tokenizer)
    if len(tokenizer) > model.lm.get_input_embeddings().weight.shape[0]:  # type: ignore[index]
        model.resize_token_embeddings_mean(len(tokenizer))
    return model.to(dtype)
