"""Whole Hugging Face VLMs as medtune's base model (issue 16): families, the model wrapper, the chat collator.

    from components.models.hf import HFVLM, check_checkpoint, resolve_checkpoint
    folder = resolve_checkpoint("llava-hf/llava-1.5-7b-hf")   # a local folder, or a hub id already in the HF cache
    check_checkpoint(folder)                                    # seconds: config + processor, family supported
    model = HFVLM.from_checkpoint(folder, dtype="bfloat16")

Nothing is downloaded: a hub id that is not in the local cache is an error that says how to download it first.
"""

from __future__ import annotations

from pathlib import Path

from components.models.hf import gemma3, idefics3, llava, qwen2_5_vl  # noqa: F401  (register the families)
from components.models.hf.family import FAMILIES, Family, family_for, supported
from components.models.hf.model import HFVLM

__all__ = [
    "FAMILIES",
    "HFVLM",
    "CheckpointError",
    "Family",
    "check_checkpoint",
    "family_for",
    "resolve_checkpoint",
    "supported",
]


class CheckpointError(ValueError):
    """A model path that is no usable VLM checkpoint; the message is one line naming the path."""


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", ".", "~")) or "\\" in value or value.count("/") != 1


def resolve_checkpoint(value: str, key: str = "model.path") -> Path:
    """A local folder for ``value``: the folder itself, or the snapshot of a hub id in the local HF cache."""
    path = Path(value).expanduser()
    if path.is_dir():
        return path
    if _looks_like_path(value) or path.exists():
        raise CheckpointError(f"{key}: {value!r} is not a folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(value, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise CheckpointError(
            f"{key}: {value!r} is neither a local folder nor in the local Hugging Face cache; medtune never downloads "
            f"weights: run `hf download {value} --local-dir <folder>` first and pass that folder"
        ) from None


def check_checkpoint(folder: Path, key: str = "model.path") -> str:
    """Seconds-cheap checks before any data work; returns the family name. Raises CheckpointError."""
    import json

    cfg_file = folder / "config.json"
    if (folder / "vlm.json").is_file():
        meta = json.loads((folder / "vlm.json").read_text())
        return str(meta.get("family") or "medtune")
    if not cfg_file.is_file():
        raise CheckpointError(f"{key}: {folder} holds no config.json: not a Hugging Face model folder")
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{key}: {cfg_file} is not readable JSON ({e})") from None
    for cls in FAMILIES.values():
        if model_type in cls.model_types:
            break
    else:
        raise CheckpointError(
            f"{key}: {folder} is a {model_type!r} model, not a supported VLM family; supported: {supported()}"
        )
    weights = list(folder.glob("*.safetensors")) + list(folder.glob("*.safetensors.index.json"))
    if not weights:
        raise CheckpointError(f"{key}: {folder} holds no *.safetensors weights (medtune loads safetensors only)")
    if not any((folder / f).is_file() for f in ("processor_config.json", "preprocessor_config.json")):
        raise CheckpointError(f"{key}: {folder} holds no processor (preprocessor_config.json); save it with the model")
    return cls.name
