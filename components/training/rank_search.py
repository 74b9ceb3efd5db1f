"""The ``rank-search`` stage: a short ElaLoRA run on the VLM's comprehension data whose result, a per-module rank
pattern, the main training then uses (METHODS.md §2, "In medtune the search is a stage"; issue 5).

    from components.training.rank_search import SearchArgs, search_ranks
    result = search_ranks(base_dir, Path("data/vlhealth"), Path("work/rank-search"), SearchArgs(steps=150, rank=16))
    result.pattern          # {"model.layers.0.self_attn.q_proj": 20, ...}, total = 16 x matrices
    result.pattern_file     # pattern.json (what the train stage reads), heatmap.png, trajectory.png beside it

or ``python -m components.training.rank_search data/vlhealth work/base/base-<key> work/rank-search --steps 150``.

What it does: loads the base MedVLM, freezes all of it, puts an ElaLoRA adapter (``rank`` initial ranks and
``r_max`` slots per matrix) on every Linear of its LM except the head (the matrices the train stage adapts), and
trains only that adapter on the train split's comprehension records for ``steps`` AdamW steps with the
:class:`~components.adapters.elalora.RankAllocator` moving ranks. It writes ``pattern.json`` (the final active rank
per module, total = ``rank`` x matrices), ``trajectory.json`` (the ranks after every round), ``heatmap.png``
(layer x module) and ``trajectory.png``, then ``result.json``; a folder that holds ``result.json`` for the same
settings is returned as it is (the stage keys the folder by config and data version).

Why a loop of its own rather than :func:`components.training.trainer.train_stage`: the stage trainer is built around
HealthGPT's stage table (two plugins, task mix, checkpoints, DDP), none of which a search of a few seconds needs,
while the allocator needs two hooks it does not have (an extra loss term, a call between ``optimizer.step()`` and
``scheduler.step()`` with the gradients still there). The loop re-uses the trainer's pieces (token loss, cosine
schedule, seeded sampler) so its loss and schedule mean the same as in training; the trainer is left untouched.

Budget (issue 5: "the stage on the default config should take <= 30 s"): the defaults (150 steps of 8 records on the
default 4-layer, 128-wide LM, 28 matrices of 16 -> 32 slots, 9 rounds) took 37 s wall / 19 s CPU with 1 thread
on the 2-core development machine while ~6 other jobs loaded it (load average 10); the CPU time is the figure to
compare with an idle machine.

Choices where the paper is silent: the search runs on comprehension data only (the generation plugin's pattern is
derived from it by the train stage, see ``AdapterArgs.for_task``); learning rate 1e-3 as the tiny model's stage 3;
no dropout in the search adapter (ranks are scored on the clean function).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from components.adapters import apply_adapter
from components.adapters.elalora import RankAllocator, rank_pattern
from components.models.backend import image_loader, load_vlm, store_size
from components.training.data import EpochSampler, ImageStore, dataset_fingerprint, read_records, select
from components.training.distributed import resolve_device
from components.training.trainer import ProgressCallback, answer_loss_sum, cosine_schedule, label_count

PATTERN_FILE, TRAJECTORY_FILE, RESULT_FILE = "pattern.json", "trajectory.json", "result.json"
HEATMAP_FILE, TRAJECTORY_PLOT = "heatmap.png", "trajectory.png"
ADAPTER_NAME = "search"
MetricsCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class SearchArgs:
    """Settings of one search (METHODS.md §2 names: r0 = ``rank``, Δ = ``delta_t``, γ = ``gamma``)."""

    steps: int = 150
    rank: int = 16
    r_max: int | None = None  # None: 2 x rank
    b0: int = 4
    k: int = 2
    delta_t: int = 10
    t_init: int = 30
    t_final: int = 30
    grace: int = 0  # 0: one Δ
    gamma: float = 0.1
    beta1: float = 0.85
    beta2: float = 0.85
    lr: float = 1e-3
    batch_size: int = 8
    max_grad_norm: float | None = 1.0
    seed: int = 0
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.rank < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"rank search: steps, rank, batch_size >= 1 and lr > 0 expected; got {self}")
        if self.t_init + self.t_final > self.steps:
            raise ValueError(f"rank search: t_init ({self.t_init}) + t_final ({self.t_final}) > steps ({self.steps})")


@dataclass
class SearchResult:
    """References to what a search wrote, and its numbers."""

    out_dir: Path
    pattern: dict[str, int]
    pattern_file: Path
    trajectory_file: Path
    heatmap: Path
    trajectory_plot: Path
    rounds: int
    moved: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    reused: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(json.dumps(asdict(self), default=str))
        return out


def search_key(base_dir: str | Path, dataset_dir: str | Path, args: SearchArgs) -> str:
    """A hash of what determines a search's result."""
    described = {"args": asdict(args), "base": str(Path(base_dir).resolve()), "data": dataset_fingerprint(dataset_dir)}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def search_ranks(
    base_dir: str | Path,
    dataset_dir: str | Path,
    out_dir: str | Path,
    args: SearchArgs,
    *,
    on_metrics: MetricsCallback | None = None,
    progress: ProgressCallback | None = None,
    device: str = "auto",
) -> SearchResult:
    """Run the search (see the module docstring); a finished folder with the same key is re-used (and reports no
    progress). ``progress`` hears ``(0, steps, None)``, then ``(step, steps, loss)`` after every step."""
    out = Path(out_dir)
    key = search_key(base_dir, dataset_dir, args)
    done = out / RESULT_FILE
    if done.is_file():
        meta = json.loads(done.read_text())
        if meta.get("key") == key:
            return _result_from(out, meta, reused=True)

    # -- setup ------------------------------------------------------------------------------------------------
    began = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = load_vlm(base_dir)
        if model.tokenizer is None:
            raise ValueError(f"{base_dir} holds no tokenizer: the rank search needs a base saved with its tokenizer")
        model.requires_grad_(False)
        model.lm = apply_adapter(  # peft forwards the LM API
            model.lm, "elalora", adapter_name=ADAPTER_NAME, rank=args.rank, dropout=0.0,
            target_modules=args.target_modules, r_max=args.r_max, total_step=args.steps, t_init=args.t_init,
            t_final=args.t_final, delta_t=args.delta_t, b0=args.b0, k=args.k, grace=args.grace, beta1=args.beta1,
            beta2=args.beta2, orth_reg_weight=args.gamma,
        )  # fmt: skip
    dev = resolve_device(device)
    model.to(dev)
    records = select(read_records(dataset_dir), split="train", task="comprehension")
    if not records:
        raise ValueError(f"{dataset_dir}: no train-split comprehension records to search ranks on")
    store = ImageStore(dataset_dir, *store_size(model, 64, 1))
    collate = model.collator(image_loader(model, store), max_length=model.lm.config.max_position_embeddings)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    warmup = max(1, args.steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_schedule(s, warmup=warmup, total=args.steps, min_ratio=0.1)
    )
    allocator = RankAllocator.from_model(model.lm, optimizer, adapter_name=ADAPTER_NAME, seed=args.seed)
    sampler = EpochSampler(len(records), seed=args.seed, salt=5)
    torch.manual_seed(args.seed)
    model.train()
    losses: list[float] = []
    if progress is not None:
        progress(0, args.steps, None)

    # -- search -----------------------------------------------------------------------------------------------
    for step in range(1, args.steps + 1):
        batch: dict[str, Any] = {
            k: v.to(dev) if isinstance(v, torch.Tensor) else v
            for k, v in collate([records[i] for i in sampler.take(args.batch_size)]).items()
        }
        labels: torch.Tensor = batch.pop("labels")
        loss = answer_loss_sum(model, batch, labels) / max(1, label_count(labels))
        reg = allocator.regularizer()
        (loss + reg).backward()
        if args.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        optimizer.step()
        moved = allocator.after_step(step)  # before scheduler.step(): the allocator reads this step's lr
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if on_metrics is not None:
            metrics = {"rank_search/loss": losses[-1], "rank_search/orth_reg": float(reg.detach())}
            if moved is not None:
                metrics["rank_search/moved"] = float(len(moved.grown))
            on_metrics(step, metrics)
        if progress is not None:
            progress(step, args.steps, losses[-1])

    # -- cleanup ----------------------------------------------------------------------------------------------
    model.eval()
    pattern = rank_pattern(model.lm, ADAPTER_NAME)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / PATTERN_FILE, pattern)
    steps_ranks = list(allocator.trajectory)
    if steps_ranks[-1][0] < args.steps:  # the frozen tail, so plots and file span the whole run
        steps_ranks.append((args.steps, allocator.ranks()))
    trajectory = [{"step": step, "ranks": ranks} for step, ranks in steps_ranks]
    _write_json(out / TRAJECTORY_FILE, trajectory)
    save_heatmap(pattern, out / HEATMAP_FILE, title=f"ElaLoRA ranks after {args.steps} steps (r0 = {args.rank})")
    save_trajectory(steps_ranks, out / TRAJECTORY_PLOT)
    summary = allocator.summary()
    meta = {
        "key": key,
        "args": asdict(args),
        "rounds": summary["rounds"],
        "moved": summary["moved"],
        "seconds": time.perf_counter() - began,
        "losses": losses,
    }
    _write_json(done, meta)
    return _result_from(out, meta, reused=False)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=isinstance(data, dict)) + "\n")
    os.replace(tmp, path)


