"""The training loop of one stage: AdamW, cosine schedule with warm-up, gradient accumulation and clipping, bf16
autocast on GPU, single-task batches with the task's plugin switched in, checkpoints and exact resume, one code
path for one process and for torchrun (METHODS.md §1, "Three-stage learning"; issue 4, item 5).

    from components.training.trainer import TrainArgs, train_stage
    result = train_stage(model, 3, pools, collate, TrainArgs(steps=200, lr=2e-4, batch_size=8, warmup=10,
                         checkpoint_every=50), out_dir=Path("work/stage3"), on_metrics=log)
    result.losses, result.curve, result.final      # per-step losses, loss-curve PNG, trained tensors

A stage reads top to bottom: setup (freeze per the stage table, optimizer, schedule, samplers, resume from the last
checkpoint) -> loop (pick the step's task, switch its plugin, accumulate micro-batches, clip, step, checkpoint) ->
cleanup (loss curve, final tensors, a ``done.json`` marker). Calling it again on a finished stage returns the saved
result without training.

Choices where METHODS.md is silent:

- **Single-task batches.** Each optimizer step draws one task from the stage's task mix (a pure function of seed and
  step) and all its micro-batches from that task's pool; ``set_adapter(task)`` switches the plugin before the
  forward (HealthGPT's hard router). A mixed-task batch would need both plugins active per example, which peft
  only supports at inference. The task mix defaults to equal weights over the stage's tasks with data.
- **Loss normalisation.** Cross-entropy is summed over the answer tokens of every micro-batch (on every rank) and
  divided by the token count of the whole optimizer step, so gradient accumulation and N ranks compute exactly the
  gradient of one big batch (a mean of per-micro-batch means would weight short answers differently).
  ``TrainArgs.loss = "record"`` instead averages each record's tokens first and divides the sum of those means by
  the step's record count (the same exact accumulation and N-rank equivalence): every record weighs the same, so
  a one-token "yes" counts as much as a 35-token caption. The tiny base bootstrap uses it (see
  :mod:`components.training.base`).
- **Optimizer.** AdamW, weight decay 0 (METHODS.md), betas (0.9, 0.999); the learning rate warms up linearly for
  ``warmup`` steps, then follows a half cosine to ``min_lr_ratio`` x ``lr`` at the last step. Gradients are
  clipped to a global norm of ``max_grad_norm``; parameters outside the step task's trainable set never get a
  gradient (AdamW then leaves them, and their moments, untouched).
- **Precision** (:mod:`components.training.precision`). The stage's trainable tensors train in float32 (master
  weights) whatever the base's dtype; a bf16/fp16 base autocasts to its dtype (CPU too; fp16 with a GradScaler).
  A float32 base: bf16 autocast on CUDA only; CPU runs in fp32, so a resumed run equals an uninterrupted one bit for
  bit (``torch.equal``).
- **Determinism.** The torch RNG (dropout) is seeded per stage from (seed, stage, rank) and saved per rank in
  every checkpoint together with numpy's and Python's; the data order needs no RNG state (see
  :mod:`components.training.data`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from components.data.records import TASKS, record_images
from components.models.collate import IGNORE
from components.training.checkpoint import (
    OPTIMIZER_FILE,
    STATE_FILE,
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from components.training.data import EpochSampler, Record, record_length, task_for_step
from components.training.distributed import (
    DistEnv,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    full_tensors,
    load_into,
    load_optimizer_state,
    no_sync,
    optimizer_state,
    shard,
    shard_model,
    wrap_model,
)
from components.training.optim import adamw
from components.training.precision import Precision
from components.training.stages import StageKey, StageSpec, freeze_for, stage_spec, trainable_parameters

MetricsCallback = Callable[[int, dict[str, float]], None]
#: ``progress(step, total, loss)``: first ``(start, total, None)`` once the stage is set up (start 0, or the step a
#: resumed run continues from), then ``(step, total, loss)`` after every optimizer step (pipelines/progress.py).
ProgressCallback = Callable[[int, int, float | None], None]
Collate = Callable[[list[Record]], Mapping[str, Any]]
DONE_FILE = "done.json"
FINAL_FILE = "final.safetensors"
CURVE_FILE = "loss.png"
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class TrainArgs:
    """Hyper-parameters of one stage. ``batch_size`` is the *global* micro-batch (over all ranks)."""

    steps: int
    lr: float
    batch_size: int = 8
    grad_accum: int = 1
    warmup: int = 0
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    checkpoint_every: int = 0  # 0: no intermediate checkpoints
    keep_checkpoints: int = 2
    seed: int = 0
    bf16: bool = True  # a float32 base: autocast to bf16 on CUDA (ignored on CPU); a bf16/fp16 base autocasts anyway
    loss: str = "token"  # "token": mean over every answer token; "record": mean over records of each one's mean
    task_mix: Mapping[str, float] = field(default_factory=dict)  # empty: equal over the stage's tasks with data
    # micro-batches of similar length (components.training.data.grouped_permutation): less padding, but on the
    # embedded default a sorted window puts one question template's records together and the base then never left
    # its plateau (closed accuracy 0.73 against 0.95 with random batches, same steps): off unless asked for. Off,
    # only text-only records are kept apart (_text_only_apart)
    group_by_length: bool = False
    # Loss over the prompt too (Shi et al., "Instruction Tuning With Loss Over Instructions", NeurIPS 2024): each
    # record's mean cross-entropy on its prompt's text tokens (the template and the question; never an image
    # placeholder or padding), times this weight, is added to its answer loss. It helps most where answers are short
    # against their prompts (the paper's finding): on the embedded default's one-word answers, the base's closed
    # accuracy rose by 0.03 and 0.007 on two seeds (benchmarks/README.md, "The main job"). Needs loss="record".
    prompt_loss_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.grad_accum < 1 or self.warmup < 0:
            raise ValueError(f"steps >= 0, batch_size >= 1, grad_accum >= 1, warmup >= 0 expected; got {self}")
        if self.loss not in ("token", "record"):
            raise ValueError(f"loss must be 'token' or 'record', got {self.loss!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.prompt_loss_weight < 0 or (self.prompt_loss_weight and self.loss != "record"):
            raise ValueError(
                f"prompt_loss_weight must be >= 0 and needs loss='record'; got {self.prompt_loss_weight} with "
                f"loss={self.loss!r}"
            )
        unknown = sorted(set(self.task_mix) - set(TASKS))
        if unknown:
            raise ValueError(f"task_mix names unknown tasks {unknown}; known: {', '.join(TASKS)}")


@dataclass
class StageResult:
    stage: StageKey
    steps: int
    losses: list[float]
    tasks: list[str]
    seconds: float
    resumed_from: int | None
    out_dir: Path
    final: Path  # safetensors of the tensors the stage saved (trained state after the last step)
    curve: Path | None  # loss-curve PNG (rank 0)

    def summary(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "steps": self.steps,
            "seconds": round(self.seconds, 2),
            "resumed_from": self.resumed_from,
            "first_loss": self.losses[0] if self.losses else None,
            "last_loss": self.losses[-1] if self.losses else None,
            "final": str(self.final),
            "curve": str(self.curve) if self.curve else None,
        }


def cosine_schedule(step: int, *, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Learning-rate factor of optimizer step ``step`` (0-based): linear warm-up to 1 over ``warmup`` steps
    ((step + 1) / warmup), then a half cosine from 1 down to ``min_ratio`` at the last step ``total - 1``."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - 1 - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def salt_of(*parts: object) -> int:
    """A stable 32-bit number from names (Python's ``hash`` of a str changes between processes)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


def token_loss_sum(logits: Tensor, labels: Tensor) -> Tensor:
    """Sum of next-token cross-entropies over the labelled positions, in float32."""
    return _token_ce(logits[:, :-1], labels[:, 1:])


def record_loss_sum(logits: Tensor, labels: Tensor) -> Tensor:
    """Sum over the records (rows) of each record's *mean* next-token cross-entropy, in float32: every record
    weighs the same, however long its answer (a one-word closed answer as much as a 35-token caption)."""
    return _record_ce(logits[:, :-1], labels[:, 1:])


def _token_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """Summed cross-entropy of ``logits`` (B, T, V) against aligned ``targets`` (B, T), IGNORE skipped."""
    logits = logits.float()
    targets = targets.to(logits.device)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )


