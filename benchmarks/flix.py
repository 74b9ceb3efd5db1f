"""FLix (METHODS.md §3; issue 6): its forward+backward cost against plain LoRA and a per-feature loop, and the
zero-shot experiment on the phantom source (unseen modality x question-kind combinations).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/flix.py            # both parts (21 min wall at load 10 on 2 cores)
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/flix.py --quick    # a smaller run of both (about 4 min there)
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/flix.py --speed-only | --zero-shot-only

**(a) Cost.** One forward + backward (loss.backward(), no optimizer step) of a 2-layer Llama built from config at
each width, adapters on its 14 linear layers, a batch whose examples have random feature values (a mixed batch),
F = 2, 4, 8 features of ``VALUES`` values each, rank ``R`` per value:

- **LoRA**: peft's LoRA whose rank is the *summed* rank of all feature values, F x VALUES x R: the same A/B
  parameters and the same matmul sizes as FLix's fused form, i.e. the cost FLix is meant to match.
- **FLix**: medtune's fused FLix (one A matmul, the per-example mask, one B matmul); features passed as
  ``flix_features=`` and turned into the mask inside the timed call.
- **loop**: the naive peer, written here: per feature, gather each example's own A_f and B_f and apply them with
  batched matmuls (``torch.bmm``), one feature after another. Checked to compute FLix's function first.

Measurements are interleaved round-robin (the order rotated every round), medians reported, wall clock, on one
torch thread by default (``OMP_WAIT_POLICY=PASSIVE``; the machine is shared). Target (issue 6): FLix/LoRA <= 1.10 at
width >= 512.

**(b) Zero-shot.** A phantom dataset is built in a temporary folder; closed questions are grouped into question
kinds (modality, presence, count, larger organ, lesion side, lesion organ); every question gets the features
``modality`` and ``question``. Some modality x question-kind combinations are held out entirely: no adapter ever
trains on them. A base VLM is bootstrapped on the open questions and captions only (no closed question), then
per seed, each method trains only its LM adapter (everything else frozen) on the closed questions of the seen
combinations, for the same number of steps:

- **FLix**: features (modality, question), rank ``r`` per value, feature dropout 0.1;
- **shared LoRA**: one LoRA with the same parameter count (rank = number of values x r);
- **per-combination**: one LoRA per seen combination (rank 2r, an example's FLix rank), trained on its own
  combination's questions, the steps split equally. It cannot serve an unseen combination: reported as n/a, with
  what it falls back to (the base model without adapter) beside it.

Scores are exact-match accuracy of greedy answers: seen combinations on the val and test splits (groups no
model trained on), unseen combinations on every split (no adapter saw them; the base saw their images, never a
closed question). Mean ± std over seeds. The tiny VLM has no pretrained weights here: numbers measure this
setting, not the paper's.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP pool (see benchmarks/hlora.py)

import argparse
import json
import math
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from components.adapters import add_adapter, apply_adapter
from components.adapters.flix import FeatureSpec, use_features
from components.adapters.flix import Linear as FLixLinear
from components.adapters.peft_ext import lm_linear_targets

VALUES, R, VOCAB, LAYERS = 4, 4, 1000, 2
SPEED_METHODS = ("lora", "flix", "loop")


# -- (a) cost ------------------------------------------------------------------------------------------------------


def vocabulary(num_features: int) -> dict[str, list[str]]:
    return {f"f{k}": [f"v{j}" for j in range(VALUES)] for k in range(num_features)}


class FeatureLoopLinear(nn.Module):
    """The naive peer: per feature, each example's own rank-R adapter (gathered), applied feature after feature."""

    def __init__(self, base: nn.Linear, num_features: int, scale: float = 2.0) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.a = nn.ParameterList(nn.Parameter(torch.empty(VALUES, R, base.in_features)) for _ in range(num_features))
        self.b = nn.ParameterList(nn.Parameter(torch.zeros(VALUES, base.out_features, R)) for _ in range(num_features))
        for a in self.a:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.scale = scale
        self.index: torch.Tensor | None = None  # (B, F) value index per example and feature, set before a forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.index is not None
        out = self.base(x)
        for f, (a, b) in enumerate(zip(self.a, self.b, strict=True)):
            idx = self.index[:, f]
            hidden = torch.bmm(x, a[idx].transpose(1, 2))  # (B, T, R)
            out = out + torch.bmm(hidden, b[idx].transpose(1, 2)) * self.scale
        return out


