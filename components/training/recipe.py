"""HealthGPT's training, top to bottom: base -> VQ tokenizer -> plugins -> stages 1, 2, 3 -> save -> evaluate
(METHODS.md §1; issue 4, items 5-6). The lead's flow calls :func:`train_recipe` and :func:`evaluate_recipe`;
the same code runs as a command, alone or under torchrun::

    python -m components.training.recipe --dataset data/vlhealth --out work/train
    torchrun --nproc_per_node 2 -m components.training.recipe --dataset data/vlhealth --out work/train
    python -m components.training.recipe --dataset data/vlhealth --out work/train --stages mixed   # the ablation

Setup:
  1. **base**: :func:`components.training.base.bootstrap_base` (cached by config + data hash), or ``base_dir``.
  2. **VQ tokenizer**: ``train_vq`` on the train split's images (``work/vq-<hash of config, steps, seed, data>``,
     kept across re-runs), or ``vq_dir``.
  3. **model**: the base + ``<img_start>``/``<img_end>``/code tokens (new rows at the mean) + two plugins
     ("comprehension", "generation") of ``adapter_kind`` on every Linear of the LM except the head.
  4. **data**: train-split pools (comprehension records, generation records, reconstruction of every train image),
     each target image's VQ codes, one collator.
Train: each stage of ``stages`` with :func:`components.training.trainer.train_stage` into ``work/stage<k>``
(a finished stage is loaded, a killed one resumes from its last checkpoint; ``stages=(2,)`` starts from the finished
stage 1 in the same work folder, so ``medtune train --stage 1``, then ``--stage 2``, then ``--stage 3`` works).
Cleanup: rank 0 saves the trained model (:func:`components.training.plugins.save_trained`) to ``work/model``
with a copy of the VQ tokenizer, and (``evaluate=True``) scores it on the test split.

Measured on the embedded default (400 phantom subjects, 2 CPU cores, 2 threads; a fresh clone's `make run`, 5 m 40 s
after the venv): base 173 s (vision warm-up ~40 s), stages 1-3 154 s. Test split (40 held-out subjects): closed
accuracy 0.927 (majority baselines 0.493 per question type, 0.528 per template), CT->MRI SSIM 0.465 (copy-the-input
0.047). See benchmarks/README.md, "Phantom closed questions". Issue 17's schedule (stages 300 + 800 steps, VQ 400):
train 116 s, `make run` 394 s on a 90-105 GFLOP/s-per-core machine (benchmarks/README.md, "The main job").

Defaults (tuned on the embedded default, 2 CPU cores; see :data:`DEFAULT_STAGE_STEPS`): METHODS.md's learning rate
2e-4 is for a pretrained 3.8B LM; the tiny LM here trains its plugins and projectors at 1e-3 and stage 2's embedding
rows at 3e-3. Plugins: H-LoRA, 4 experts, total rank 16 (comprehension) and 32 (generation): METHODS.md's 1:4 ratio
of the released ranks, halved, for a 128-wide LM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from components.adapters.flix.features import feature_vocabulary
from components.data.records import TASKS
from components.evaluation.report import EvalResult, evaluate_model, write_predictions
from components.models.backend import image_loader, store_size
from components.models.memory import enable_gradient_checkpointing
from components.models.vlm import MedVLM, VLMArgs
from components.models.vq import VQConfig, VQTokenizer, load_dataset_images, train_vq
from components.training.base import (
    DEFAULT_BATCH,
    DEFAULT_LR,
    DEFAULT_PROMPT_LOSS_WEIGHT,
    DEFAULT_STEPS,
    DEFAULT_VISION_WARMUP,
    bootstrap_base,
)
from components.training.data import (
    ImageStore,
    dataset_fingerprint,
    encode_targets,
    read_records,
    record_pools,
    select,
    target_codes_from,
)
from components.training.distributed import DistEnv, barrier, close_distributed, init_distributed, resolve_device
from components.training.plugins import AdapterArgs, load_trained, prepare_model, save_trained
from components.training.stages import THREE_STAGES, StageKey, parameter_groups, stage_spec
from components.training.trainer import (
    DONE_FILE,
    FINAL_FILE,
    MetricsCallback,
    ProgressCallback,
    StageResult,
    TrainArgs,
    load_tensors,
    named_tensors,
    train_stage,
)

#: ``progress(phase, step, total, loss)``: phases "base vision warm-up", "base", "VQ tokenizer", "stage 1", ...; per
#: phase the :data:`components.training.trainer.ProgressCallback` protocol (``loss`` None where there is none).
RecipeProgress = Callable[[str, int, int, float | None], None]
#: Optimizer steps per stage (batch 8). Stage 2 is where the new code rows learn which code is which (they all start
#: at the mean, see components.training.stages), so it gets a higher rate and most of its steps go to generation
#: (64 codes per answer, learned from scratch); stage 3 then trains each plugin on its own task, half and half.
#: Issue 17 (the 5-minute main job) cut 500 + 1,600 steps to 300 + 800 with stage 3 from 30/70 to 50/50: on the
#: embedded default the base answers the closed questions (0.949 alone) and stage 3 kept, not raised, that figure
#: (0.940 after the longer schedule), while generation went from 1,470 to 610 steps (CT->MRI SSIM 0.47 -> 0.41).
DEFAULT_STAGE_STEPS: dict[StageKey, int] = {1: 100, 2: 300, 3: 800}
DEFAULT_STAGE_LR: dict[StageKey, float] = {1: 1e-3, 2: 3e-3, 3: 1e-3, "mixed": 2e-3}
_GEN_HEAVY = {"comprehension": 0.3, "generation": 0.7}
_EVEN = {"comprehension": 0.5, "generation": 0.5}
DEFAULT_TASK_MIX: dict[StageKey, dict[str, float]] = {2: _GEN_HEAVY, 3: _EVEN, "mixed": _GEN_HEAVY}
VQ_DIR, MODEL_DIR, METRICS_FILE, PREDICTIONS_FILE = "vq", "model", "metrics.json", "predictions.jsonl"


@dataclass
class TrainResult:
    """What a recipe run produced: folders and files (references, not payloads) and its numbers."""

    work_dir: Path
    base_dir: Path
    vq_dir: Path
    model_dir: Path  # save_trained folder: base copy, tokenizer, adapters/, trained.safetensors, vq/
    adapters: dict[str, Path]  # task -> peft adapter folder (save_pretrained)
    tokenizer_dir: Path
    loss_curves: dict[str, Path]  # stage -> PNG
    stages: list[dict[str, Any]]  # per-stage summaries (steps, seconds, first/last loss)
    metrics: dict[str, float] = field(default_factory=dict)  # timings, VQ metrics, last losses, eval scores
    predictions: Path | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        return json.loads(json.dumps(out, default=str))


def _named_progress(progress: RecipeProgress | None, name: str) -> ProgressCallback | None:
    if progress is None:
        return None

    def report(step: int, total: int, loss: float | None) -> None:
        progress(name, step, total, loss)

    return report


def _stage_keys(stages: Sequence[StageKey] | str) -> list[StageKey]:
    if isinstance(stages, str):
        parts: list[StageKey] = [p.strip() for p in stages.split(",") if p.strip()]
    else:
        parts = list(stages)
    keys = [stage_spec(p).key for p in parts]
    if any(k == "base" for k in keys):
        raise ValueError("the base stage is bootstrap_base's; stages are 1, 2, 3 or 'mixed'")
    return keys


def _vq_tokenizer(
    dataset: Path, work: Path, vq_dir: str | Path | None, config: VQConfig, *, steps: int, seed: int, env: DistEnv,
    records: list[dict[str, Any]], progress: ProgressCallback | None = None,
) -> tuple[VQTokenizer, Path, dict[str, float]]:  # fmt: skip
    """A trained VQ tokenizer: the given one, the one of an earlier run in ``work/vq``, or a new one (rank 0)."""
    if vq_dir is not None:
        return VQTokenizer.load(Path(vq_dir)), Path(vq_dir), {}
    described = {"config": asdict(config), "steps": steps, "seed": seed, "dataset": dataset_fingerprint(dataset)}
    key = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
    folder = work / f"{VQ_DIR}-{key}"  # another config or dataset trains another tokenizer
    metrics: dict[str, float] = {}
    if not (folder / "model.safetensors").is_file() and env.is_main:
        images = load_dataset_images(dataset, select(records, split="train"), channels=config.channels)
        vq, metrics = train_vq(images, config, steps=steps, seed=seed, progress=progress)
        vq.save(folder)
    barrier(env)
    return VQTokenizer.load(folder), folder, {f"vq/{k}": float(v) for k, v in metrics.items()}


def train_recipe(
    dataset_dir: str | Path,
    work_dir: str | Path,
    *,
    model_args: VLMArgs | None = None,
    vocab_size: int = 1000,
    base_dir: str | Path | None = None,
    base_steps: int = DEFAULT_STEPS,
    base_batch_size: int = DEFAULT_BATCH,
    base_lr: float = DEFAULT_LR,
    base_vision_warmup: int = DEFAULT_VISION_WARMUP,
    base_prompt_loss_weight: float = DEFAULT_PROMPT_LOSS_WEIGHT,
    vq_config: VQConfig | None = None,
    vq_steps: int = 400,
    vq_dir: str | Path | None = None,
    adapter_kind: str = "hlora",
    rank: int = 16,
    generation_rank: int | None = 32,
    num_experts: int = 4,
    alpha: float | None = None,
    dropout: float = 0.05,
    rank_pattern: Mapping[str, int] | None = None,
    target_modules: list[str] | None = None,
    features: Sequence[str] = ("task", "modality"),
    rank_per_feature: int | None = None,
    feature_dropout: float = 0.1,
    stage_steps: Mapping[StageKey, int] | None = None,
    stage_lr: Mapping[StageKey, float] | None = None,
    task_mix: Mapping[StageKey, Mapping[str, float]] | None = None,
    batch_size: int = 8,
    grad_accum: int = 1,
    warmup_steps: int | None = None,
    max_grad_norm: float | None = 1.0,
    checkpoint_every: int = 50,
    seed: int = 0,
    stages: Sequence[StageKey] | str = THREE_STAGES,
    evaluate: bool = True,
    eval_split: str = "test",
    on_metrics: MetricsCallback | None = None,
    progress: RecipeProgress | None = None,
    device: str = "auto",
    env: DistEnv | None = None,
    gradient_checkpointing: bool = False,
    quantize: str = "none",
) -> TrainResult:
    """Run the whole training (see the module docstring); every argument is a plain value.

    ``stage_steps``/``stage_lr``/``task_mix`` are keyed by stage (1, 2, 3, "mixed"); missing keys take the defaults
    (``"mixed"`` defaults to the sum of the three stages' steps, so the ablation trains as long). ``warmup_steps``
    None means 5% of each stage's steps. Under torchrun, ``batch_size`` is the global micro-batch.
    ``gradient_checkpointing`` recomputes layer activations in the backward (:mod:`components.models.memory`);
    ``quantize`` "int8"/"nf4" loads the stages' frozen LM in 4-/8-bit (QLoRA, :mod:`components.models.quantize`)."""
    own_env = env is None
    env = env or init_distributed(device)
    dataset, work = Path(dataset_dir), Path(work_dir)
    model_args = model_args or VLMArgs()
    vq_config = vq_config or VQConfig(image_size=model_args.image_size, channels=model_args.channels)
    keys = _stage_keys(stages)
    steps_of = {**DEFAULT_STAGE_STEPS, **dict(stage_steps or {})}
    steps_of.setdefault("mixed", sum(steps_of[k] for k in THREE_STAGES))
    lr_of = {**DEFAULT_STAGE_LR, **dict(stage_lr or {})}
    mix_of = {**DEFAULT_TASK_MIX, **dict(task_mix or {})}
    adapter = AdapterArgs(
        kind=adapter_kind, rank=rank, generation_rank=generation_rank, num_experts=num_experts, alpha=alpha,
        dropout=dropout, rank_pattern=dict(rank_pattern or {}), target_modules=target_modules,
    )  # fmt: skip
    timings: dict[str, float] = {}
    metrics: dict[str, float] = {}
    t0 = time.perf_counter()

    # -- setup: base, VQ, model, data ------------------------------------------------------------------------------
    if base_dir is None:
        base = bootstrap_base(
            dataset, work / "base", args=model_args, vocab_size=vocab_size, steps=base_steps,
            batch_size=base_batch_size, lr=base_lr, vision_warmup=base_vision_warmup,
            prompt_loss_weight=base_prompt_loss_weight, seed=seed, env=env,
            on_metrics=on_metrics,
            progress=_named_progress(progress, "base"),
            warmup_progress=_named_progress(progress, "base vision warm-up"),
            gradient_checkpointing=gradient_checkpointing,
        )  # fmt: skip
    else:
        base = Path(base_dir)
    timings["time/base_seconds"] = time.perf_counter() - t0
    records = read_records(dataset)
    if adapter_kind == "flix":  # FLix's vocabulary: the feature values of the train split (METHODS.md §3)
        vocabulary = feature_vocabulary(select(records, split="train"), list(features))
        adapter = replace(
            adapter, feature_values=vocabulary, rank_per_feature=rank_per_feature, feature_dropout=feature_dropout
        )
    t1 = time.perf_counter()
    vq, vq_folder, vq_metrics = _vq_tokenizer(
        dataset, work, vq_dir, vq_config, steps=vq_steps, seed=seed, env=env, records=records,
        progress=_named_progress(progress, "VQ tokenizer") if env.is_main else None,
    )  # fmt: skip
    metrics.update(vq_metrics)
    metrics.update({"dist/world_size": float(env.world), "dist/fsdp": float(env.sharded)})  # how the stages ran
    timings["time/vq_seconds"] = time.perf_counter() - t1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # plugin init (overwritten on resume, but the same anyway)
        model = prepare_model(
            base, codebook_size=vq.config.codebook_size, adapter=adapter, quantize=quantize, device=env.device
        )
    model.to(env.device)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    assert model.tokenizer is not None
    pools = record_pools(records, split="train")
    store = ImageStore(dataset, *store_size(model, vq.config.image_size, vq.config.channels))
    codes = encode_targets(vq, store, [*pools["generation"], *pools["reconstruction"]])
    collate = model.collator(
        image_loader(model, store), target_codes=target_codes_from(codes),
        max_length=model_args.max_positions if model.input_kind == "tensor" else None,
        with_features=adapter_kind == "flix",
    )  # fmt: skip
    groups = parameter_groups(model)
    save_names = sorted(
        {n for g in ("projector.comprehension", "projector.generation", "embeddings", "head") for n in groups[g]}
        | {n for t in TASKS for n in groups[f"plugin.{t}"]}
    )

    # -- train: the stages -------------------------------------------------------------------------------------------
    _continue_from_earlier_stage(model, work, keys, save_names)
    results: list[StageResult] = []
    for key in keys:
        steps = steps_of[key]
        args = TrainArgs(
            steps=steps, lr=lr_of[key], batch_size=batch_size, grad_accum=grad_accum,
            warmup=max(1, steps // 20) if warmup_steps is None else warmup_steps, max_grad_norm=max_grad_norm,
            checkpoint_every=checkpoint_every, seed=seed, task_mix=dict(mix_of.get(key, {})),
        )  # fmt: skip
        t_stage = time.perf_counter()
        result = train_stage(
            model, key, pools, collate, args, out_dir=work / f"stage{key}", env=env, save_names=save_names,
            on_metrics=on_metrics, progress=_named_progress(progress, f"stage {key}"),
        )  # fmt: skip
        results.append(result)
        timings[f"time/stage{key}_seconds"] = time.perf_counter() - t_stage
        if result.losses:
            metrics[f"stage{key}/final_loss"] = result.losses[-1]

    # -- cleanup: save, evaluate ------------------------------------------------------------------------------------
    model_dir = work / MODEL_DIR
    predictions = None
    if env.sharded:  # FSDP: rank 0 saves (and evaluates) a plain model holding the gathered trained tensors
        gathered = named_tensors(model, save_names)  # every rank: a collective
        if env.is_main:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = prepare_model(base, codebook_size=vq.config.codebook_size, adapter=adapter)
            model.to(env.device)
            load_tensors(model, gathered, strict_names=save_names)
    if env.is_main:
        save_trained(
            model, model_dir, base_dir=base,
            extra={"stages": [str(k) for k in keys], "adapter": asdict(adapter), "seed": seed, "dataset": str(dataset)},
        )  # fmt: skip
        shutil.copytree(vq_folder, model_dir / VQ_DIR, dirs_exist_ok=True)
        if evaluate:
            t_eval = time.perf_counter()
            evaluation = evaluate_model(model, dataset, vq=vq, split=eval_split)
            metrics.update(evaluation.metrics)
            predictions = write_predictions(evaluation.predictions, work / PREDICTIONS_FILE)
            timings["time/eval_seconds"] = time.perf_counter() - t_eval
        timings["time/total_seconds"] = time.perf_counter() - t0
        metrics.update(timings)
        (work / METRICS_FILE).write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    barrier(env)
    if own_env:
        close_distributed(env)
    return TrainResult(
        work_dir=work,
        base_dir=base,
        vq_dir=vq_folder,
        model_dir=model_dir,
        adapters={t: model_dir / "adapters" / t for t in TASKS},
        tokenizer_dir=model_dir / "tokenizer",
        loss_curves={str(r.stage): r.curve for r in results if r.curve is not None},
        stages=[r.summary() for r in results],
        metrics=metrics,
        predictions=predictions,
    )


def _continue_from_earlier_stage(model: MedVLM, work: Path, keys: Sequence[StageKey], names: Sequence[str]) -> None:
    """``stages=(2,)`` or ``(2, 3)`` continue from the stage before (``medtune train --stage 2``): load the finished
    stage k-1's tensors from ``work``, or fail with the command to run first."""
    numbered = [k for k in keys if isinstance(k, int)]
    if not numbered or min(numbered) == 1:
        return
    before = min(numbered) - 1
    final, done = work / f"stage{before}" / FINAL_FILE, work / f"stage{before}" / DONE_FILE
    if not (final.is_file() and done.is_file()):
        raise FileNotFoundError(
            f"stage {min(numbered)} continues from stage {before}, but {work}/stage{before} holds no finished stage: "
            f"train stage {before} first (same work folder), or run all stages"
        )
    load_tensors(model, load_file(str(final)), strict_names=names)


def evaluate_recipe(
    model_dir: str | Path,
    dataset_dir: str | Path,
    *,
    split: str = "test",
    out_dir: str | Path | None = None,
    batch_size: int = 16,
    device: str = "auto",
    progress: ProgressCallback | None = None,
) -> EvalResult:
    """Score a :func:`train_recipe` model folder on ``split``; with ``out_dir``, write metrics.json and
    predictions.jsonl there. ``progress(done, total, None)`` counts records answered (see :func:`evaluate_model`)."""
    folder = Path(model_dir)
    model: MedVLM = load_trained(folder)
    vq = VQTokenizer.load(folder / VQ_DIR) if (folder / VQ_DIR).is_dir() else None
    dev = resolve_device(device)
    model.to(dev)
    if vq is not None:
        vq.to(dev)
    result = evaluate_model(model, dataset_dir, vq=vq, split=split, batch_size=batch_size, progress=progress)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / METRICS_FILE).write_text(json.dumps(result.metrics, indent=1, sort_keys=True) + "\n")
        write_predictions(result.predictions, out / PREDICTIONS_FILE)
    return result


def _stage_ints(text: str | None) -> dict[StageKey, int]:
    """ "1=60,2=40,3=200" -> {1: 60, 2: 40, 3: 200}."""
    out: dict[StageKey, int] = {}
    for part in (text or "").split(","):
        if part.strip():
            k, v = part.split("=")
            out[stage_spec(k.strip()).key] = int(v)
    return out


def _stage_floats(text: str | None) -> dict[StageKey, float]:
    out: dict[StageKey, float] = {}
    for part in (text or "").split(","):
        if part.strip():
            k, v = part.split("=")
            out[stage_spec(k.strip()).key] = float(v)
    return out


def main(argv: list[str] | None = None) -> None:
    """Train (and evaluate) with HealthGPT's three stages; prints a JSON summary (rank 0)."""
    ap = argparse.ArgumentParser(prog="python -m components.training.recipe", description=main.__doc__)
    ap.add_argument("--dataset", type=Path, required=True, help="a built VL-Health folder")
    ap.add_argument("--out", type=Path, required=True, help="work folder (base, vq, stage*, model)")
    ap.add_argument("--stages", default="1,2,3", help="'1,2,3', a subset, or 'mixed' (the ablation)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps of every stage")
    ap.add_argument("--stage-steps", default=None, help="per stage, e.g. '1=60,2=40,3=200' (overrides --steps)")
    ap.add_argument("--lr", type=float, default=None, help="learning rate of every stage")
    ap.add_argument("--stage-lr", default=None, help="per stage, e.g. '1=1e-3,3=5e-4'")
    ap.add_argument(
        "--generation-share", type=float, default=None, help="share of generation steps in stages 2, 3 and mixed"
    )
    ap.add_argument("--batch-size", type=int, default=8, help="global micro-batch")
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--warmup-steps", type=int, default=None)
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adapter-kind", default="hlora", choices=["hlora", "lora", "flix"])
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--generation-rank", type=int, default=32)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--features", default="task,modality", help="FLix: record features, comma-separated")
    ap.add_argument("--rank-per-feature", type=int, default=None, help="FLix: rank of each feature value's adapter")
    ap.add_argument("--feature-dropout", type=float, default=0.1, help="FLix: feature dropout in training")
    ap.add_argument("--model-json", default=None, help="VLMArgs fields as JSON (e.g. a tiny test model)")
    ap.add_argument("--vq-json", default=None, help="VQConfig fields as JSON")
    ap.add_argument("--vocab-size", type=int, default=1000)
    ap.add_argument("--base-dir", type=Path, default=None, help="an existing base (skips the bootstrap)")
    ap.add_argument("--base-steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--base-batch-size", type=int, default=DEFAULT_BATCH)
    ap.add_argument("--base-lr", type=float, default=DEFAULT_LR)
    ap.add_argument("--base-vision-warmup", type=int, default=DEFAULT_VISION_WARMUP)
    ap.add_argument("--base-prompt-loss-weight", type=float, default=DEFAULT_PROMPT_LOSS_WEIGHT)
    ap.add_argument("--vq-dir", type=Path, default=None, help="a trained VQ tokenizer (skips its training)")
    ap.add_argument("--vq-steps", type=int, default=400)
    ap.add_argument("--no-evaluate", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--distributed", default="ddp", choices=["ddp", "fsdp"], help="under torchrun: DDP or FSDP2")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads per process")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in the backward")
    ap.add_argument("--quantize", default="none", choices=["none", "int8", "nf4"], help="4-/8-bit frozen LM (CUDA)")
    ns = ap.parse_args(argv)
    torch.set_num_threads(ns.threads)
    stage_steps: dict[StageKey, int] = {k: ns.steps for k in (*THREE_STAGES, "mixed")} if ns.steps else {}
    if ns.steps:
        stage_steps["mixed"] = 3 * ns.steps
    stage_steps.update(_stage_ints(ns.stage_steps))
    stage_lr: dict[StageKey, float] = {k: ns.lr for k in (*THREE_STAGES, "mixed")} if ns.lr else {}
    stage_lr.update(_stage_floats(ns.stage_lr))
    task_mix: dict[StageKey, dict[str, float]] | None = None
    if ns.generation_share is not None:
        share = {"comprehension": 1.0 - ns.generation_share, "generation": ns.generation_share}
        task_mix = {2: share, 3: share, "mixed": share}
    env = init_distributed(ns.device, strategy=ns.distributed)

    def show(stage: str, step: int, total: int, loss: float | None) -> None:
        if loss is not None and (step == total or step % 25 == 0):
            print(f"{stage}: step {step}/{total} loss {loss:.4f}", flush=True)

    try:
        result = train_recipe(
            ns.dataset, ns.out,
            model_args=VLMArgs(**json.loads(ns.model_json)) if ns.model_json else None,
            vq_config=VQConfig(**json.loads(ns.vq_json)) if ns.vq_json else None,
            vocab_size=ns.vocab_size, base_dir=ns.base_dir, base_steps=ns.base_steps,
            base_batch_size=ns.base_batch_size, base_lr=ns.base_lr,
            base_vision_warmup=ns.base_vision_warmup, base_prompt_loss_weight=ns.base_prompt_loss_weight,
            vq_dir=ns.vq_dir, vq_steps=ns.vq_steps,
            adapter_kind=ns.adapter_kind, rank=ns.rank, generation_rank=ns.generation_rank, num_experts=ns.experts,
            dropout=ns.dropout, features=[f for f in ns.features.split(",") if f.strip()],
            rank_per_feature=ns.rank_per_feature, feature_dropout=ns.feature_dropout, stage_steps=stage_steps,
            stage_lr=stage_lr, task_mix=task_mix, batch_size=ns.batch_size,
            grad_accum=ns.grad_accum, warmup_steps=ns.warmup_steps, checkpoint_every=ns.checkpoint_every,
            seed=ns.seed, stages=ns.stages, evaluate=not ns.no_evaluate, device=ns.device, env=env,
            gradient_checkpointing=ns.gradient_checkpointing, quantize=ns.quantize,
            progress=show if env.is_main else None,
        )  # fmt: skip
        if env.is_main:
            print(json.dumps(result.to_json(), indent=1))
    finally:
        close_distributed(env)


if __name__ == "__main__":
    main()
