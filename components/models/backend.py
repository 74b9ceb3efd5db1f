"""One entry point for the two model backends behind medtune's callers (DESIGN.md "Model backends").

    model = load_vlm(folder)          # a MedVLM.save folder (tiny / assembled) or an HFVLM.save folder (whole HF VLM)
    collate = model.collator(image_loader(model, store), target_codes=..., max_length=...)

Both backends expose what the trainer, evaluation, safety, the pyfunc model and the federated client use: ``vision``,
``projectors`` (one per task), ``lm`` (the causal LM the adapters wrap), ``tokenizer``, ``collator(...)``,
``embed_inputs``, ``position_ids``, ``resize_token_embeddings_mean``, ``save``, ``max_length`` and ``input_kind``
("tensor": the collator takes normalised pixel tensors; "pil": PIL images, the checkpoint's processor does the rest).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def model_format(folder: str | Path) -> str:
    """The ``format`` of a saved base folder's vlm.json (FileNotFoundError when there is none)."""
    meta = Path(folder) / "vlm.json"
    if not meta.is_file():
        raise FileNotFoundError(f"{folder} holds no vlm.json: not a medtune model folder")
    return str(json.loads(meta.read_text()).get("format"))


def load_vlm(folder: str | Path, dtype: str | None = None) -> Any:
    """A MedVLM or an HFVLM from its saved folder, by the format in its vlm.json."""
    from components.models.hf.model import FORMAT as HF_FORMAT

    if model_format(folder) == HF_FORMAT:
        from components.models.hf.model import HFVLM

        return HFVLM.load(folder, dtype=dtype)
    from components.models.vlm import MedVLM

    return MedVLM.load(folder, dtype=dtype)


def image_loader(model: Any, store: Any) -> Any:
    """The image loader ``model.collator`` takes, from a :class:`components.training.data.ImageStore` (or any
    object with ``vision(path)`` -> tensor and ``image(path)`` -> PIL image)."""
    if getattr(model, "input_kind", "tensor") == "pil":
        return store.image
    norm = renormaliser(model)
    return store.vision if norm is None else (lambda path: norm(store.vision(path)))


def renormaliser(model: Any) -> Any:
    """None for the tiny encoder's ``(x - 0.5) / 0.5``; else a function from that to a pretrained vision
    checkpoint's own ``(x - mean) / std`` (its preprocessor_config.json, kept in ``model.args``)."""
    args = getattr(model, "args", None)
    mean, std = tuple(getattr(args, "image_mean", (0.5,))), tuple(getattr(args, "image_std", (0.5,)))
    if mean == (0.5,) and std == (0.5,):
        return None
    import torch

    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return lambda pixels: (pixels * 0.5 + 0.5 - m) / s


def store_size(model: Any, image_size: int, channels: int) -> tuple[int, int]:
    """(size, channels) of the image store next to ``model``: the tiny model's own input shape; for a whole HF VLM
    (whose processor sizes its inputs) the given ones, which the VQ image tokenizer's targets use."""
    if getattr(model, "input_kind", "tensor") == "pil":
        return image_size, channels
    return int(model.image_size), int(model.channels)
