"""GPU check of issue 20 (item 5): real-size VLMs through HealthGPT's three stages with QLoRA (a 4-bit NF4 language
model, :mod:`components.models.quantize`) and gradient checkpointing (:mod:`components.models.memory`), against the
anchor users would otherwise pick: a plain transformers ``Trainer`` + peft LoRA (QLoRA as peft documents it:
``prepare_model_for_kbit_training``, gradient checkpointing on) on the same model and the same batches. Skipped
without CUDA. One prepared script, under 8 minutes on one H100::

    .venv/bin/pytest tests/gpu/test_gpu_scale.py -s                  # as a test (skipped without CUDA)
    .venv/bin/python tests/gpu/test_gpu_scale.py                      # as a script: prints the table
    MEDTUNE_GPU_CHECK_TINY=1 .venv/bin/python tests/gpu/test_gpu_scale.py   # the same code path, tiny shapes, CPU

Models: random weights (nothing can be downloaded) in the real shapes, each built from its family's transformers
config class: **Qwen2.5-VL-3B** (ViT 32 x 1280 with window attention, LM 36 x 2048, GQA 16/2, vocabulary 151,936,
tied), **Gemma-3-4B** (SigLIP 27 x 1152 at 896 px, 256 image tokens, LM 34 x 2560, 5:1 local/global attention,
vocabulary 262,208, tied) and **LLaVA-1.5-7B** (CLIP-L/14 at 336 px, 576 image tokens, Llama-2-7B LM 32 x 4096,
vocabulary 32,064). Processors (tokenizer with the family's special tokens, image processor at the real image size,
chat template) come from the tiny fixtures of tests/fixtures (small tokenizers: the vocabulary beyond them is
padding rows, as in Qwen's checkpoints). Data: the training tests' toy dataset (CT/MRI discs, questions, CT->MRI);
generation targets are fixed pseudo-random VQ codes (64 per image; no VQ model is trained here).

medtune path: the HFVLM wrapper, image-code tokens added, the LM's targets quantized to NF4 on the GPU, two H-LoRA
plugins (4 experts, total rank 16 / 32), gradient checkpointing, bf16 base with fp32 trainable tensors, stages 1,
2, 3 of :func:`components.training.trainer.train_stage`, ``STEPS`` optimizer steps each at batch ``BATCH``.
Anchor: a fresh model (same seed and shapes), the same NF4 layers, ``peft.prepare_model_for_kbit_training``, LoRA
r = 16 (alpha 32) on the same LM targets, ``transformers.Trainer`` (bf16, gradient checkpointing non-reentrant,
AdamW), fed the very batches medtune's stage 3 collated.

Figures per row: tokens/s (the batches' attention-mask tokens per second, median step after ``WARM`` steps), peak
GPU memory (``torch.cuda.max_memory_allocated`` over the row), MFU = model FLOPs / (step time x the card's peak
dense bf16 FLOP/s), model FLOPs = tokens x 4 N (forward 2N, backward through the activations 2N; the frozen 4-bit
weights get no gradient; recomputation, attention scores, the vision tower and the adapters are not counted, the
same formula for both paths, so the MFU ratio is the tokens/s ratio), N = the LM's targeted linear weights. The
ratio column is medtune's stage 3 tokens/s over the anchor's (issue 20's target: >= 1.0).
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

TINY = os.environ.get("MEDTUNE_GPU_CHECK_TINY") == "1"
STEPS = 3 if TINY else 8
WARM = 1 if TINY else 3
BATCH = 2 if TINY else 8
CODEBOOK, CODES_PER_IMAGE = 64 if TINY else 256, 64
BUDGET_S = 450.0  # a family that would start after this is skipped (the whole check stays under 8 minutes)
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}

# family -> (fixture keyword arguments: the real image geometry, overrides of text_config, of vision_config, extra)
REAL: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "qwen2_5_vl": (  # Qwen/Qwen2.5-VL-3B-Instruct config.json; images at 448 x 448 -> 256 merged tokens
        {"patch_size": 14, "min_pixels": 448 * 448, "max_pixels": 448 * 448},
        {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
         "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 128, "max_position_embeddings": 128000,
         "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}},
        {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 2048,
         "patch_size": 14, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31]},
        {"tie_word_embeddings": True},
    ),
    "gemma3": (  # google/gemma-3-4b-it config.json
        {"image_size": 896, "patch_size": 14, "mm_tokens_per_image": 256},
        {"vocab_size": 262208, "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
         "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "query_pre_attn_scalar": 256,
         "max_position_embeddings": 131072, "sliding_window": 1024, "sliding_window_pattern": 6},
        {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
         "image_size": 896, "patch_size": 14},
        {"mm_tokens_per_image": 256},
    ),
    "llava": (  # llava-hf/llava-1.5-7b-hf config.json
        {"image_size": 336, "patch_size": 14},
        {"vocab_size": 32064, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
         "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 128, "max_position_embeddings": 4096,
         "rms_norm_eps": 1e-5},
        {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
         "image_size": 336, "patch_size": 14, "projection_dim": 768},
        {},
    ),
}  # fmt: skip
NAMES = {"qwen2_5_vl": "Qwen2.5-VL-3B", "gemma3": "Gemma-3-4B", "llava": "LLaVA-1.5-7B"}


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def quantize_mode() -> str:
    """NF4 on CUDA; on CPU (tiny mode) where bitsandbytes (>= 0.49 runs its layers on CPU) is installed, else none."""
    if torch.cuda.is_available():
        return "nf4"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "none"
    return "nf4"


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


def real_config(family: str, folder: Path, tiny: bool = TINY) -> Any:
    """The fixture's config (its token ids) with the real model's shapes (tiny mode: as it is)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    if tiny:
        return config
    _, text, vision, extra = REAL[family]
    text_cfg = {k: v for k, v in config.text_config.to_dict().items() if k != "layer_types"}  # recomputed
    vision_cfg = config.vision_config.to_dict()
    whole = {k: v for k, v in config.to_dict().items() if k not in ("text_config", "vision_config")}
    merged = {**whole, **extra, "text_config": {**text_cfg, **text}, "vision_config": {**vision_cfg, **vision}}
    return type(config).from_dict(merged)  # as config.json loads


