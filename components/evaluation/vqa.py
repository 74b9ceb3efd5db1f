"""VQA and generation scores from predictions, against the majority-answer and copy-the-input baselines
(METHODS.md §1: HealthGPT reports closed/open VQA and SSIM/PSNR; its release has no evaluation code; issue 4,
item 6).

Pure functions over records (dicts as in ``records.jsonl``) and predictions; the model-driven part is
:mod:`components.evaluation.report`::

    from components.evaluation.vqa import MajorityBaseline, score_vqa, score_images
    baseline = MajorityBaseline.fit(train_records)
    metrics, rows = score_vqa(test_records, predicted_answers, baseline)
    metrics["closed/accuracy"], metrics["closed/majority_template"], rows[0]["correct"]

Definitions (what the paper leaves open, and the choices made here):

- **Normalisation** (:func:`normalize_answer`): lower case, punctuation removed, the articles a/an/the dropped,
  white space collapsed (the SQuAD convention). Closed questions score by exact match of normalised answers.
- **Open answers** score by *token recall*: the fraction of the reference's normalised tokens (as a multiset) found
  in the prediction's. Captions are scored the same way, reported apart ("caption/recall").
- **Majority baselines**, fitted on the TRAIN split only: (a) per question type (``meta.question_type`` when the
  source gives it, as VQA-RAD and the phantoms do, else the record's kind), the most frequent normalised train
  answer; (b) per normalised question template (the question text without ``<image>``, normalised), the most
  frequent train answer to that exact question, falling back to (a) for a question never seen in training. Both
  are reported overall and per group; ties break alphabetically, so the baseline is deterministic.
- **Groups**: every metric also per ``source``, ``modality`` and question type (``question_type``), keys like
  ``closed/accuracy/modality=CT``.
- **Images** (:func:`score_images`): SSIM and PSNR (components.evaluation.image_metrics) of the generated images
  against the targets, per kind and input modality (a modality_conversion record with a CT input is CT->MRI in the
  phantom corpus), next to the copy-the-input baseline (for super-resolution the input *is* the bicubic upsampling
  of the low-resolution image, so that baseline is the bicubic one) and the VQ reconstruction ceiling (the target
  through encode -> decode: no generated image can score above what the codes can express).
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from components.evaluation.image_metrics import psnr_per_image, ssim_per_image

Record = Mapping[str, Any]
GROUP_KEYS = ("source", "modality", "question_type")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces."""
    text = str(text).lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def token_recall(prediction: str, reference: str) -> float:
    """Fraction of the reference's tokens (multiset) present in the prediction; 1.0 for an empty reference."""
    ref = Counter(answer_tokens(reference))
    if not ref:
        return 1.0
    pred = Counter(answer_tokens(prediction))
    return sum((ref & pred).values()) / sum(ref.values())


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


def question_of(record: Record) -> str:
    """The record's (first) human turn without the image placeholder."""
    return str(record["conversations"][0]["value"]).replace("<image>", " ").strip()


def reference_of(record: Record) -> str:
    turns = record["conversations"]
    return str(turns[1]["value"]) if len(turns) > 1 else ""


def question_template(record: Record) -> str:
    return normalize_answer(question_of(record))


def question_type(record: Record) -> str:
    meta = record.get("meta") or {}
    return str(meta.get("question_type") or record.get("kind", "unknown"))


def _majority(counter: Counter[str]) -> str:
    return min(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0]