def _record_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """Sum over rows of each row's mean cross-entropy (aligned ``targets``, IGNORE skipped)."""
    logits = logits.float()
    targets = targets.to(logits.device)
    per_token = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(targets.shape)
    counts = (targets != IGNORE).sum(dim=1)
    return (per_token.sum(dim=1) / counts.clamp(min=1)).sum()


def answer_positions(labels: Tensor) -> Tensor:
    """The positions whose *next* token is labelled in at least one row: the only logits a loss reads."""
    return (labels[:, 1:] != IGNORE).any(dim=0).nonzero().squeeze(1)


def prompt_labels(input_ids: Tensor, attention_mask: Tensor, labels: Tensor, skip_ids: Iterable[int] = ()) -> Tensor:
    """Labels for the prompt-loss term (:attr:`TrainArgs.prompt_loss_weight`): each attended token that is not an
    answer token (``labels`` IGNORE) nor one of ``skip_ids`` (image placeholders) is its own label; the rest IGNORE.
    The first token is never predicted (nothing comes before it), as with the answer labels."""
    keep = (labels == IGNORE) & attention_mask.bool()
    for token in skip_ids:
        keep &= input_ids != token
    out = torch.where(keep, input_ids, torch.full_like(input_ids, IGNORE))
    out[:, 0] = IGNORE
    return out