def build_model(family: str, folder: Path, seed: int = 0) -> tuple[Any, Any]:
    """(HF model in bf16 on the device, its processor), random weights from the (real) config."""
    from transformers import AutoModelForImageTextToText

    from components.models.hf import family_for

    config = real_config(family, folder)
    torch.manual_seed(seed)
    with device():
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    model.to(torch.bfloat16)  # every part: a sub-config's saved dtype must not leave a tower in float32
    return model, family_for(config).load_processor(folder)


def codes_for(record: Mapping[str, Any]) -> list[int]:
    rng = random.Random(str(record.get("id")))
    return [rng.randrange(CODEBOOK) for _ in range(CODES_PER_IMAGE)]


class Counting:
    """A collate that counts the tokens it hands out (and keeps the batches when asked)."""

    def __init__(self, collate: Callable[[list[Any]], Any]) -> None:
        self.collate, self.tokens, self.batches, self.keep = collate, 0, [], False

    def __call__(self, records: list[Any]) -> Any:
        batch = self.collate(records)
        self.tokens += int(batch["attention_mask"].sum())
        if self.keep:
            self.batches.append({k: v.to("cpu") if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        return batch


class Clock:
    """train_stage's progress callback: per step, (seconds, tokens)."""

    def __init__(self, counting: Counting) -> None:
        self.counting, self.steps, self._last = counting, [], (0.0, 0)

    def __call__(self, step: int, total: int, loss: float | None) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = (time.perf_counter(), self.counting.tokens)
        if loss is not None:
            self.steps.append((now[0] - self._last[0], now[1] - self._last[1]))
        self._last = now

    def tokens_per_s(self) -> float:
        measured = self.steps[WARM:] or self.steps
        return statistics.median(t / s for s, t in measured) if measured else float("nan")


def lm_linear_weights(lm: Any) -> int:
    from components.adapters.peft_ext import lm_linear_targets

    return sum(int(lm.get_submodule(n).weight.numel()) for n in lm_linear_targets(lm))


def row(name: str, tokens_per_s: float, peak_gib: float, n_weights: int, losses: list[float]) -> dict[str, Any]:
    return {"model": name, "tok/s": tokens_per_s, "peak GiB": peak_gib,
            "MFU": tokens_per_s * 4 * n_weights / peak_flops(), "losses": losses}  # fmt: skip


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def medtune_stages(family: str, folder: Path, dataset: Path, work: Path) -> tuple[list[dict[str, Any]], Counting, int]:
    from components.data.records import TASKS
    from components.models.backend import image_loader, store_size
    from components.models.hf import HFVLM
    from components.models.memory import enable_gradient_checkpointing
    from components.models.quantize import quantize_language_model
    from components.models.tokenizer import add_image_code_tokens
    from components.training.data import ImageStore, read_records, record_pools
    from components.training.distributed import DistEnv
    from components.training.plugins import AdapterArgs, attach_plugins
    from components.training.trainer import TrainArgs, train_stage

    hf_model, processor = build_model(family, folder)
    model = HFVLM(hf_model, processor, gen_layer=1)
    first_new = len(model.tokenizer)
    add_image_code_tokens(model.tokenizer, CODEBOOK)
    model.resize_token_embeddings_mean(len(model.tokenizer), first_new=first_new)
    n_weights = lm_linear_weights(model.lm)
    quantize_language_model(model, quantize_mode(), device=device())
    torch.manual_seed(0)
    model = attach_plugins(model, AdapterArgs(kind="hlora", rank=16, generation_rank=32, num_experts=4, dropout=0.0))
    enable_gradient_checkpointing(model)
    model.to(device())
    pools = record_pools(read_records(dataset), split="train")
    store = ImageStore(dataset, *store_size(model, 64, 1))
    counting = Counting(model.collator(image_loader(model, store), target_codes=codes_for))
    env = DistEnv(device=device())
    rows = []
    for stage in (1, 2, 3):
        clock = Clock(counting)
        counting.keep = stage == 3  # the anchor trains on stage 3's batches
        reset_peak()
        args = TrainArgs(steps=STEPS, lr=1e-4, batch_size=BATCH, warmup=1, checkpoint_every=0, seed=stage)
        result = train_stage(model, stage, pools, counting, args, out_dir=work / f"stage{stage}", env=env,
                             progress=clock)  # fmt: skip
        rows.append(row(f"medtune stage {stage}", clock.tokens_per_s(), peak_gib(), n_weights, result.losses))
    assert set(TASKS) <= set(model.lm.peft_config)
    del model, hf_model
    return rows, counting, n_weights


def anchor(family: str, folder: Path, batches: list[dict[str, Any]], work: Path, n_weights: int) -> dict[str, Any]:
    """transformers Trainer + peft LoRA (QLoRA as peft documents it) on the same shapes and batches."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from components.adapters.peft_ext import lm_linear_targets
    from components.models.hf import HFVLM
    from components.models.quantize import quantize_language_model
    from components.models.tokenizer import add_image_code_tokens

    hf_model, processor = build_model(family, folder)
    shell = HFVLM(hf_model, processor, gen_layer=1)  # only to reach the LM's targets: the same layers medtune uses
    first_new = len(shell.tokenizer)  # the same vocabulary as medtune's model: the batches hold image-code tokens
    add_image_code_tokens(shell.tokenizer, CODEBOOK)
    shell.resize_token_embeddings_mean(len(shell.tokenizer), first_new=first_new)
    mode = quantize_mode()
    quantize_language_model(shell, mode, device=device())
    hf_model.is_loaded_in_4bit = mode == "nf4"  # as from_pretrained(quantization_config=...) marks it, for peft
    targets = lm_linear_targets(hf_model)
    hf_model = prepare_model_for_kbit_training(
        hf_model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    model = get_peft_model(hf_model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets))
    image_token = shell.image_token_id
    hf_keys = {"input_ids", "attention_mask", "labels", *shell.family.image_keys}
    inputs = []
    for batch in batches:
        kept = {k: v for k, v in batch.items() if k in hf_keys}
        if family == "gemma3":  # Gemma 3 trains with token_type_ids (1 on image tokens: bidirectional attention)
            kept["token_type_ids"] = (kept["input_ids"] == image_token).long()
        if family == "qwen2_5_vl":  # the processor's mm_token_type_ids: what the model's M-RoPE positions read
            kept["mm_token_type_ids"] = (kept["input_ids"] == image_token).int()
        inputs.append(kept)
    tokens = statistics.mean(int(b["attention_mask"].sum()) for b in inputs)
    stamps: list[float] = []

    class Stamp(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    arguments = TrainingArguments(
        output_dir=str(work / "anchor"), per_device_train_batch_size=1, max_steps=STEPS, learning_rate=1e-4,
        bf16=torch.cuda.is_available(), gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False}, logging_steps=1, report_to=[], save_strategy="no",
        remove_unused_columns=False, dataloader_num_workers=0, optim="adamw_torch", warmup_steps=1, seed=0,
        use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=arguments, train_dataset=list(range(len(inputs))),
        data_collator=lambda idx: inputs[idx[0] % len(inputs)], callbacks=[Stamp()],
    )  # fmt: skip
    reset_peak()
    started = time.perf_counter()
    trainer.train()
    gaps = [b - a for a, b in zip([started, *stamps], stamps, strict=False)][WARM:]
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    return row("Trainer + peft LoRA", tokens / statistics.median(gaps), peak_gib(), n_weights, losses)


def run_check(root: Path) -> list[dict[str, Any]]:
    from tests.fixtures.tiny_vlms import build_tiny
    from tests.unit.training.conftest import make_dataset

    dataset = make_dataset(root / "data")
    started, rows = time.perf_counter(), []
    for family in REAL:
        name = NAMES[family]
        if time.perf_counter() - started > BUDGET_S:
            rows.append({"family": name, "model": "skipped: time budget", "tok/s": float("nan")})
            continue
        kwargs = {} if TINY else REAL[family][0]
        folder = build_tiny(family, root / family / "fixture", **kwargs)
        ours, counting, n_weights = medtune_stages(family, folder, dataset, root / family)
        free_memory()
        theirs = anchor(family, folder, counting.batches, root / family, n_weights)
        free_memory()
        for r in [*ours, theirs]:
            r["family"] = name
            r["ratio"] = ours[-1]["tok/s"] / theirs["tok/s"]
            r["params_B"] = n_weights / 1e9
            rows.append(r)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (tiny shapes)"
    print(f"\nGPU scale check on {card}, torch {torch.__version__}, quantize {quantize_mode()}, gradient "
          f"checkpointing, batch {BATCH}, {STEPS} steps per row (median after {WARM})")  # fmt: skip
    print("| model | LM linear B | path | tokens/s | peak GiB | MFU | stage 3 / anchor |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "ratio" not in r:
            print(f"| {r['family']} | | {r['model']} | | | | |")
            continue
        print(f"| {r['family']} | {r['params_B']:.2f} | {r['model']} | {r['tok/s']:.0f} | {r['peak GiB']:.1f} | "
              f"{r['MFU']:.1%} | {r['ratio']:.2f} |")  # fmt: skip


@pytest.mark.skipif(not torch.cuda.is_available() and not TINY, reason="needs CUDA (tests/gpu is the GPU check)")
def test_real_size_vlms_train_with_qlora_and_checkpointing(tmp_path: Path) -> None:
    started = time.perf_counter()
    rows = run_check(tmp_path)
    print_table(rows)
    measured = [r for r in rows if "ratio" in r]
    assert measured, rows
    for r in measured:
        assert r["tok/s"] > 0 and all(loss == loss and abs(loss) < 1e4 for loss in r["losses"]), r
    if not TINY:
        assert time.perf_counter() - started < 480, "the GPU scale check must stay under 8 minutes"


@pytest.mark.parametrize(("family", "billions"), [("qwen2_5_vl", 3.75), ("gemma3", 4.30), ("llava", 7.06)])
def test_the_real_shapes_have_the_published_sizes(family: str, billions: float, tmp_path: Path) -> None:
    """The configs the check builds hold the published parameter counts (meta device: no memory, CPU is enough)."""
    from transformers import AutoModelForImageTextToText

    from tests.fixtures.tiny_vlms import build_tiny

    folder = build_tiny(family, tmp_path / family, **REAL[family][0])
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(real_config(family, folder, tiny=False))
    total = sum(p.numel() for p in model.parameters()) / 1e9
    assert abs(total - billions) < 0.02 * billions, (family, total)


if __name__ == "__main__":
    import tempfile

    if not torch.cuda.is_available() and not TINY:
        sys.exit("no CUDA device: this check needs a GPU (MEDTUNE_GPU_CHECK_TINY=1 runs the code path on CPU)")
    with tempfile.TemporaryDirectory(prefix="medtune-gpu-scale-") as tmp:
        print_table(run_check(Path(tmp)))
