"""The ``base`` stage: bootstrap the tiny base VLM offline, so that the plugins adapt a model that already sees
(issue 4, item 1; HealthGPT starts from a pretrained Phi-3 and CLIP, METHODS.md §1, which a CPU run cannot have).

    from components.training.base import bootstrap_base
    base_dir = bootstrap_base(Path("data/vlhealth"), Path("work/base"), args=VLMArgs(merge=4), vocab_size=1000,
                              steps=2000, batch_size=16, lr=5e-4, vision_warmup=2000, seed=0)
    model = MedVLM.load(base_dir)            # tokenizer included

or ``python -m components.training.base data/vlhealth work/base``.

What it does: trains a byte-level BPE tokenizer on the TRAIN split's texts (both tasks' questions and answers, so
the generation prompts tokenize well too), builds the tiny VLM from ``args``, warms its vision encoder up
(:func:`warm_up_vision`: ``vision_warmup`` steps answering, from pooled patch features, the train questions whose
answer depends on the image only, the stand-in for a pretrained CLIP), then trains *all* of it (vision
encoder, comprehension projector, LM) on the train split's comprehension records with the stage trainer
(:func:`components.training.trainer.train_stage`, stage "base" of the table), then saves it with
:meth:`MedVLM.save`. Only the train split is read: the val/test groups stay unseen.

Caching: the folder is ``out_dir/base-<key>``, where the key hashes the model args, the tokenizer size, the
training settings, the seed and the dataset version (SHA-256 of ``records.jsonl``, which carries every image's
hash). A second call with the same inputs returns that folder at once. The finished folder appears atomically
(trained in a work folder, renamed into place); the work folder keeps the trainer's checkpoints, so a killed
bootstrap resumes. A GPU user's real base model is ``VLMArgs(lm_path=..., vision_path=...)`` in ``build_vlm``; this
bootstrap is the tiny default's stand-in for pretraining.

Loss: the *per-record* mean (``TrainArgs.loss="record"``): each record weighs the same, so the one-word closed
answers are not drowned by the 35-token captions; with the from-scratch LM that shortened the plateau before it
learns the yes/no questions (benchmarks/README.md, "Phantom closed questions"). Plus, with weight
``prompt_loss_weight`` (0.3), each record's mean loss over its prompt tokens (the template and the question; Shi et
al., NeurIPS 2024, "Instruction Tuning With Loss Over Instructions": it helps most where answers are short against
their prompts). Why: the yes/no questions whose answer is an XOR of a question word and the image ("Is the liver
larger than the spleen?", "Does the largest lesion lie on the left?") sat at chance in one base of two with the same
recipe; predicting the question's words makes the LM represent which organ or side a question names. Measured on
two seeds: closed accuracy 0.900 -> 0.930 and 0.910 -> 0.917 (larger_yn 0.91 -> 0.97 on the first), a small gain,
not a cure for the plateau (benchmarks/README.md, "The main job").

Budget (issue 4: "under 3 minutes on 2 cores"): the defaults (2,000 warm-up steps of 32 images, then 2,000 steps
of 16 records, AdamW 5e-4, cosine with 5% warm-up, the 4 x 4 patch merger of the embedded default) took 173 s in
`make run` on a fresh clone, 2 cores of the development machine (torch 2.13 CPU, 2 threads, 1.4 M parameters, 400
phantom subjects), about 40 s of it the warm-up. lr 2e-3 (the first default) never left the yes/no plateau;
without the warm-up the lesion questions stayed at chance (benchmarks/README.md, "Phantom closed questions").
Issue 17 (2026-12-06, another machine of the kind, 90-105 GFLOP/s per core): 219 s, warm-up 60 s, 12.6 steps/s
with answer-only logits; closed accuracy of the base alone 0.949 in one fresh run and 0.830 in the next (the yes/no
plateau, benchmarks/README.md, "The main job").
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from components.evaluation.vqa import normalize_answer, question_template, reference_of
from components.models.collate import VLMCollator
from components.models.memory import enable_gradient_checkpointing
from components.models.tokenizer import train_tokenizer
from components.models.vlm import MedVLM, VLMArgs, build_vlm
from components.training.data import ImageStore, dataset_fingerprint, read_records, select
from components.training.distributed import DistEnv, barrier
from components.training.optim import adamw
from components.training.trainer import (
    MetricsCallback,
    ProgressCallback,
    TrainArgs,
    load_tensors,
    named_tensors,
    train_stage,
)

BASE_FILE = "base.json"
BOOTSTRAP_VERSION = 5  # bump when the bootstrap's recipe changes: old caches then stop matching
DEFAULT_STEPS = 2000
DEFAULT_BATCH = 16
DEFAULT_LR = 5e-4
DEFAULT_VISION_WARMUP = 2000
DEFAULT_PROMPT_LOSS_WEIGHT = 0.3  # TrainArgs.prompt_loss_weight of the bootstrap (see the module docstring)
WARMUP_FILE = "vision_warmup.safetensors"


def train_texts(records: list[dict[str, Any]]) -> list[str]:
    """Every turn of every record, without the image placeholder (the tokenizer's corpus)."""
    return [str(t["value"]).replace("<image>", " ").strip() for r in records for t in r["conversations"]]


@dataclass(frozen=True)
class ImageAnswerTask:
    """One question whose answer is a function of the image alone: the same (normalised) question text, asked of
    many train images, with a few distinct answers. ``labels[i]`` indexes ``classes`` for ``images[i]``."""

    question: str
    classes: tuple[str, ...]
    images: tuple[str, ...]
    labels: tuple[int, ...]


def image_answer_tasks(
    records: Sequence[dict[str, Any]], *, min_examples: int = 32, max_classes: int = 16
) -> list[ImageAnswerTask]:
    """The vision warm-up's tasks, mined from comprehension records (captions excluded): every normalised question
    asked of at least ``min_examples`` records with 2 to ``max_classes`` distinct normalised answers. Asked of
    different images with different answers, such a question's answer depends on the image only (for the phantoms:
    "How many lesions are visible?", "Is this a CT image?", ...; VQA-RAD's free-form questions rarely repeat, so few
    qualify). Sorted by question, so the order is deterministic."""
    by_question: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for r in records:
        if r.get("task") == "comprehension" and r.get("kind") != "caption" and r.get("image"):
            answer = normalize_answer(reference_of(r))
            by_question[question_template(r)].append((str(r["image"]), answer))
    tasks = []
    for question in sorted(by_question):
        pairs = by_question[question]
        classes = tuple(sorted({a for _, a in pairs}))
        if len(pairs) >= min_examples and 2 <= len(classes) <= max_classes:
            labels = tuple(classes.index(a) for _, a in pairs)
            tasks.append(ImageAnswerTask(question, classes, tuple(i for i, _ in pairs), labels))
    return tasks


def warm_up_vision(
    model: MedVLM,
    tasks: Sequence[ImageAnswerTask],
    store: ImageStore,
    *,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
) -> list[float]:
    """Train ``model.vision`` (only) to answer ``tasks`` from the image: one linear head per task over the mean and
    the max of the patch features at ``model.args.comp_layer`` (the level the comprehension projector reads);
    each step draws one task and ``batch_size`` of its examples (seeded). The heads are discarded. Returns the
    per-step losses; ``progress`` hears ``(0, steps, None)``, then ``(step, steps, loss)`` after each step.

    Why: the base's LM path learns global properties (modality, which organ is larger) within the budget but not
    small local ones: a lesion barely moves a random encoder's features, so the LM cannot read it and sends back no
    gradient to sharpen it. Answering directly from pooled features breaks that loop in seconds (the max pools
    a local finding the way a radiologist's "is there anything anywhere" does). It stands in for the pretrained
    CLIP a real base starts from, and uses only the train split's own answers. Measured: benchmarks/README.md."""
    if not tasks or steps <= 0:
        return []
    width = 2 * int(model.vision.config.hidden_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = nn.ModuleList([nn.Linear(width, len(t.classes)) for t in tasks]).to(device)
    params = [*model.vision.parameters(), *heads.parameters()]
    optimizer = adamw(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng([seed, 4099])
    model.vision.train()
    losses = []
    if progress is not None:
        progress(0, steps, None)
    for step in range(1, steps + 1):
        k = int(rng.integers(len(tasks)))
        picked = rng.integers(len(tasks[k].images), size=batch_size)
        pixels = torch.stack([store.vision(tasks[k].images[i]) for i in picked]).to(device)
        target = torch.tensor([tasks[k].labels[i] for i in picked], device=device)
        hidden = model.vision(pixel_values=pixels, output_hidden_states=True).hidden_states[model.args.comp_layer]
        patches = hidden[:, 1:]
        logits = heads[k](torch.cat((patches.mean(dim=1), patches.amax(dim=1)), dim=-1))
        loss = F.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, steps, losses[-1])
    model.vision.zero_grad(set_to_none=True)
    return losses


def base_key(
    args: VLMArgs,
    *,
    vocab_size: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    warmup: int,
    dataset: str,
    vision_warmup: int = 0,
    prompt_loss_weight: float = 0.0,
) -> str:
    """The cache key of a base: a hash of everything that determines its weights."""
    inputs = {
        "vision_warmup": vision_warmup,
        "prompt_loss_weight": prompt_loss_weight,
        "version": BOOTSTRAP_VERSION,
        "args": asdict(args),
        "vocab_size": vocab_size,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "warmup": warmup,
        "dataset": dataset,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def bootstrap_base(
    dataset_dir: str | Path,
    out_dir: str | Path,
    *,
    args: VLMArgs | None = None,
    vocab_size: int = 1000,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    warmup: int | None = None,
    vision_warmup: int = DEFAULT_VISION_WARMUP,
    prompt_loss_weight: float = DEFAULT_PROMPT_LOSS_WEIGHT,
    checkpoint_every: int = 100,
    progress: ProgressCallback | None = None,
    warmup_progress: ProgressCallback | None = None,
    on_metrics: MetricsCallback | None = None,
    env: DistEnv | None = None,
    gradient_checkpointing: bool = False,
) -> Path:
    """Train (or find cached) the base VLM for ``dataset_dir``; return its folder (a :meth:`MedVLM.save` folder
    plus ``base.json``). See the module docstring. ``warmup_progress`` follows the vision warm-up, ``progress``
    the base steps (rank 0; :data:`components.training.trainer.ProgressCallback`); a cached base reports nothing."""
    args = args or VLMArgs()
    env = env or DistEnv()
    warmup = max(1, steps // 20) if warmup is None else warmup
    dataset = Path(dataset_dir)
    key = base_key(
        args,
        vocab_size=vocab_size,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        warmup=warmup,
        dataset=dataset_fingerprint(dataset),
        vision_warmup=vision_warmup,
        prompt_loss_weight=prompt_loss_weight,
    )
    out = Path(out_dir)
    folder = out / f"base-{key}"
    if (folder / BASE_FILE).is_file() and (folder / "vlm.json").is_file():
        return folder
    if args.lm_path or args.vision_path:
        raise ValueError(
            "bootstrap_base trains the tiny model from scratch; a checkpoint given by lm_path/vision_path is a "
            "base already: build it with build_vlm and save it with MedVLM.save instead"
        )

    records = read_records(dataset)
    train = select(records, split="train")
    comprehension = select(train, task="comprehension")
    if not comprehension:
        raise ValueError(f"{dataset} has no train-split comprehension records to bootstrap the base model on")
    tokenizer = train_tokenizer(train_texts(train), vocab_size=vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: MedVLM = build_vlm(args, tokenizer)
    model.to(env.device)
    if gradient_checkpointing:  # issue 20; the same weights either way, so not in the cache key
        enable_gradient_checkpointing(model)  # the whole model trains here, vision tower included
    store = ImageStore(dataset, model.image_size, model.channels)
    collate = VLMCollator(tokenizer, model.num_image_tokens, store.vision, max_length=args.max_positions)
    work = out / f".base-{key}.work"
    warm = _vision_warmup(
        model, comprehension, store, work, vision_warmup, seed, env, warmup_progress if env.is_main else None
    )
    result = train_stage(
        model,
        "base",
        {"comprehension": comprehension},
        collate,
        TrainArgs(
            steps=steps,
            lr=lr,
            batch_size=batch_size,
            warmup=warmup,
            checkpoint_every=checkpoint_every,
            seed=seed,
            loss="record",
            prompt_loss_weight=prompt_loss_weight,
        ),
        out_dir=work,
        env=env,
        save_names=[n for n, _ in model.named_parameters()],
        on_metrics=on_metrics,
        progress=progress,
    )
    if env.sharded:  # FSDP: rank 0 saves a plain model holding the gathered tensors
        gathered = named_tensors(model, [n for n, _ in model.named_parameters()])  # every rank: a collective
        if env.is_main:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = build_vlm(args, tokenizer)
            load_tensors(model, gathered, strict_names=list(gathered))
    if env.is_main:
        tmp = out / f".base-{key}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        model.to("cpu").save(tmp)
        summary = {
            "key": key,
            "dataset": str(dataset),
            "records": len(comprehension),
            "vocab_size": len(tokenizer),
            "seconds": round(result.seconds, 2),
            "first_loss": result.losses[0] if result.losses else None,
            "last_loss": result.losses[-1] if result.losses else None,
            "vision_warmup": warm,
            "loss_curve": "loss.png" if result.curve else None,
        }
        if result.curve:
            shutil.copy(result.curve, tmp / "loss.png")
        (tmp / BASE_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        shutil.rmtree(work, ignore_errors=True)
    barrier(env)
    return folder


def _vision_warmup(
    model: MedVLM,
    records: list[dict[str, Any]],
    store: ImageStore,
    work: Path,
    steps: int,
    seed: int,
    env: DistEnv,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Run :func:`warm_up_vision` once per work folder (its encoder is saved there, so a resumed bootstrap does not
    redo it: ``progress`` then hears ``(steps, steps, None)``, resumed at the end); every rank computes the same
    result (same seed, same data), so no broadcast is needed."""
    tasks = image_answer_tasks(records)
    summary: dict[str, Any] = {"steps": steps, "tasks": len(tasks)}
    if steps <= 0 or not tasks:
        return summary
    saved = work / WARMUP_FILE
    if saved.is_file():
        model.vision.load_state_dict(load_file(str(saved), device=str(env.device)))
        if progress is not None:
            progress(steps, steps, None)
        return {**summary, "resumed": True}
    started = time.perf_counter()
    losses = warm_up_vision(model, tasks, store, steps=steps, seed=seed, device=env.device, progress=progress)
    if env.is_main:
        work.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in model.vision.state_dict().items()}, str(saved))
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        **summary,
        "seconds": round(time.perf_counter() - started, 2),
        "first_loss": losses[0],
        "last_loss": sum(tail) / len(tail),
    }


def _printer(name: str, every: int) -> ProgressCallback:
    def show(step: int, total: int, loss: float | None) -> None:
        if loss is not None and (step % every == 0 or step == total):
            print(f"{name} {step}/{total} loss {loss:.4f}", flush=True)

    return show


def main(argv: list[str] | None = None) -> None:
    """Bootstrap a base VLM on a built VL-Health folder and print its folder."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m components.training.base", description=main.__doc__)
    ap.add_argument("dataset_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    ap.add_argument("--lr", type=float, default=DEFAULT_LR)
    ap.add_argument("--vision-warmup", type=int, default=DEFAULT_VISION_WARMUP)
    ap.add_argument("--prompt-loss-weight", type=float, default=DEFAULT_PROMPT_LOSS_WEIGHT)
    ap.add_argument("--vocab-size", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ns = ap.parse_args(argv)
    torch.set_num_threads(ns.threads)
    folder = bootstrap_base(
        ns.dataset_dir,
        ns.out_dir,
        vocab_size=ns.vocab_size,
        steps=ns.steps,
        batch_size=ns.batch_size,
        lr=ns.lr,
        vision_warmup=ns.vision_warmup,
        prompt_loss_weight=ns.prompt_loss_weight,
        seed=ns.seed,
        warmup_progress=_printer("vision warm-up", every=100),
        progress=_printer("base", every=25),
    )
    print(folder)


if __name__ == "__main__":
    main()