def tiny_llama(width: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=width, intermediate_size=max(64, int(width * 8 / 3) // 64 * 64),
        num_hidden_layers=LAYERS, num_attention_heads=max(1, width // 64), num_key_value_heads=max(1, width // 64),
        max_position_embeddings=512,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def check_peer_matches_flix(num_features: int = 3, width: int = 24) -> None:
    """The loop computes FLix's function (same weights): only the fused form differs."""
    torch.manual_seed(0)
    vocab = vocabulary(num_features)
    fused = FLixLinear(
        nn.Linear(width, width), "p", spec=FeatureSpec.from_mapping(vocab), r=R,
        lora_alpha=2.0 * R, feature_scales=(2.0,) * num_features, feature_dropout=0.0, lora_dropout=0.0,
        init_lora_weights=False,
    )  # fmt: skip
    peer = FeatureLoopLinear(fused.base_layer, num_features)
    with torch.no_grad():
        for f in range(num_features):
            for j in range(VALUES):
                rows = fused.value_slice("p", f"f{f}", f"v{j}")
                peer.a[f][j].copy_(fused.flix_A["p"][rows])
                peer.b[f][j].copy_(fused.flix_B["p"][:, rows])
    rows, index = random_rows(5, num_features, seed=1)
    peer.index = index
    x = torch.randn(5, 7, width)
    with torch.no_grad(), use_features(rows):
        torch.testing.assert_close(peer(x), fused(x), rtol=1e-4, atol=1e-4)


def random_rows(batch: int, num_features: int, seed: int) -> tuple[list[dict[str, str]], torch.Tensor]:
    index = torch.randint(0, VALUES, (batch, num_features), generator=torch.Generator().manual_seed(seed))
    rows = [{f"f{f}": f"v{int(index[b, f])}" for f in range(num_features)} for b in range(batch)]
    return rows, index


def build_pass(method: str, width: int, num_features: int, batch: int) -> Callable[[torch.Tensor], None]:
    """One forward + backward of ``method`` (a closure over its model and its batch's features)."""
    lm = tiny_llama(width)
    rows, _ = random_rows(batch, num_features, seed=2)
    if method == "lora":
        model: nn.Module = apply_adapter(lm, "lora", adapter_name="p", rank=num_features * VALUES * R, dropout=0.0)
        return lambda ids: model(input_ids=ids, labels=ids).loss.backward()
    if method == "flix":
        model = apply_adapter(
            lm, "flix", adapter_name="p", rank_per_feature=R, features=vocabulary(num_features), dropout=0.0,
            feature_dropout=0.0,
        )  # fmt: skip
        return lambda ids: model(input_ids=ids, labels=ids, flix_features=rows).loss.backward()
    if method == "loop":
        lm.requires_grad_(False)
        peers = []
        for name in lm_linear_targets(lm):
            parent_name, _, child = name.rpartition(".")
            parent = lm.get_submodule(parent_name)
            peers.append(FeatureLoopLinear(getattr(parent, child), num_features))
            setattr(parent, child, peers[-1])
        names = [f"f{f}" for f in range(num_features)]

        def loop_pass(ids: torch.Tensor) -> None:
            index = torch.tensor([[int(row[n][1:]) for n in names] for row in rows])  # from the rows, as FLix does
            for peer in peers:
                peer.index = index
            lm(input_ids=ids, labels=ids).loss.backward()

        return loop_pass
    raise ValueError(f"unknown method {method!r}")


def speed_table(
    widths: Sequence[int], features: Sequence[int], *, rounds: int, warmup: int, batch: int, seq: int
) -> str:
    lines = [
        "| width | F | summed rank | LoRA ms | FLix ms | loop ms | FLix/LoRA | loop/LoRA | FLix/loop |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for width in widths:
        for num_features in features:
            passes = {m: build_pass(m, width, num_features, batch) for m in SPEED_METHODS}
            ids = torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(0))
            times: dict[str, list[float]] = {m: [] for m in SPEED_METHODS}
            for k in range(warmup + rounds):
                shift = k % len(SPEED_METHODS)
                for method in SPEED_METHODS[shift:] + SPEED_METHODS[:shift]:
                    start = time.perf_counter()
                    passes[method](ids)
                    if k >= warmup:
                        times[method].append((time.perf_counter() - start) * 1e3)
            ms = {m: statistics.median(v) for m, v in times.items()}
            ratio = ms["flix"] / ms["lora"]
            mark = "" if width < 512 else (" ✓" if ratio <= 1.10 else " ✗")
            lines.append(
                f"| {width} | {num_features} | {num_features * VALUES * R} | {ms['lora']:.1f} | {ms['flix']:.1f} "
                f"| {ms['loop']:.1f} | {ratio:.2f}{mark} | {ms['loop'] / ms['lora']:.2f} "
                f"| {ms['flix'] / ms['loop']:.2f} |"
            )
            print(lines[-1], flush=True)
    return "\n".join(lines)


# -- (b) zero-shot ------------------------------------------------------------------------------------------------

QUESTION_KIND = {
    "modality_yn": "modality", "modality_choice": "modality", "presence": "presence", "count_yn": "count",
    "larger_yn": "larger", "larger_choice": "larger", "side_yn": "side", "side_choice": "side", "organ_yn": "organ",
}  # fmt: skip
HELD_OUT = (("CT", "count"), ("MRI", "larger"), ("MRI", "side"))  # each value still trains in other combinations


def build_phantom(folder: Path, subjects: int) -> list[dict[str, Any]]:
    from components.data.build import build_dataset
    from components.data.sources.phantom import PhantomSourceConfig
    from components.training.data import read_records

    build_dataset(
        {"phantom": PhantomSourceConfig(subjects=subjects)}, folder, workspace=folder.parent, image_size=64,
        image_mode="L", resize="pad", split_ratios=(0.8, 0.1, 0.1), split_seed=0, on_error="fail", workers=1,
        deid_key=b"benchmark-key-0123456789abcdef", seed=0, force=True,
    )  # fmt: skip
    return read_records(folder)


def closed_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Closed phantom questions with the features FLix composes: modality and question kind."""
    out = []
    for r in records:
        kind = QUESTION_KIND.get(str(r.get("meta", {}).get("question_type")))
        if r.get("kind") == "vqa_closed" and kind is not None:
            out.append({**r, "features": {"modality": r["modality"], "question": kind}})
    return out


def combo(r: dict[str, Any]) -> tuple[str, str]:
    return r["features"]["modality"], r["features"]["question"]


def normalise(text: str) -> str:
    return text.strip().lower().rstrip(".")


def accuracy(model: Any, records: list[dict[str, Any]], store: Any) -> float:
    from components.models.generate import answer_questions

    answers = answer_questions(model, model.tokenizer, records, store.vision, max_new_tokens=4, batch_size=32)
    gold = [normalise(r["conversations"][-1]["value"]) for r in records]
    return float(np.mean([normalise(a) == g for a, g in zip(answers, gold, strict=True)]))


def train_adapter(
    model: Any, records: list[dict[str, Any]], collate: Any, *, steps: int, lr: float, batch: int, seed: int
) -> None:
    """AdamW on the LM adapter's parameters only (vision, projectors, LM frozen), batches drawn with ``seed``."""
    adapter = model.lm.active_adapter
    for name, param in model.named_parameters():
        mine = name.endswith(f".{adapter}") or f".{adapter}." in name  # peft: ...lora_A.<name>.weight, flix_A.<name>
        param.requires_grad_(mine and any(p in name for p in ("lora_", "flix_")))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        chunk = [records[i] for i in rng.choice(len(records), size=min(batch, len(records)), replace=False)]
        loss = model(**collate(chunk)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()


def zero_shot(args: argparse.Namespace) -> str:
    from components.models.collate import VLMCollator
    from components.models.vlm import MedVLM, VLMArgs
    from components.training.base import bootstrap_base
    from components.training.data import ImageStore, select

    root = Path(tempfile.mkdtemp(prefix="flix-zero-shot-"))
    start = time.perf_counter()
    records = build_phantom(root / "data", args.subjects)
    closed = closed_records(records)
    # the base's dataset: the same images, open questions and captions only (no closed question, no generation)
    base_data = root / "base-data"
    base_data.mkdir()
    (base_data / "images").symlink_to(root / "data" / "images")
    open_only = [r for r in records if r["task"] == "comprehension" and r["kind"] != "vqa_closed"]
    (base_data / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in open_only))
    base = bootstrap_base(base_data, root / "base", args=VLMArgs(), steps=args.base_steps, batch_size=16, seed=0)
    print(
        f"phantom {args.subjects} subjects, {len(closed)} closed questions; base in {time.perf_counter() - start:.0f} s"
    )

    train = [r for r in select(closed, split="train") if combo(r) not in HELD_OUT]
    seen_test = [r for r in closed if r["split"] in ("val", "test") and combo(r) not in HELD_OUT]
    unseen = [r for r in closed if combo(r) in HELD_OUT]
    seen_combos = sorted({combo(r) for r in train})
    vocab = {"modality": sorted({m for m, _ in seen_combos}), "question": sorted({q for _, q in seen_combos})}
    values = sum(len(v) for v in vocab.values())
    majority = majority_baseline(train, seen_test, unseen)
    results: dict[str, dict[str, list[float]]] = {}

    def record(method: str, seen: float, unseen_acc: float) -> None:
        results.setdefault(method, {"seen": [], "unseen": []})
        results[method]["seen"].append(seen)
        results[method]["unseen"].append(unseen_acc)

    for seed in range(args.seeds):
        for method in ("base", "flix", "shared LoRA", "per-combination"):
            model = MedVLM.load(base)
            store = ImageStore(root / "data", model.image_size, model.channels)
            collate = VLMCollator(model.tokenizer, model.num_image_tokens, store.vision, with_features=method == "flix")
            torch.manual_seed(seed)
            if method == "base":
                if seed == 0:  # deterministic: no adapter, no seed
                    base_scores = (accuracy(model, seen_test, store), accuracy(model, unseen, store))
                record(method, *base_scores)
                continue
            if method == "flix":
                model.lm = apply_adapter(
                    model.lm, "flix", adapter_name="a", rank_per_feature=args.rank, features=vocab, dropout=0.0,
                    feature_dropout=0.1,
                )  # fmt: skip
                train_adapter(model, train, collate, steps=args.steps, lr=args.lr, batch=16, seed=seed)
                record(method, accuracy(model, seen_test, store), accuracy(model, unseen, store))
            elif method == "shared LoRA":
                model.lm = apply_adapter(model.lm, "lora", adapter_name="a", rank=values * args.rank, dropout=0.0)
                train_adapter(model, train, collate, steps=args.steps, lr=args.lr, batch=16, seed=seed)
                record(method, accuracy(model, seen_test, store), accuracy(model, unseen, store))
            else:  # one LoRA per seen combination, the steps split equally; unseen combinations: no adapter exists
                names = [f"{m}-{q}" for m, q in seen_combos]
                model.lm = apply_adapter(model.lm, "lora", adapter_name=names[0], rank=2 * args.rank, dropout=0.0)
                for name in names[1:]:
                    add_adapter(model.lm, "lora", adapter_name=name, rank=2 * args.rank, dropout=0.0)
                correct = 0
                for (m, q), name in zip(seen_combos, names, strict=True):
                    model.lm.set_adapter(name)
                    own = [r for r in train if combo(r) == (m, q)]
                    steps = max(1, args.steps // len(names))
                    train_adapter(model, own, collate, steps=steps, lr=args.lr, batch=16, seed=seed)
                    tests = [r for r in seen_test if combo(r) == (m, q)]
                    if tests:
                        correct += round(accuracy(model, tests, store) * len(tests))
                record(method, correct / max(1, len(seen_test)), math.nan)
        print(f"seed {seed} done at {time.perf_counter() - start:.0f} s", flush=True)

    lines = [
        f"Held out: {', '.join(f'{m} x {q}' for m, q in HELD_OUT)}; {len(train)} training questions in "
        f"{len(seen_combos)} seen combinations, {len(seen_test)} seen-combination test questions, {len(unseen)} "
        f"unseen-combination questions; FLix {values} values x rank {args.rank}; {args.steps} steps of 16, "
        f"lr {args.lr}; {args.seeds} seeds; {time.perf_counter() - start:.0f} s in all.",
        "",
        "| method | adapter rank per layer | seen combinations (val+test) | unseen combinations |",
        "|---|---:|---:|---:|",
    ]
    ranks = {"base": "0", "flix": f"{values} x {args.rank}", "shared LoRA": f"{values * args.rank}",
             "per-combination": f"{len(seen_combos)} x {2 * args.rank}"}  # fmt: skip
    for method, scores in results.items():
        unseen_text = (
            f"n/a (no adapter; falls back to the base: {base_scores[1]:.3f})"
            if method == "per-combination"
            else mean_std(scores["unseen"])
        )
        lines.append(f"| {method} | {ranks[method]} | {mean_std(scores['seen'])} | {unseen_text} |")
    lines.append(f"| majority answer per question type (train) | – | {majority[0]:.3f} | {majority[1]:.3f} |")
    return "\n".join(lines)


def majority_baseline(
    train: list[dict[str, Any]], seen: list[dict[str, Any]], unseen: list[dict[str, Any]]
) -> tuple[float, float]:
    from collections import Counter

    by_type: dict[str, Counter[str]] = {}
    for r in train:
        by_type.setdefault(r["meta"]["question_type"], Counter())[normalise(r["conversations"][-1]["value"])] += 1

    def score(records: list[dict[str, Any]]) -> float:
        hits = [
            by_type.get(r["meta"]["question_type"], Counter({"": 1})).most_common(1)[0][0]
            == normalise(r["conversations"][-1]["value"])
            for r in records
        ]
        return float(np.mean(hits)) if hits else math.nan

    return score(seen), score(unseen)


def mean_std(values: Sequence[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run of both parts")
    parser.add_argument("--speed-only", action="store_true")
    parser.add_argument("--zero-shot-only", action="store_true")
    parser.add_argument("--widths", type=int, nargs="+", default=[128, 512, 1024])
    parser.add_argument("--features", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--rounds", type=int, default=10, help="measured rounds per configuration")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--subjects", type=int, default=24, help="phantom subjects of the zero-shot experiment")
    parser.add_argument("--base-steps", type=int, default=200)
    parser.add_argument("--steps", type=int, default=150, help="adapter training steps per method")
    parser.add_argument("--rank", type=int, default=4, help="FLix rank per feature value")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.subjects, args.base_steps, args.steps, args.seeds = 5, 12, 100, 40, 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    print(
        f"# FLix — torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or 'cpu'}, "
        f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    if not args.zero_shot_only:
        check_peer_matches_flix()
        print(
            f"\n## (a) forward+backward, {LAYERS}-layer Llama, {args.batch} x {args.seq} tokens, {VALUES} values per "
            f"feature x rank {R}; median of {args.rounds} interleaved rounds (ms)\n",
            flush=True,
        )
        speed_table(args.widths, args.features, rounds=args.rounds, warmup=2, batch=args.batch, seq=args.seq)
        print("\nTarget (issue 6): FLix/LoRA <= 1.10 at width >= 512 (✓ met, ✗ missed).")
    if not args.speed_only:
        print("\n## (b) zero-shot: unseen modality x question-kind combinations (exact-match accuracy)\n", flush=True)
        print(zero_shot(args))
    print(f"\nload {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
