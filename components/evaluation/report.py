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
from collections.abc import Sequence
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
) -> EvalResult:
    """Scores of ``model`` on ``split`` (see the module docstring). ``vq`` (a VQTokenizer) enables the generation
    part; ``records`` overrides the folder's records (e.g. a filtered list)."""
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
    if comprehension:
        use_plugin(model, "comprehension")
        short = [r for r in comprehension if r.get("kind") != "caption"]
        captions = [r for r in comprehension if r.get("kind") == "caption"]
        answers: dict[str, str] = {}
        for part, tokens in ((short, SHORT_ANSWER_TOKENS), (captions, CAPTION_TOKENS)):
            if part:
                out = answer_questions(
                    model, model.tokenizer, part, load, max_new_tokens=tokens, batch_size=batch_size,
                    max_length=model.max_length,
                )  # fmt: skip
                answers.update({str(r["id"]): a for r, a in zip(part, out, strict=True)})
        vqa_metrics, vqa_rows = score_vqa(comprehension, [answers[str(r["id"])] for r in comprehension], baseline)
        metrics.update(vqa_metrics)
        rows += [{"task": "comprehension", **row} for row in vqa_rows]
    metrics["eval/comprehension_seconds"] = time.perf_counter() - t0

    generation = [r for r in select(test, task="generation") if r.get("target_image")]
    if generation and vq is not None:
        t1 = time.perf_counter()
        use_plugin(model, "generation")
        codes = generate_image_codes(
            model, model.tokenizer, generation, load, num_codes=int(vq.num_codes_per_image),
            batch_size=batch_size, max_length=model.max_length,
        )  # fmt: skip
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


def write_predictions(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """One JSON object per line."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    return out