def answer_loss_sum(
    model: nn.Module,
    inputs: Mapping[str, Any],
    labels: Tensor,
    per: str = "token",
    *,
    prompt: Tensor | None = None,
    prompt_weight: float = 0.0,
) -> Tensor:
    """:func:`token_loss_sum` (``per="token"``) or :func:`record_loss_sum` (``per="record"``) of ``model(**inputs)``,
    computing the LM head only where an answer token is predicted (``logits_to_keep``, which every Hugging Face
    causal LM takes): the head over the whole padded sequence is most of the logits' cost and memory (a fifth of a
    tiny model's step; with Gemma's 262k vocabulary, gigabytes), while a prompt's logits never enter the loss.
    Equal to the full computation up to float rounding.

    With ``prompt`` (:func:`prompt_labels`) and ``prompt_weight`` > 0 (``per="record"`` only), each record's mean
    prompt-token loss times ``prompt_weight`` is added to its answer loss; the head then also runs where a prompt
    token is predicted."""
    if prompt is None or not prompt_weight:
        keep = answer_positions(labels)
        logits = model(**inputs, logits_to_keep=keep.to(labels.device)).logits
        targets = labels[:, keep + 1]
        return (_record_ce if per == "record" else _token_ce)(logits, targets)
    if per != "record":
        raise ValueError("a prompt loss needs per='record'")
    keep = ((labels[:, 1:] != IGNORE) | (prompt[:, 1:] != IGNORE)).any(dim=0).nonzero().squeeze(1)
    logits = model(**inputs, logits_to_keep=keep.to(labels.device)).logits
    return _record_ce(logits, labels[:, keep + 1]) + prompt_weight * _record_ce(logits, prompt[:, keep + 1])


def label_count(labels: Tensor) -> int:
    return int((labels[:, 1:] != IGNORE).sum())


def record_count(labels: Tensor) -> int:
    """Rows with at least one labelled position."""
    return int((labels[:, 1:] != IGNORE).any(dim=1).sum())


def switch_plugin(model: nn.Module, task: str) -> None:
    """Make ``task``'s plugin the active one (a no-op for a model without peft plugins), leaving it frozen: the
    caller sets ``requires_grad`` from the stage table."""
    lm = getattr(model, "lm", None)
    set_adapter = getattr(lm, "set_adapter", None)
    peft_config = getattr(lm, "peft_config", None)
    if callable(set_adapter) and isinstance(peft_config, dict) and task in peft_config:
        set_adapter(task, inference_mode=True)


def named_tensors(model: nn.Module, names: Iterable[str]) -> dict[str, Tensor]:
    """The named parameters, whole (under FSDP a collective: every rank calls it, see distributed.full_tensors)."""
    return full_tensors(model, names)


@torch.no_grad()
def load_tensors(model: nn.Module, tensors: Mapping[str, Tensor], *, strict_names: Iterable[str] | None = None) -> None:
    """Copy saved tensors into the model's parameters (by name); ``strict_names`` must all be present."""
    params = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise KeyError(f"saved tensors name parameters the model lacks: {unknown[:5]} (of {len(unknown)})")
    missing = sorted(set(strict_names or ()) - set(tensors))
    if missing:
        raise KeyError(f"saved tensors lack parameters {missing[:5]} (of {len(missing)})")
    for name, value in tensors.items():
        param = params[name]
        if param.shape != value.shape:
            raise ValueError(f"{name}: saved shape {tuple(value.shape)}, model shape {tuple(param.shape)}")
        load_into(param, value)  # a sharded (FSDP) parameter keeps its shard of the value


