"""The base bootstrap's recipe, one variant at a time: closed accuracy per question type of the base alone.

    .venv/bin/medtune data build                       # in a workspace: data/vlhealth of the embedded default
    .venv/bin/python benchmarks/base_recipe.py --seed 0 --prompt-loss-weight 0.3 [--steps 2000] [--warmup 2000]

Runs :func:`components.training.base.bootstrap_base` itself (tokenizer, tiny VLM, vision warm-up, the stage
trainer on the train split's comprehension records) into ``--out`` (its cache: a finished variant is re-used) on
``--threads`` threads (1: two variants can run side by side on 2 cores), then evaluates the base on the test split.
Prints one JSON line: the bootstrap's seconds, closed accuracy and open recall, and closed accuracy per question
type. Results: benchmarks/README.md, "The main job".
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import torch

from components.evaluation.report import evaluate_model
from components.models.vlm import MedVLM, VLMArgs
from components.training import base as B
from components.training.data import read_records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, default=Path("data/vlhealth"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=B.DEFAULT_VISION_WARMUP, help="vision warm-up steps")
    ap.add_argument("--steps", type=int, default=B.DEFAULT_STEPS)
    ap.add_argument("--lr", type=float, default=B.DEFAULT_LR)
    ap.add_argument("--batch-size", type=int, default=B.DEFAULT_BATCH)
    ap.add_argument("--prompt-loss-weight", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(".medtune/bench-base"))
    ns = ap.parse_args()
    torch.set_num_threads(ns.threads)
    started = time.perf_counter()
    folder = B.bootstrap_base(
        ns.dataset, ns.out, args=VLMArgs(merge=4), steps=ns.steps, batch_size=ns.batch_size, lr=ns.lr,
        seed=ns.seed, vision_warmup=ns.warmup, prompt_loss_weight=ns.prompt_loss_weight,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    model = MedVLM.load(folder)
    model.eval()
    records = [r for r in read_records(ns.dataset) if r.get("task") == "comprehension"]
    result = evaluate_model(model, ns.dataset, records=records)
    by_type: dict[str, list[float]] = collections.defaultdict(list)
    for row in result.predictions:
        if row.get("part") == "closed":
            by_type[row["question_type"]].append(row["score"])
    print(json.dumps({
        "seed": ns.seed, "warmup": ns.warmup, "steps": ns.steps, "prompt_loss_weight": ns.prompt_loss_weight,
        "base": folder.name, "seconds": round(seconds, 1),
        "closed": round(result.metrics.get("closed/accuracy", float("nan")), 3),
        "open": round(result.metrics.get("open/recall", float("nan")), 3),
        "closed_by_type": {k: round(sum(v) / len(v), 2) for k, v in sorted(by_type.items())},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
