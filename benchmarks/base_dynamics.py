"""How fast the tiny base learns to see: closed-question accuracy on the phantom test split every ``--eval`` steps.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/base_dynamics.py --subjects 400 --steps 2500 --batch 16 \\
        --lr 5e-4 --loss record --model '{"merge": 4}' --eval 500

A scratch loop beside :func:`components.training.base.bootstrap_base`: the same model, tokenizer, collator, loss
and evaluation, but its own AdamW + cosine loop so that it can score the model mid-run (the bootstrap only returns
the finished base). ``--model`` overrides :class:`VLMArgs` fields (JSON). ``--clip-steps N`` first trains the vision
encoder for N steps CLIP-style (transformers' ``CLIPModel``: contrastive loss between each train image and its
caption, a 2-layer text tower) and copies it back, the stand-in for a pretrained CLIP that was tried and did not
help (benchmarks/README.md). Prints one line per score: step, seconds (evaluation excluded), mean loss, closed
accuracy overall and per question type. Results: benchmarks/README.md, "Phantom closed questions".
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.data.build import build_dataset
from components.data.sources.phantom import PhantomSourceConfig
from components.evaluation.report import evaluate_model
from components.models.collate import VLMCollator
from components.models.tokenizer import train_tokenizer
from components.models.vlm import MedVLM, VLMArgs, build_vlm
from components.training.base import image_answer_tasks, train_texts, warm_up_vision
from components.training.data import ImageStore, read_records, select
from components.training.trainer import record_loss_sum


def build(subjects: int, work: Path) -> Path:
    root = work / f"phantom-{subjects}"
    if not (root / "data" / "records.jsonl").is_file():
        build_dataset(
            {"phantom": PhantomSourceConfig(subjects=subjects, seed=0)}, root / "data", workspace=root,
            image_size=64, image_mode="L", resize="pad", split_ratios=(0.8, 0.1, 0.1), split_seed=0,
            on_error="quarantine", workers=1, deid_key=b"k" * 32, seed=0,
        )  # fmt: skip
    return root / "data"


def clip_warmup(model: MedVLM, captions: list[dict[str, Any]], store: ImageStore, steps: int, lr: float) -> None:
    """Contrastive image-caption training of ``model.vision`` (copied into a CLIPModel and back)."""
    from transformers import CLIPConfig, CLIPModel

    tok = model.tokenizer
    assert tok is not None
    enc = [tok(str(r["conversations"][1]["value"]))["input_ids"][:62] + [tok.eos_token_id] for r in captions]
    ids = torch.full((len(enc), max(map(len, enc))), int(tok.pad_token_id))
    mask = torch.zeros_like(ids)
    for row, e in enumerate(enc):
        ids[row, : len(e)] = torch.tensor(e)
        mask[row, : len(e)] = 1
    pixels = torch.stack([store.vision(str(r["image"])) for r in captions])
    text = {"vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 64, "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}  # fmt: skip
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=model.vision.config.to_dict(), projection_dim=64))
    clip.vision_model.load_state_dict(model.vision.state_dict())
    opt = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=0.1)
    rng = np.random.default_rng(1)
    for _ in range(steps):
        i = torch.as_tensor(rng.choice(len(captions), size=min(64, len(captions)), replace=False))
        loss = clip(input_ids=ids[i], attention_mask=mask[i], pixel_values=pixels[i], return_loss=True).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.vision.load_state_dict(clip.vision_model.state_dict())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=400)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--vision-lr", type=float, default=None, help="learning rate of the encoder + projectors")
    ap.add_argument("--beta2", type=float, default=0.999)
    ap.add_argument("--loss", choices=("token", "record"), default="record")
    ap.add_argument("--model", default="{}", help="VLMArgs overrides as JSON, e.g. '{\"merge\": 4}'")
    ap.add_argument("--clip-steps", type=int, default=0)
    ap.add_argument("--answer-steps", type=int, default=0, help="vision warm-up steps (bootstrap_base's)")
    ap.add_argument("--eval", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/medtune-base-dynamics"))
    ns = ap.parse_args()
    torch.set_num_threads(ns.threads)
    data = build(ns.subjects, ns.work)
    records = read_records(data)
    train = select(records, split="train")
    comprehension = select(train, task="comprehension")
    scored = [r for r in records if r["split"] != "test" or r.get("kind") == "vqa_closed"]
    tok = train_tokenizer(train_texts(train), vocab_size=1000)
    torch.manual_seed(0)
    model = build_vlm(VLMArgs(**json.loads(ns.model)), tok)
    store = ImageStore(data, model.image_size, model.channels)
    collate = VLMCollator(tok, model.num_image_tokens, store.vision, max_length=512)
    if ns.clip_steps:
        clip_warmup(model, [r for r in train if r.get("kind") == "caption"], store, ns.clip_steps, 1e-3)
    seeing = [p for n, p in model.named_parameters() if n.startswith(("vision.", "projectors."))]
    rest = [p for n, p in model.named_parameters() if not n.startswith(("vision.", "projectors."))]
    groups = [{"params": rest}, {"params": seeing, "lr": ns.vision_lr or ns.lr}]
    if ns.answer_steps:
        tasks = image_answer_tasks(comprehension)
        warm = warm_up_vision(model, tasks, store, steps=ns.answer_steps, seed=0)
        print(f"vision warm-up: {len(tasks)} questions, loss {warm[0]:.3f} -> {np.mean(warm[-100:]):.3f}", flush=True)
    opt = torch.optim.AdamW(groups, lr=ns.lr, betas=(0.9, ns.beta2), weight_decay=0.0)
    warm = max(1, ns.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / ns.steps)))
    )
    rng = np.random.default_rng(0)
    print(f"{len(comprehension)} train records, {model.num_image_tokens} image tokens, {ns}", flush=True)
    clock, losses = 0.0, []
    for step in range(1, ns.steps + 1):
        t0 = time.perf_counter()
        model.train()
        picked = rng.integers(len(comprehension), size=ns.batch)
        batch: dict[str, Any] = dict(collate([comprehension[i] for i in picked]))
        labels = batch.pop("labels")
        logits = model(**batch).logits
        if ns.loss == "record":
            loss = record_loss_sum(logits, labels) / int((labels[:, 1:] != -100).any(dim=1).sum())
        else:
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
        clock += time.perf_counter() - t0
        if step % ns.eval == 0 or step == ns.steps:
            model.eval()
            with torch.no_grad():
                m = evaluate_model(model, data, split="test", records=scored).metrics
            per_type = {
                k.split("=")[1]: round(v, 2) for k, v in m.items() if k.startswith("closed/accuracy/question_type=")
            }
            print(f"step {step} {clock:.0f}s loss {np.mean(losses[-ns.eval:]):.3f} "
                  f"closed {m['closed/accuracy']:.3f} {per_type}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
