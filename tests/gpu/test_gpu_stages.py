"""GPU check (issue 4, item 8): a few steps of every training stage at a realistic width, with step time, peak memory
and model FLOPs utilisation (MFU). Skipped without CUDA. One prepared script, under 5 minutes on one H100:

    .venv/bin/pytest tests/gpu -s                 # as a test (skipped without CUDA)
    .venv/bin/python tests/gpu/test_gpu_stages.py # as a script: prints the table
    MEDTUNE_GPU_CHECK_TINY=1 .venv/bin/python tests/gpu/test_gpu_stages.py   # the same code path at a tiny width, CPU

The model is LLaVA-style and built from config, since no weights can be downloaded: a CLIP-B/16-like encoder
(768 wide, 12 layers, 224 px in 16 px patches = 196 image tokens) and a Llama-style LM (1024 wide, 24 layers, MLP 2816,
16 heads), about 0.45 B parameters in all, on a small phantom dataset built on the spot (224 px renders). The stages
are the real ones (:func:`components.training.recipe.train_recipe`: bootstrap "base", VQ tokenizer, HealthGPT stages
1, 2, 3 with H-LoRA plugins) in bf16 autocast, 12 steps each at a global batch of 16.

MFU, where the literature is loose, is defined here as (model FLOPs per step) / (step time x peak bf16 FLOP/s):
model FLOPs per step = tokens x (2 N forward + 2 N backward through the activations + 2 N_trainable for the
weight gradients), N = parameters the step's tokens pass through (vision encoder + projector + LM incl. the active
plugin), attention score FLOPs left out (small at these lengths). The peak is looked up by device name (H100 SXM
989 TFLOP/s dense bf16, H100 PCIe 756, H200 989, A100 312, L40S 362) or taken from ``MEDTUNE_PEAK_TFLOPS``.
Step time is the median over a stage's steps after the first two (warm-up, allocator growth).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

TINY = os.environ.get("MEDTUNE_GPU_CHECK_TINY") == "1"
STEPS = 12
BATCH = 16

PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


def realistic_args() -> Any:
    from components.models.vlm import VLMArgs

    if TINY:
        return VLMArgs(image_size=64, patch_size=8)
    return VLMArgs(
        vision_hidden=768, vision_layers=12, vision_heads=12, image_size=224, patch_size=16, channels=1,
        lm_hidden=1024, lm_layers=24, lm_heads=16, lm_intermediate=2816, max_positions=1024,
        comp_layer=-2, gen_layer=3, dtype="float32",  # master weights fp32; the trainer autocasts to bf16 on CUDA
    )  # fmt: skip


def peak_flops() -> float:
    if os.environ.get("MEDTUNE_PEAK_TFLOPS"):
        return float(os.environ["MEDTUNE_PEAK_TFLOPS"]) * 1e12
    if not torch.cuda.is_available():
        return float("nan")
    name = torch.cuda.get_device_name()
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if key in name:
            return PEAK_TFLOPS[key] * 1e12
    return float("nan")


class StepClock:
    """The recipe's progress callback: a timestamp per optimizer step, peak memory per stage."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self.peak: dict[str, float] = {}
        self._current: str | None = None

    def __call__(self, stage: str, step: int, total: int, loss: float) -> None:
        if stage != self._current:
            if self._current is not None and torch.cuda.is_available():
                self.peak[self._current] = torch.cuda.max_memory_allocated() / 2**30
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            self._current = stage
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.setdefault(stage, []).append(time.perf_counter())

    def close(self) -> None:
        if self._current is not None and torch.cuda.is_available():
            self.peak[self._current] = torch.cuda.max_memory_allocated() / 2**30

    def step_seconds(self, stage: str) -> float:
        stamps = self.times.get(stage, [])
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)][2:]
        return statistics.median(gaps) if gaps else float("nan")


def build_phantoms(root: Path, image_size: int) -> Path:
    from components.data.build import build_dataset
    from components.data.sources.phantom import PhantomSourceConfig

    out = root / "vlhealth"
    build_dataset(
        {"phantom": PhantomSourceConfig(subjects=24, seed=0, render_size=image_size)}, out, workspace=root,
        image_size=image_size, image_mode="L", resize="pad", split_ratios=(0.8, 0.1, 0.1), split_seed=0,
        on_error="fail", workers=1, deid_key=b"gpu-check" * 4, seed=0,
    )  # fmt: skip
    return out


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def run_check(root: Path) -> list[dict[str, Any]]:
    from components.models.vlm import MedVLM
    from components.training.recipe import train_recipe

    args = realistic_args()
    dataset = build_phantoms(root, args.image_size)
    clock = StepClock()
    result = train_recipe(
        dataset, root / "work", model_args=args, base_steps=STEPS, base_batch_size=BATCH, base_lr=1e-4,
        base_vision_warmup=STEPS,
        vq_steps=STEPS, stage_steps={1: STEPS, 2: STEPS, 3: STEPS}, batch_size=BATCH, checkpoint_every=10_000,
        evaluate=False, progress=clock, device="auto",
    )  # fmt: skip
    clock.close()
    total_params, _ = count_parameters(MedVLM.load(result.base_dir))
    peak = peak_flops()
    rows = []
    tokens = BATCH * (args.image_size // args.patch_size) ** 2  # image tokens; text adds ~10-20% (not counted)
    for summary in [{"stage": "base"}, *result.stages]:
        name = "base" if summary["stage"] == "base" else f"stage {summary['stage']}"
        seconds = clock.step_seconds(name)
        # base trains everything; the adapter stages train projectors/plugins (~a few % of N): 2N+2N+2N_trainable.
        factor = 6.0 if name == "base" else 4.1
        flops = factor * total_params * tokens
        rows.append(
            {
                "stage": name,
                "step_s": seconds,
                "peak_GiB": clock.peak.get(name, float("nan")),
                "TFLOP/step": flops / 1e12,
                "MFU": flops / seconds / peak if seconds == seconds else float("nan"),
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"\nGPU check on {device}, torch {torch.__version__}, batch {BATCH}, {STEPS} steps per stage")
    print(f"{'stage':<10}{'step s':>10}{'peak GiB':>10}{'TFLOP/step':>12}{'MFU':>8}")
    for r in rows:
        print(f"{r['stage']:<10}{r['step_s']:>10.3f}{r['peak_GiB']:>10.2f}{r['TFLOP/step']:>12.2f}{r['MFU']:>8.1%}")


@pytest.mark.skipif(not torch.cuda.is_available() and not TINY, reason="needs CUDA (tests/gpu is the GPU check)")
def test_every_stage_trains_at_realistic_width(tmp_path: Path) -> None:
    started = time.perf_counter()
    rows = run_check(tmp_path)
    print_table(rows)
    assert [r["stage"] for r in rows] == ["base", "stage 1", "stage 2", "stage 3"]
    assert all(r["step_s"] > 0 for r in rows)
    assert time.perf_counter() - started < 300, "the GPU check must stay under 5 minutes"


if __name__ == "__main__":
    import tempfile

    if not torch.cuda.is_available() and not TINY:
        sys.exit("no CUDA device: this check needs a GPU (MEDTUNE_GPU_CHECK_TINY=1 runs the code path on CPU)")
    with tempfile.TemporaryDirectory(prefix="medtune-gpu-") as tmp:
        print_table(run_check(Path(tmp)))
