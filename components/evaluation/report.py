"""Evaluate a MedVLM on a split of a built VL-Health folder: answers, generated images, scores and baselines
(issue 4, item 6; the scoring is :mod:`components.evaluation.vqa`).

    from components.evaluation.report import evaluate_model, write_predictions
    result = evaluate_model(model, Path("data/vlhealth"), vq=vq_tokenizer, split="test")
    result.metrics["closed/accuracy"], result.metrics["closed/majority_template"]
    result.metrics["generation/ssim/modality_conversion/CT"], result.metrics["generation/copy_ssim/..."]
    write_predictions(result.predictions, Path("work/predictions.jsonl"))

Text answers are greedy (temperature 0) with the comprehension plugin switched in; images are generated with the
generation plugin, ``<img_start>`` forced and exactly the VQ grid's count of code tokens
(:func:`components.models.generate.generate_image_codes`), then decoded by the VQ decoder. Majority baselines are
fitted on the ``train_split`` of the same folder. A model without peft plugins (the bootstrapped base) is
evaluated as it is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from components.data.records import record_images
from components.evaluation.vqa import MajorityBaseline, score_images, score_vqa
from components.models.backend import image_loader, store_size
from components.models.generate import answer_questions, generate_image_codes
from components.training.data import ImageStore, read_records, select

SHORT_ANSWER_TOKENS = 16
CAPTION_TOKENS = 64
#: ``progress(done, total, None)``: records answered (questions, captions, generated images) of the split's total;
#: first ``(0, total, None)``, then once per batch (the training callbacks' protocol, loss None).
Progress = Callable[[int, int, float | None], None]


@dataclass
class EvalResult:
    metrics: dict[str, float]
    predictions: list[dict[str, Any]] = field(default_factory=list)


def use_plugin(model: Any, task: str) -> None:
    """Switch in ``task``'s peft plugin when the model has one (the hard task router)."""
    lm: Any = model.lm
    if isinstance(getattr(lm, "peft_config", None), dict) and task in lm.peft_config:
        lm.set_adapter(task, inference_mode=True)


def evaluate_model(
    model: Any,
    dataset_dir: str | Path,
    *,
    vq: Any = None,
    split: str = "test",
    train_split: str = "train",
    batch_size: int = 16,
    records: Sequence[dict[str, Any]] | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """Scores of ``model`` on ``split`` (see the module docstring). ``vq`` (a VQTokenizer) enables the generation
    part; ``records`` overrides the folder's records (e.g. a filtered list); ``progress`` counts records answered
    (:data:`Progress`)."""
    if model.tokenizer is None:
        raise ValueError("the model carries no tokenizer")
    dataset = Path(dataset_dir)
    all_records = list(records) if records is not None else read_records(dataset)
    test = select(all_records, split=split)
    baseline = MajorityBaseline.fit(select(all_records, split=train_split, task="comprehension"))
    size = (vq.config.image_size, vq.config.channels) if vq is not None else (64, 1)
    store = ImageStore(dataset, *store_size(model, *size))
    load = image_loader(model, store)
    metrics: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    comprehension = select(test, task="comprehension")
    generation = [r for r in select(test, task="generation") if r.get("target_image")] if vq is not None else []
    count = _Counter(len(comprehension) + len(generation), progress)
    if comprehension:
        use_plugin(model, "comprehension")
        short = [r for r in comprehension if r.get("kind") != "caption"]
        captions = [r for r in comprehension if r.get("kind") == "caption"]
        answers: dict[str, str] = {}
        for part, tokens in ((short, SHORT_ANSWER_TOKENS), (captions, CAPTION_TOKENS)):
            # one call per batch (answer_questions batches the same way, so the answers are the same): progress
            for start in range(0, len(part), batch_size):
                chunk = part[start : start + batch_size]
                out = answer_questions(
                    model, model.tokenizer, chunk, load, max_new_tokens=tokens, batch_size=batch_size,
                    max_length=model.max_length,
                )  # fmt: skip
                answers.update({str(r["id"]): a for r, a in zip(chunk, out, strict=True)})
                count.add(len(chunk))
        vqa_metrics, vqa_rows = score_vqa(comprehension, [answers[str(r["id"])] for r in comprehension], baseline)
        metrics.update(vqa_metrics)
        rows += [{"task": "comprehension", **row} for row in vqa_rows]
    metrics["eval/comprehension_seconds"] = time.perf_counter() - t0

    if generation and vq is not None:
        t1 = time.perf_counter()
        use_plugin(model, "generation")
        parts: list[torch.Tensor] = []
        for start in range(0, len(generation), batch_size):  # one call per batch, as above
            chunk = generation[start : start + batch_size]
            chunk_codes = generate_image_codes(
                model, model.tokenizer, chunk, load, num_codes=int(vq.num_codes_per_image),
                batch_size=batch_size, max_length=model.max_length,
            )  # fmt: skip
            parts.append(chunk_codes)
            count.add(len(chunk))
        codes = torch.cat(parts, dim=0)
        with torch.no_grad():
            generated = vq.decode(codes.to(next(vq.parameters()).device)).cpu()
            targets = store.pixel_batch([str(r["target_image"]) for r in generation])
            inputs = store.pixel_batch([record_images(r)[0] for r in generation])
            reconstructed = vq.decode(vq.encode(targets.to(next(vq.parameters()).device))).cpu()
        image_metrics, image_rows = score_images(generation, generated, targets, inputs, reconstructed)
        metrics.update(image_metrics)
        rows += [{"task": "generation", "codes": c, **row} for c, row in zip(codes.tolist(), image_rows, strict=True)]
        metrics["eval/generation_seconds"] = time.perf_counter() - t1
    use_plugin(model, "comprehension")
    return EvalResult(metrics, rows)


class _Counter:
    """Records answered so far, told to ``progress`` (first ``(0, total, None)``)."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.done, self.total, self.progress = 0, total, progress
        if progress is not None and total:
            progress(0, total, None)

    def add(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total, None)


def write_predictions(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """One JSON object per line."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    return out
