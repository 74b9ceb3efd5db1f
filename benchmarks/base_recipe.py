"""The base bootstrap's recipe, one variant at a time: closed accuracy per question type of the base alone.

    .venv/bin/medtune data build                       # in a workspace: data/vlhealth of the embedded default
    .venv/bin/python benchmarks/base_recipe.py --seed 0 --prompt-loss-weight 0.3 [--steps 2000] [--warmup 2000]

The same steps as :func:`components.training.base.bootstrap_base` (tokenizer, tiny VLM, vision warm-up, the stage
trainer on the train split's comprehension records), without its cache, on ``--threads`` threads (1: two variants
can run side by side on 2 cores); the warmed-up encoder is kept in ``--warm-cache`` per (seed, warm-up steps), so
variants of the LM recipe do not repeat it. Prints one JSON line: seconds, closed accuracy and open recall on the
test split, and closed accuracy per question type. Results: benchmarks/README.md, "The main job".
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from components.evaluation.report import evaluate_model
from components.models.collate import VLMCollator
from components.models.tokenizer import train_tokenizer
from components.models.vlm import VLMArgs, build_vlm
from components.training import base as B
from components.training.data import ImageStore, read_records, select
from components.training.trainer import TrainArgs, train_stage


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
    ap.add_argument("--warm-cache", type=Path, default=Path(".medtune/bench-warm"))
    ap.add_argument("--work", type=Path, default=Path(".medtune/bench-base"))
    ns = ap.parse_args()
    torch.set_num_threads(ns.threads)
    records = read_records(ns.dataset)
    train = select(records, split="train")
    comprehension = select(train, task="comprehension")
    tokenizer = train_tokenizer(B.train_texts(train), vocab_size=1000)
    args = VLMArgs(merge=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ns.seed)
        model = build_vlm(args, tokenizer)
    store = ImageStore(ns.dataset, model.image_size, model.channels)
    warm = ns.warm_cache / f"warm-s{ns.seed}-w{ns.warmup}.safetensors"
    started = time.perf_counter()
    if warm.is_file():
        model.vision.load_state_dict(load_file(str(warm)))
    else:
        B.warm_up_vision(model, B.image_answer_tasks(comprehension), store, steps=ns.warmup, seed=ns.seed)
        warm.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.vision.state_dict().items()}, str(warm))
    warm_s = time.perf_counter() - started
    collate = VLMCollator(tokenizer, model.num_image_tokens, store.vision, max_length=args.max_positions)
    started = time.perf_counter()
    train_stage(
        model, "base", {"comprehension": comprehension}, collate,
        TrainArgs(steps=ns.steps, lr=ns.lr, batch_size=ns.batch_size, warmup=max(1, ns.steps // 20), seed=ns.seed,
                  loss="record", prompt_loss_weight=ns.prompt_loss_weight),
        out_dir=ns.work / f"s{ns.seed}-w{ns.warmup}-n{ns.steps}-p{ns.prompt_loss_weight}",
    )  # fmt: skip
    base_s = time.perf_counter() - started
    model.eval()
    result = evaluate_model(model, ns.dataset, records=[r for r in records if r.get("task") == "comprehension"])
    by_type: dict[str, list[float]] = collections.defaultdict(list)
    for row in result.predictions:
        if row.get("part") == "closed":
            by_type[row["question_type"]].append(row["score"])
    print(json.dumps({
        "seed": ns.seed, "warmup": ns.warmup, "steps": ns.steps, "prompt_loss_weight": ns.prompt_loss_weight,
        "warmup_s": round(warm_s, 1), "base_s": round(base_s, 1),
        "closed": round(result.metrics.get("closed/accuracy", float("nan")), 3),
        "open": round(result.metrics.get("open/recall", float("nan")), 3),
        "closed_by_type": {k: round(sum(v) / len(v), 2) for k, v in sorted(by_type.items())},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