def _result_from(out: Path, meta: Mapping[str, Any], *, reused: bool) -> SearchResult:
    return SearchResult(
        out_dir=out,
        pattern={k: int(v) for k, v in json.loads((out / PATTERN_FILE).read_text()).items()},
        pattern_file=out / PATTERN_FILE,
        trajectory_file=out / TRAJECTORY_FILE,
        heatmap=out / HEATMAP_FILE,
        trajectory_plot=out / TRAJECTORY_PLOT,
        rounds=int(meta["rounds"]),
        moved=int(meta["moved"]),
        seconds=float(meta["seconds"]),
        losses=list(meta.get("losses", [])),
        reused=reused,
    )


_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_and_module(name: str) -> tuple[int, str]:
    """``model.layers.3.self_attn.q_proj`` -> (3, "q_proj"); a name outside a numbered layer -> (-1, last part)."""
    found = _LAYER.search(name)
    return (int(found.group(1)) if found else -1), name.rsplit(".", 1)[-1]


def save_heatmap(pattern: Mapping[str, int], path: Path, *, title: str) -> Path:
    """A PNG of the ranks as a layer x module grid (matplotlib, Agg), each cell annotated with its rank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = {layer_and_module(name): rank for name, rank in pattern.items()}
    layers = sorted({layer for layer, _ in cells})
    modules = sorted({module for _, module in cells})
    grid = [[float(cells.get((layer, module), math.nan)) for module in modules] for layer in layers]
    fig, ax = plt.subplots(figsize=(1.1 * len(modules) + 2, 0.5 * len(layers) + 1.8), dpi=100)
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if not math.isnan(value):
                ax.text(j, i, str(int(value)), ha="center", va="center", color="white", fontsize=8)
    ax.set_xticks(range(len(modules)), modules, rotation=30, ha="right")
    ax.set_yticks(range(len(layers)), [str(layer) if layer >= 0 else "other" for layer in layers])
    ax.set_xlabel("module")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="active rank")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def save_trajectory(trajectory: Sequence[tuple[int, Mapping[str, int]]], path: Path) -> Path:
    """A PNG of every module's rank over the optimizer steps (one colour per layer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [step for step, _ in trajectory]
    names = sorted(trajectory[0][1]) if trajectory else []
    layers = sorted({layer_and_module(n)[0] for n in names})
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=100)
    for name in names:
        layer = layer_and_module(name)[0]
        ax.step(steps, [ranks[name] for _, ranks in trajectory], where="post", linewidth=1, alpha=0.7,
                color=colours(layers.index(layer) % 10))  # fmt: skip
    for layer in layers:
        ax.plot([], [], color=colours(layers.index(layer) % 10), label=f"layer {layer}" if layer >= 0 else "other")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("active rank per matrix")
    ax.set_title("ElaLoRA rank trajectory")
    ax.legend(loc="upper left", fontsize=7, ncols=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    """Search ranks for a base model on a built dataset; prints the result as JSON."""
    ap = argparse.ArgumentParser(prog="python -m components.training.rank_search", description=main.__doc__)
    ap.add_argument("dataset", type=Path, help="a built VL-Health folder")
    ap.add_argument("base", type=Path, help="a base MedVLM folder (bootstrap_base's output)")
    ap.add_argument("out", type=Path, help="output folder")
    for name, value in asdict(SearchArgs()).items():
        if name != "target_modules":
            ap.add_argument(
                f"--{name.replace('_', '-')}", type=type(value) if value is not None else int, default=value
            )
    ap.add_argument("--threads", type=int, default=2)
    ns = vars(ap.parse_args(argv))
    torch.set_num_threads(ns.pop("threads"))
    dataset, base, out = ns.pop("dataset"), ns.pop("base"), ns.pop("out")
    result = search_ranks(base, dataset, out, SearchArgs(**ns))
    print(json.dumps(result.to_json() | {"losses": result.losses[-1:]}, indent=1))


if __name__ == "__main__":
    main()