@dataclass
class MajorityBaseline:
    """Most frequent normalised TRAIN answer per question type and per normalised question (see module docstring)."""

    by_type: dict[str, str] = field(default_factory=dict)
    by_template: dict[str, str] = field(default_factory=dict)
    by_kind: dict[str, str] = field(default_factory=dict)

    @classmethod
    def fit(cls, train_records: Iterable[Record]) -> MajorityBaseline:
        types: dict[str, Counter[str]] = defaultdict(Counter)
        templates: dict[str, Counter[str]] = defaultdict(Counter)
        kinds: dict[str, Counter[str]] = defaultdict(Counter)
        for r in train_records:
            if r.get("task", "comprehension") != "comprehension" or len(r["conversations"]) < 2:
                continue
            answer = normalize_answer(reference_of(r))
            types[question_type(r)][answer] += 1
            templates[question_template(r)][answer] += 1
            kinds[str(r.get("kind"))][answer] += 1
        return cls(
            by_type={k: _majority(c) for k, c in types.items()},
            by_template={k: _majority(c) for k, c in templates.items()},
            by_kind={k: _majority(c) for k, c in kinds.items()},
        )

    def for_type(self, record: Record) -> str:
        return self.by_type.get(question_type(record)) or self.by_kind.get(str(record.get("kind")), "")

    def for_template(self, record: Record) -> str:
        return self.by_template.get(question_template(record)) or self.for_type(record)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def score_vqa(
    records: Sequence[Record], predictions: Sequence[str], baseline: MajorityBaseline
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics (flat dict) and one row per record (JSONL-able) for comprehension ``records`` and their predicted
    answers. Keys: ``closed/{accuracy,majority_type,majority_template,n}``, ``open/{recall,majority_type,
    majority_template,n}``, ``caption/{recall,n}``, and each of them per group (``.../source=phantom``)."""
    if len(records) != len(predictions):
        raise ValueError(f"{len(records)} records but {len(predictions)} predictions")
    rows: list[dict[str, Any]] = []
    for r, pred in zip(records, predictions, strict=True):
        ref = reference_of(r)
        by_type, by_template = baseline.for_type(r), baseline.for_template(r)
        kind = str(r.get("kind"))
        part = "closed" if kind == "vqa_closed" else "caption" if kind == "caption" else "open"
        score = exact_match if part == "closed" else token_recall
        rows.append(
            {
                "id": r.get("id"),
                "part": part,
                "source": r.get("source"),
                "modality": r.get("modality"),
                "question_type": question_type(r),
                "question": question_of(r),
                "reference": ref,
                "prediction": pred,
                "score": float(score(pred, ref)),
                "majority_type": by_type,
                "majority_type_score": float(score(by_type, ref)),
                "majority_template": by_template,
                "majority_template_score": float(score(by_template, ref)),
            }
        )
    metrics: dict[str, float] = {}
    main_name = {"closed": "accuracy", "open": "recall", "caption": "recall"}
    for part in ("closed", "open", "caption"):
        mine = [row for row in rows if row["part"] == part]
        if not mine:
            continue
        groups: dict[str, list[dict[str, Any]]] = {"": mine}
        for key in GROUP_KEYS:
            for row in mine:
                groups.setdefault(f"/{key}={row[key]}", []).append(row)
        for suffix, members in groups.items():
            metrics[f"{part}/{main_name[part]}{suffix}"] = _mean([m["score"] for m in members])
            metrics[f"{part}/n{suffix}"] = float(len(members))
            if part != "caption":
                metrics[f"{part}/majority_type{suffix}"] = _mean([m["majority_type_score"] for m in members])
                metrics[f"{part}/majority_template{suffix}"] = _mean([m["majority_template_score"] for m in members])
    return metrics, rows


def generation_group(record: Record) -> str:
    """ "<kind>/<input modality>", e.g. "modality_conversion/CT" (CT->MRI in the phantom corpus)."""
    return f"{record.get('kind')}/{record.get('modality')}"


def score_images(
    records: Sequence[Record],
    generated: Tensor,
    targets: Tensor,
    inputs: Tensor,
    reconstructed: Tensor | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """SSIM/PSNR of ``generated`` vs ``targets`` ((N, C, H, W) in [0, 1]), with the copy-the-input baseline
    (``inputs``, already at the target size) and the VQ ceiling (``reconstructed`` targets), overall, per kind
    and per kind/input modality. Keys: ``generation/ssim``, ``generation/psnr``, ``generation/copy_ssim``,
    ``generation/copy_psnr``, ``generation/vq_ceiling_ssim``, ... and the same with ``/<kind>`` and
    ``/<kind>/<modality>`` appended."""
    n = len(records)
    if not n:
        return {}, []
    if not generated.shape[0] == targets.shape[0] == inputs.shape[0] == n:
        raise ValueError(
            f"{n} records, {generated.shape[0]} generated, {targets.shape[0]} targets, {inputs.shape[0]} inputs"
        )
    values = {
        "ssim": ssim_per_image(generated, targets).tolist(),
        "psnr": psnr_per_image(generated, targets, max_db=100.0).tolist(),
        "copy_ssim": ssim_per_image(inputs, targets).tolist(),
        "copy_psnr": psnr_per_image(inputs, targets, max_db=100.0).tolist(),
    }
    if reconstructed is not None:
        values["vq_ceiling_ssim"] = ssim_per_image(reconstructed, targets).tolist()
        values["vq_ceiling_psnr"] = psnr_per_image(reconstructed, targets, max_db=100.0).tolist()
    rows = [
        {"id": r.get("id"), "kind": r.get("kind"), "group": generation_group(r), **{k: v[i] for k, v in values.items()}}
        for i, r in enumerate(records)
    ]
    groups: dict[str, list[int]] = {"": list(range(n))}
    for i, r in enumerate(records):
        groups.setdefault(f"/{r.get('kind')}", []).append(i)
        groups.setdefault(f"/{generation_group(r)}", []).append(i)
    metrics: dict[str, float] = {}
    for suffix, idx in groups.items():
        metrics[f"generation/n{suffix}"] = float(len(idx))
        for name, vals in values.items():
            metrics[f"generation/{name}{suffix}"] = _mean([vals[i] for i in idx])
    return metrics, rows
