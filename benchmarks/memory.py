"""Memory savers on CPU (issue 20, item 1): peak step memory with and without gradient checkpointing, fp32 master
weights over a bf16 base.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/memory.py [--batch 8] [--seq 256] [--shapes tiny small]

One training step (forward + backward; no optimizer step) of a MedVLM built from config, with two H-LoRA plugins
attached (:func:`components.training.plugins.attach_plugins`), in the two settings of the pipeline:

- **stage 3**: the comprehension plugin and projector train, the vision tower and the LM's base weights are frozen
  (what the adapter stages do);
- **base**: every parameter trains, vision tower included (the tiny model's bootstrap).

Each with ``train.gradient_checkpointing`` off and on (:func:`components.models.memory.enable_gradient_checkpointing`:
transformers' own switch on the LM and the vision tower, torch.utils.checkpoint on the projectors). The batch is
``--batch`` records of ``--seq`` tokens, the image's tokens first, the last quarter labelled (the answer).

Peak memory is :func:`components.models.memory.step_memory`: on CPU the profiler's memory timeline, the largest sum
at any instant of everything the step allocates beyond the weights (activations kept for backward, recomputed ones,
temporaries, gradients); ``act`` is the activations' own peak. Step time: median of ``--repeat`` steps (2 threads).
``dtype`` bfloat16 runs the step as the trainer does over a bf16 base (trainable tensors upcast to float32, CPU
autocast; :mod:`components.training.precision`). Copy the printed table into benchmarks/README.md ("Memory").
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from dataclasses import replace
from typing import Any

import torch

from components.models.memory import enable_gradient_checkpointing, step_memory
from components.models.tokenizer import train_tokenizer
from components.models.vlm import MedVLM, VLMArgs, build_vlm
from components.training.plugins import AdapterArgs, attach_plugins
from components.training.precision import Precision
from components.training.stages import freeze_for
from components.training.trainer import answer_loss_sum

SHAPES = {
    # the embedded default (configs/default.yaml: 64 px, 8 px patches merged 4x4, LM 128 wide, 4 layers)
    "tiny": VLMArgs(merge=4),
    # a wider, deeper LM over the same encoder: where activations dominate
    "small": VLMArgs(merge=4, lm_hidden=512, lm_layers=8, lm_heads=8, lm_intermediate=1376),
}
TEXTS = ["is there a lesion in the left lobe? yes no ct mri x-ray describe the image slice"] * 20


def build(shape: VLMArgs, dtype: str) -> MedVLM:
    torch.manual_seed(0)
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    model = build_vlm(replace(shape, dtype=dtype, max_positions=1024), tokenizer)
    return attach_plugins(model, AdapterArgs(kind="hlora", rank=16, generation_rank=32, num_experts=4, dropout=0.0))


def batch_for(model: MedVLM, batch: int, seq: int) -> tuple[dict[str, Any], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n_img = model.num_image_tokens
    assert model.tokenizer is not None
    vocab = len(model.tokenizer)
    ids = torch.randint(10, vocab - 10, (batch, seq), generator=g)
    ids[ids == model.image_token_id] = 11
    ids[:, 1 : 1 + n_img] = model.image_token_id
    labels = torch.full_like(ids, -100)
    labels[:, -seq // 4 :] = ids[:, -seq // 4 :]
    pixels = torch.randn(batch, model.channels, model.image_size, model.image_size, generator=g)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels,
              "tasks": ["comprehension"] * batch}  # fmt: skip
    return inputs, labels


def measure(shape: VLMArgs, stage: str, checkpointing: bool, dtype: str, batch: int, seq: int, repeat: int) -> dict:
    model = build(shape, dtype)
    names = freeze_for(model, 3 if stage == "stage 3" else "base", "comprehension")
    precision = Precision.for_model(model, names, torch.device("cpu"))
    if checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    inputs, labels = batch_for(model, batch, seq)

    def step() -> None:
        with precision.context():
            loss = answer_loss_sum(model, inputs, labels)
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up (allocator, lazy inits)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    mem = step_memory(step)
    params = sum(p.numel() for p in model.parameters())
    return {"params_M": params / 1e6, "trainable": len(names), "step_s": statistics.median(times), **mem}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=2)
    ns = ap.parse_args()
    torch.set_num_threads(ns.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)  # peft asks transformers' deprecated is_gradient_...
    print(f"torch {torch.__version__}, {ns.threads} threads, batch {ns.batch} x {ns.seq} tokens, one fwd+bwd step")
    print("| shape | params | dtype | trains | checkpointing | peak MiB | act MiB | step s | peak ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ns.shapes:
        for dtype in ns.dtypes:
            for stage in ("stage 3", "base"):
                off = measure(SHAPES[name], stage, False, dtype, ns.batch, ns.seq, ns.repeat)
                on = measure(SHAPES[name], stage, True, dtype, ns.batch, ns.seq, ns.repeat)
                for label, r in (("off", off), ("on", on)):
                    ratio = r["peak"] / off["peak"]
                    print(f"| {name} | {r['params_M']:.1f} M | {dtype} | {stage} | {label} | {r['peak']:.1f} | "
                          f"{r['activation']:.1f} | {r['step_s']:.3f} | {ratio:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
