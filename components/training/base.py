"""The ``base`` stage: bootstrap the tiny base VLM offline, so that the plugins adapt a model that already sees
(issue 4, item 1; HealthGPT starts from a pretrained Phi-3 and CLIP, METHODS.md §1, which a CPU run cannot have).

    from components.training.base import bootstrap_base
    base_dir = bootstrap_base(Path("data/vlhealth"), Path("work/base"), args=VLMArgs(), vocab_size=1000,
                              steps=400, batch_size=32, lr=2e-3, seed=0)
    model = MedVLM.load(base_dir)            # tokenizer included

or ``python -m components.training.base data/vlhealth work/base --steps 400``.

What it does: trains a byte-level BPE tokenizer on the TRAIN split's texts (both tasks' questions and answers, so
the generation prompts tokenize well too), builds the tiny VLM from ``args`` and trains *all* of it (vision
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
learns the yes/no questions (benchmarks/README.md, "Phantom closed questions").

Budget (issue 4: "under 3 minutes on 2 cores"): the defaults (2,500 steps of 16 records, AdamW 5e-4, cosine with
5% warm-up, the 4 x 4 patch merger of the embedded default) took 143-167 s on 2 cores of the development machine
(torch 2.13 CPU, 2 threads, 1.4 M parameters, 400 phantom subjects). lr 2e-3 (the first default) never left the
yes/no plateau.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from components.models.collate import VLMCollator
from components.models.tokenizer import train_tokenizer
from components.models.vlm import MedVLM, VLMArgs, build_vlm
from components.training.data import ImageStore, dataset_fingerprint, read_records, select
from components.training.distributed import DistEnv, barrier
from components.training.trainer import MetricsCallback, ProgressCallback, TrainArgs, train_stage

BASE_FILE = "base.json"
BOOTSTRAP_VERSION = 2  # bump when the bootstrap's recipe changes: old caches then stop matching
DEFAULT_STEPS = 2500
DEFAULT_BATCH = 16
DEFAULT_LR = 5e-4


def train_texts(records: list[dict[str, Any]]) -> list[str]:
    """Every turn of every record, without the image placeholder (the tokenizer's corpus)."""
    return [str(t["value"]).replace("<image>", " ").strip() for r in records for t in r["conversations"]]


def base_key(
    args: VLMArgs, *, vocab_size: int, steps: int, batch_size: int, lr: float, seed: int, warmup: int, dataset: str
) -> str:
    """The cache key of a base: a hash of everything that determines its weights."""
    inputs = {
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
    checkpoint_every: int = 100,
    progress: ProgressCallback | None = None,
    on_metrics: MetricsCallback | None = None,
    env: DistEnv | None = None,
) -> Path:
    """Train (or find cached) the base VLM for ``dataset_dir``; return its folder (a :meth:`MedVLM.save` folder
    plus ``base.json``). See the module docstring."""
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
    store = ImageStore(dataset, model.image_size, model.channels)
    collate = VLMCollator(tokenizer, model.num_image_tokens, store.vision, max_length=args.max_positions)
    work = out / f".base-{key}.work"
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
        ),
        out_dir=work,
        env=env,
        save_names=[n for n, _ in model.named_parameters()],
        on_metrics=on_metrics,
        progress=progress,
    )
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


def main(argv: list[str] | None = None) -> None:
    """Bootstrap a base VLM on a built VL-Health folder and print its folder."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m components.training.base", description=main.__doc__)
    ap.add_argument("dataset_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    ap.add_argument("--lr", type=float, default=DEFAULT_LR)
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
        seed=ns.seed,
        progress=lambda s, n, loss: print(f"base {s}/{n} loss {loss:.4f}", flush=True) if s % 25 == 0 else None,
    )
    print(folder)


if __name__ == "__main__":
    main()