def _atomic_save_tensors(tensors: Mapping[str, Tensor], path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_loss_curve(losses: Sequence[float], tasks: Sequence[str], path: Path, title: str, unit: str = "token") -> Path:
    """A PNG of the per-step loss (one colour per task) and its running mean (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    steps = list(range(1, len(losses) + 1))
    for task, colour in zip(TASKS, ("tab:blue", "tab:orange"), strict=True):
        xs = [s for s, t in zip(steps, tasks, strict=True) if t == task]
        if xs:
            ax.scatter(xs, [losses[s - 1] for s in xs], s=6, color=colour, label=task, alpha=0.6)
    window = max(1, len(losses) // 20)
    running = [
        sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
        for i in range(len(losses))
    ]
    ax.plot(steps, running, color="black", linewidth=1, label=f"mean of {window}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"loss ({unit}-mean cross-entropy)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_key(
    stage: StageKey, args: TrainArgs, mix: Mapping[str, float], ids: Mapping[str, list[str]], names: Iterable[str]
) -> str:
    """A hash of what determines a stage's result: a checkpoint or a finished stage is re-used only when it matches."""
    described = {
        "stage": str(stage),
        "args": {k: v for k, v in asdict(args).items() if k != "task_mix"},
        "mix": dict(mix),
        "records": ids,
        "names": sorted(names),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_key(found: str | None, expected: str, where: Path, stage_dir: Path) -> None:
    if found != expected:
        raise ValueError(
            f"{where} was written by a run with other settings, data or parameters (run key {found}, this run "
            f"{expected}); use another work folder, or delete the stage folder {stage_dir} to train it again"
        )


def _check_sharding(sharded: bool, env: DistEnv, where: Path, stage_dir: Path) -> None:
    if bool(sharded) != env.sharded:
        written, now = ("with", "without") if sharded else ("without", "with")
        raise ValueError(
            f"{where} was written {written} FSDP (train.distributed), this run trains {now} it; resume it the way it "
            f"started, or delete the stage folder {stage_dir} to train it again"
        )


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def _task_pools(spec: StageSpec, pools: Mapping[str, Sequence[Record]]) -> dict[str, list[Record]]:
    """Each task's records for ``spec``. A task that trains projectors only (stage 1's comprehension: multi-modal
    alignment) draws only records with an image: a text-only record gives a projector no gradient."""
    out: dict[str, list[Record]] = {}
    for task, names in spec.data.items():
        missing = [n for n in names if n not in pools]
        if missing:
            raise KeyError(f"the stage needs record pools {missing}; given: {sorted(pools)}")
        records = [r for n in names for r in pools[n]]
        if all(group.startswith("projector.") for group in spec.trains.get(task, ())):
            records = [r for r in records if record_images(r)]
        if records:
            out[task] = records
    return out


def _text_only_apart(records: Sequence[Record]) -> list[int] | None:
    """Batch keys that keep text-only records (the safety-alignment source: the longest records of the embedded
    default) in batches of their own, in random order otherwise; None when the pool has one kind. Mixed in, one
    such record in nearly every batch of 16 padded the whole batch to its length (~1.3x the base step's tokens)."""
    keys = [int(not record_images(r)) for r in records]
    return keys if 0 < sum(keys) < len(keys) else None


def train_stage(
    model: nn.Module,
    stage: StageKey,
    pools: Mapping[str, Sequence[Record]],
    collate: Collate,
    args: TrainArgs,
    *,
    out_dir: str | Path,
    env: DistEnv | None = None,
    save_names: Iterable[str] | None = None,
    on_metrics: MetricsCallback | None = None,
    progress: ProgressCallback | None = None,
) -> StageResult:
    """Train ``model`` (a MedVLM, plugins attached for stages 1-3) through one stage; see the module docstring.

    ``pools`` maps pool names ("comprehension", "generation", "reconstruction") to records; ``collate`` turns a
    list of records into a model batch (a VLMCollator). ``save_names`` are the parameters written to checkpoints
    and to the final tensors (default: what this stage trains); give the union over all stages to make every
    stage's output a complete trained state. Metrics go to ``on_metrics(step, {"stage<k>/loss": ...})``, progress
    to ``progress`` (rank 0; see :data:`ProgressCallback`; a finished stage that is loaded reports nothing)."""
    env = env or DistEnv()
    spec = stage_spec(stage)
    out = Path(out_dir)
    prefix = f"stage{spec.key}/"
    done = out / DONE_FILE
    final = out / FINAL_FILE
    task_pools = _task_pools(spec, pools)
    mix = {t: float(args.task_mix.get(t, 0.0) if args.task_mix else 1.0) for t in task_pools}
    if not task_pools or sum(mix.values()) <= 0:
        raise ValueError(f"stage {spec.key}: no records for any of its tasks {spec.tasks} (pools: {sorted(pools)})")
    keep_names = set(save_names) if save_names is not None else trainable_parameters(model, spec.key)
    key = run_key(
        spec.key, args, mix, {t: [str(r.get("id")) for r in recs] for t, recs in task_pools.items()}, keep_names
    )
    if done.is_file() and final.is_file():  # finished before: load its result, train nothing
        meta = json.loads(done.read_text())
        _check_key(meta.get("run_key"), key, done, out)
        load_tensors(model, load_file(str(final)), strict_names=keep_names)
        return StageResult(
            spec.key, meta["steps"], meta["losses"], meta["tasks"], meta["seconds"], meta.get("resumed_from"), out,
            final, Path(meta["curve"]) if meta.get("curve") else None,
        )  # fmt: skip

    # -- setup ------------------------------------------------------------------------------------------------
    union = freeze_for(model, spec.key)
    precision = Precision.for_model(model, union, env.device, bf16=args.bf16)  # fp32 master weights (issue 20)
    shard_model(model, env)  # FSDP (train.distributed): before the optimizer, whose parameters become DTensors
    active = {t: trainable_parameters(model, spec.key, t) for t in task_pools}
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = adamw([p for _, p in params], lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_schedule(s, warmup=args.warmup, total=args.steps, min_ratio=args.min_lr_ratio)
    )
    samplers = {
        t: EpochSampler(
            len(recs),
            seed=args.seed,
            salt=salt_of(spec.key, t),
            lengths=[record_length(r) for r in recs] if args.group_by_length else _text_only_apart(recs),
            group=args.batch_size * args.grad_accum,  # a step's records: accumulation stays the big batch
        )
        for t, recs in task_pools.items()
    }
    torch.manual_seed(salt_of(args.seed, spec.key, env.rank))
    start, losses, tasks, resumed_from, seconds_before = 0, [], [], None, 0.0
    ckpt_dir = out / CHECKPOINTS
    ckpt = latest_checkpoint(ckpt_dir)
    if ckpt is not None:
        _check_key(json.loads((ckpt / STATE_FILE).read_text()).get("run_key"), key, ckpt, out)
        _check_sharding(json.loads((ckpt / STATE_FILE).read_text()).get("sharded", False), env, ckpt, out)
        loaded = load_checkpoint(ckpt, optimizer=None if env.sharded else optimizer, scheduler=scheduler)
        if env.sharded:  # the whole optimizer state by parameter name, scattered to this rank's shards
            saved = torch.load(ckpt / OPTIMIZER_FILE, weights_only=True, map_location="cpu")["optimizer"]
            load_optimizer_state(model, optimizer, saved, env)
        load_tensors(model, loaded.tensors, strict_names=keep_names)
        for t, sampler in samplers.items():
            sampler.load_state_dict(loaded.state["samplers"][t])
        start, resumed_from = loaded.step, loaded.step
        losses, tasks = list(loaded.state["losses"]), list(loaded.state["tasks"])
        seconds_before = float(loaded.state.get("seconds", 0.0))
        if len(loaded.rng) == env.world:
            restore_rng(loaded.rng[env.rank])
        else:  # another world size: the run goes on, but is no longer bitwise the uninterrupted one
            torch.manual_seed(salt_of(args.seed, spec.key, env.rank, start))
    ddp = wrap_model(model, env)  # DDP, or the FSDP-sharded model itself
    image_token = getattr(model, "image_token_id", None)  # never a prompt-loss target (TrainArgs.prompt_loss_weight)
    skip_ids = [int(image_token)] if isinstance(image_token, int) else []
    autocast = precision.context()
    model.train()
    began = time.perf_counter()
    if env.is_main and progress is not None:
        progress(start, args.steps, None)

    # -- train ------------------------------------------------------------------------------------------------
    for step in range(start, args.steps):
        t0 = time.perf_counter()
        task = task_for_step(mix, seed=args.seed, salt=salt_of(spec.key, "task"), step=step)
        switch_plugin(model, task)
        for name, param in model.named_parameters():  # set_adapter touched requires_grad; DDP wraps the union
            param.requires_grad_(name in union)
        pool = task_pools[task]
        global_indices = samplers[task].take(args.batch_size * args.grad_accum)
        micro = [
            collate([pool[i] for i in shard(global_indices[k : k + args.batch_size], env)])
            for k in range(0, len(global_indices), args.batch_size)
        ]
        count = record_count if args.loss == "record" else label_count
        tokens = int(all_reduce_sum(torch.tensor(sum(count(b["labels"]) for b in micro)), env).item())
        optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), dtype=torch.float32)
        for k, batch in enumerate(micro):
            inputs = _to_device(batch, env.device)
            labels = inputs.pop("labels")
            sync = k == len(micro) - 1 or not env.distributed
            prompt = (
                prompt_labels(inputs["input_ids"], inputs["attention_mask"], labels, skip_ids)
                if args.prompt_loss_weight
                else None
            )
            with contextlib.nullcontext() if sync else no_sync(ddp, env), autocast:
                summed = answer_loss_sum(
                    ddp, inputs, labels, per=args.loss, prompt=prompt, prompt_weight=args.prompt_loss_weight
                )
            precision.backward(summed * (env.world / max(1, tokens)))
            loss_sum += summed.detach().cpu()
        for name, param in params:
            if name not in active[task]:
                param.grad = None
        with_grad = [p for _, p in params if p.grad is not None]
        precision.unscale(optimizer)
        grad_norm = (
            float(torch.nn.utils.clip_grad_norm_(with_grad, args.max_grad_norm))
            if args.max_grad_norm and with_grad
            else math.nan
        )
        lr = float(scheduler.get_last_lr()[0])
        precision.step(optimizer)
        scheduler.step()
        loss = float(all_reduce_sum(loss_sum, env).item()) / max(1, tokens)
        losses.append(loss)
        tasks.append(task)
        done_steps = step + 1
        if env.is_main:
            if on_metrics is not None:
                metrics = {
                    f"{prefix}loss": loss,
                    f"{prefix}loss/{task}": loss,
                    f"{prefix}lr": lr,
                    f"{prefix}grad_norm": grad_norm,
                    f"{prefix}tokens": float(tokens),
                    f"{prefix}step_seconds": time.perf_counter() - t0,
                }
                on_metrics(done_steps, metrics)
            if progress is not None:
                progress(done_steps, args.steps, loss)
        if args.checkpoint_every and done_steps % args.checkpoint_every == 0 and done_steps < args.steps:
            rng = all_gather_objects(capture_rng(), env)
            tensors = named_tensors(model, keep_names)  # every rank: FSDP gathers the shards
            optim_state = optimizer_state(model, optimizer, env)
            if env.is_main:
                state = {
                    "run_key": key,
                    "stage": str(spec.key),
                    "world": env.world,
                    "sharded": env.sharded,  # the optimizer state by parameter name (FSDP)
                    "samplers": {t: s.state_dict() for t, s in samplers.items()},
                    "losses": losses,
                    "tasks": tasks,
                    "seconds": seconds_before + time.perf_counter() - began,
                    "args": {k: v for k, v in asdict(args).items() if k != "task_mix"} | {"task_mix": mix},
                }
                save_checkpoint(
                    ckpt_dir,
                    done_steps,
                    tensors,
                    optimizer=optim_state,
                    scheduler=scheduler,
                    state=state,
                    rng=rng,
                    keep=args.keep_checkpoints,
                )
            barrier(env)

    # -- cleanup ----------------------------------------------------------------------------------------------
    model.eval()
    seconds = seconds_before + time.perf_counter() - began
    curve = None
    trained = named_tensors(model, keep_names)  # every rank: FSDP gathers the shards
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _atomic_save_tensors(trained, final)
        if losses:
            curve = save_loss_curve(losses, tasks, out / CURVE_FILE, f"stage {spec.key}: {spec.name}", args.loss)
        meta = {
            "run_key": key,
            "stage": str(spec.key),
            "steps": args.steps,
            "losses": losses,
            "tasks": tasks,
            "seconds": seconds,
            "resumed_from": resumed_from,
            "curve": str(curve) if curve else None,
        }
        tmp = done.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta) + "\n")
        os.replace(tmp, done)
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # done.json + final.safetensors replace them
    barrier(env)
    precision.restore()  # the saved tensors are float32; the model goes back to one dtype
    return StageResult(spec.key, args.steps, losses, tasks, seconds, resumed_from, out, final, curve)
