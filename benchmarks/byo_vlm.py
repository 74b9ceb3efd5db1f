"""Bring your own VLM: H-LoRA's training-step time against peft's LoRA of the same total rank, per VLM family.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/byo_vlm.py                 # every family, tiny width, CPU
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/byo_vlm.py --quick         # 2 steps of one family (a path check)
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/byo_vlm.py --real          # real sizes, bf16, on a CUDA machine

Issue 16's acceptance: per family, one training step (forward + backward + AdamW step) of a whole Hugging Face VLM
(``HFVLM``) on a batch made by the checkpoint's own processor and chat template (``model.collator``), the adapters on
the language model's attention and MLP linears (not ``lm_head``, not the vision tower or projector):

- **LoRA**: peft's own ``LoraConfig``, r = 64 (alpha 128), through ``apply_adapter(lm, "lora")``.
- **H-LoRA**: medtune's fused H-LoRA, k = 4 experts x r = 16 (total rank 64: the same A/B size, plus a 4 x d router).

One table per adapter dropout (``--dropout``, default 0.05 — medtune's default — and 0.0): peft's LoRA draws its
dropout mask over every input element (d per token), H-LoRA over A x (r per token), so 0.0 compares the matmuls alone.

Only the adapter trains (``torch.optim.AdamW(fused=True)``). Two models are built from one checkpoint and stepped
round-robin in one run (order swapped every round), so load from other processes hits both alike; the median of
``--steps`` rounds after ``--warmup`` is reported on the wall clock and the CPU clock. Target: H-LoRA/LoRA <= 1.05.

Tiny mode (CPU, the default): each family's tiny fixture (``tests/fixtures/tiny_<family>.py``: tokenizer, processor,
published chat template) with the language model widened to ``--hidden`` (2 layers, 64-wide heads, MLP 8/3 x hidden;
the fixture's small vision tower), random init, written with ``save_pretrained`` into a temporary folder and loaded
with ``HFVLM.from_checkpoint``. A family runs when both its fixture and its family module
(``components/models/hf/<family>.py``) exist; the others are listed as skipped, with the reason. Records are VQA-RAD
questions on their images from ``../shared/data/vqa_rad`` when present, else synthetic questions on noise images.

Real mode (``--real``, CUDA only; without CUDA it prints why and exits 0): the published configs of LLaVA-1.5-7B,
Qwen2.5-VL-3B and -7B, Gemma-3-4B and SmolVLM-256M (values written below; the fixture's tokenizer and chat template,
the image processor at the real settings), random init in bf16 on the GPU (built in memory: nothing is saved), tokens/s
and peak memory. Both models of a family are resident while they are interleaved, so a method's peak memory is what it
would use alone: its resident weights and optimizer state plus the largest ``torch.cuda.max_memory_allocated`` rise
during one of its steps.

A per-core speed figure goes beside the times: GFLOP/s of a single-thread float32 512^3 matmul, taken once per round
(median), so tables from machines of different speed or load can be compared. ``OMP_WAIT_POLICY=PASSIVE`` as in
``benchmarks/hlora.py`` (waiting threads sleep, so the CPU clock counts work). Copy the table into
benchmarks/README.md with the date and machine.
"""

from __future__ import annotations

import os

# Before torch starts its OpenMP pool (see benchmarks/hlora.py): waiting threads sleep instead of spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from machine import per_core_gflops  # a sibling module: the per-core figure every benchmark prints

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the fixtures live in tests/fixtures (python benchmarks/byo_vlm.py from the root)
    sys.path.insert(0, str(REPO))

FAMILIES = ("llava", "qwen2_5_vl", "gemma3", "idefics3")
METHODS = ("lora", "hlora")
RANK, EXPERTS, TARGET = 64, 4, 1.05
VQA_RAD = REPO.parent / "shared" / "data" / "vqa_rad"


# -- which families can run --------------------------------------------------------------------------------------
def availability(families: tuple[str, ...]) -> dict[str, str | None]:
    """family -> None when it can run, else why not (the fixture or the family module is not there yet)."""
    out: dict[str, str | None] = {}
    for family in families:
        fixture = REPO / "tests" / "fixtures" / f"tiny_{family}.py"
        module = REPO / "components" / "models" / "hf" / f"{family}.py"
        missing = [str(p.relative_to(REPO)) for p in (fixture, module) if not p.is_file()]
        out[family] = f"{' and '.join(missing)} not there yet" if missing else None
    if any(v is None for v in out.values()):
        from components.models.hf import FAMILIES as REGISTERED

        for family, why in out.items():
            if why is None and family not in REGISTERED:
                out[family] = f"components/models/hf/{family}.py exists but is not registered in components.models.hf"
    return out


# -- checkpoints --------------------------------------------------------------------------------------------------
def _rebuild(config: Any, text: dict[str, Any], vision: dict[str, Any], top: dict[str, Any]) -> Any:
    """``config`` with its text/vision sub-configs and top-level keys updated, rebuilt through its class so derived
    fields (``layer_types``, head sizes) follow the new values."""
    data = config.to_dict()
    for key, update in (("text_config", text), ("vision_config", vision)):
        sub = dict(data[key])
        sub.pop("layer_types", None)  # re-derived for the new depth
        sub.update(update)
        data[key] = sub
    data.update(top)
    return type(config).from_dict(data)


def tiny_sizes(family: str, hidden: int, layers: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(text, vision) overrides that widen a fixture's language model: 64-wide heads, MLP 8/3 x hidden, grouped
    KV heads where the family's real models group them; the fixture's vision tower is kept."""
    heads = max(1, hidden // 64)
    text: dict[str, Any] = {
        "hidden_size": hidden,
        "intermediate_size": max(64, int(hidden * 8 / 3) // 64 * 64),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads if family == "llava" else max(1, heads // 2),
        "head_dim": 64,  # the fixtures' configs store theirs (16): it must follow the new width
    }
    vision: dict[str, Any] = {}
    if family == "gemma3":
        text["query_pre_attn_scalar"] = 64
    if family == "qwen2_5_vl":  # multimodal RoPE over head_dim / 2 = 32, split 2:3:3 as the 3B's [16, 24, 24]
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]}
        vision["out_hidden_size"] = hidden  # the merger writes the LM's width
    return text, vision


def tiny_loader(family: str, folder: Path, hidden: int, layers: int) -> Callable[[], Any]:
    """Write the family's tiny fixture (tokenizer, processor, chat template) into ``folder`` with its model re-made
    from the widened config (random init, ``save_pretrained``, as a downloaded checkpoint); return its loader."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from components.models.hf import HFVLM
    from tests.fixtures.tiny_vlms import build_tiny

    build_tiny(family, folder)
    config = _rebuild(
        AutoConfig.from_pretrained(folder, local_files_only=True), *tiny_sizes(family, hidden, layers), {}
    )
    torch.manual_seed(0)
    AutoModelForImageTextToText.from_config(config).save_pretrained(folder)
    return lambda: HFVLM.from_checkpoint(folder)


# -- records ------------------------------------------------------------------------------------------------------
def make_records(n: int) -> tuple[list[dict[str, Any]], Callable[[str], Any], str]:
    """``n`` comprehension records on ``n`` distinct images, the image loader, and where they came from: VQA-RAD's
    first questions on distinct images when ../shared/data/vqa_rad is there, else questions on noise images."""
    from PIL import Image

    qa_file = VQA_RAD / "VQA_RAD Dataset Public.json"
    if qa_file.is_file():
        by_image: dict[str, tuple[str, str]] = {}
        for item in json.loads(qa_file.read_text()):
            if len(by_image) < n and (VQA_RAD / "images" / item["image_name"]).is_file():
                by_image.setdefault(
                    str(VQA_RAD / "images" / item["image_name"]), (item["question"], str(item["answer"]))
                )
        pictures: dict[str, Any] = {}
        source = f"VQA-RAD ({VQA_RAD})"
    else:
        gen = torch.Generator().manual_seed(0)
        pictures = {f"noise-{k}": torch.randint(0, 256, (96 + 32 * k, 128, 3), generator=gen, dtype=torch.uint8)
                    for k in range(n)}  # fmt: skip
        pictures = {key: Image.fromarray(pixels.numpy()) for key, pixels in pictures.items()}
        by_image = {key: ("Is there a lesion in the liver?", "no") for key in pictures}
        source = f"synthetic noise images ({VQA_RAD} not found)"
    records = [
        {"id": f"bench-{k}", "image": path, "task": "comprehension",
         "conversations": [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]}
        for k, (path, (q, a)) in enumerate(by_image.items())
    ]  # fmt: skip
    return records, lambda path: pictures[path] if path in pictures else Image.open(path).convert("RGB"), source


# -- one method's training step -----------------------------------------------------------------------------------
@dataclass
class Arm:
    """One adapter method on its own copy of the model: its training step and what it holds."""

    step: Callable[[], None]
    trainable: int
    adapter_dtype: str
    resident_bytes: int = 0  # CUDA only: weights and adapters, measured when built
    optimizer: Any = None


def build_arm(model: Any, method: str, batch: dict[str, Any], dropout: float) -> Arm:
    """Freeze ``model`` (an HFVLM), put ``method`` on its language model, return the closure of one training step."""
    from components.adapters import apply_adapter

    model.requires_grad_(False)
    kwargs: dict[str, Any] = {"rank": RANK, "dropout": dropout}
    if method == "hlora":
        kwargs["num_experts"] = EXPERTS
    model.lm = apply_adapter(model.lm, method, adapter_name="comprehension", **kwargs)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=True)
    inputs = dict(batch)
    labels = inputs.pop("labels")

    def step() -> None:
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # after the step: nothing of this step stays between steps

    return Arm(step, sum(p.numel() for p in params), str(params[0].dtype).removeprefix("torch."), optimizer=optimizer)


def to_device(batch: dict[str, Any], device: str, dtype: torch.dtype) -> dict[str, Any]:
    return {
        k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


# -- measurement --------------------------------------------------------------------------------------------------
@dataclass
class Result:
    name: str  # the family, or the real model's name
    family: str
    dropout: float
    tokens: int  # real (unpadded) tokens per step
    image_tokens: int
    padded: tuple[int, int]  # batch x length
    trainable: dict[str, int]
    adapter_dtype: dict[str, str]
    times: dict[str, dict[str, list[float]]]  # clock -> method -> ms per measured step
    gflops: list[float]
    peak_gib: dict[str, float] = field(default_factory=dict)

    def ms(self, method: str, clock: str = "wall") -> float:
        return statistics.median(self.times[clock][method])

    def ratio(self, clock: str = "wall") -> float:
        return self.ms("hlora", clock) / self.ms("lora", clock)

    def spread(self, clock: str = "wall") -> list[float]:
        """Quartiles of the per-round ratios H-LoRA/LoRA (a round's two steps ran back to back, so a change of load
        between rounds cancels): how noisy the ratio of medians is."""
        pairs = [h / lo for h, lo in zip(self.times[clock]["hlora"], self.times[clock]["lora"], strict=True)]
        return statistics.quantiles(pairs, n=4) if len(pairs) > 1 else pairs * 3


def interleave(arms: dict[str, Arm], steps: int, warmup: int, cuda: bool) -> tuple[dict, list[float], dict]:
    """Round-robin steps of every arm (order swapped each round); per-step ms on both clocks, the per-core figure
    once per round, and on CUDA each arm's largest rise of allocated memory during a step."""
    times: dict[str, dict[str, list[float]]] = {c: {m: [] for m in arms} for c in ("wall", "cpu")}
    transient = dict.fromkeys(arms, 0)
    gflops: list[float] = []
    order = list(arms)
    for round_index in range(warmup + steps):
        for method in order if round_index % 2 == 0 else order[::-1]:
            if cuda:
                torch.cuda.synchronize()
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            wall, cpu = time.perf_counter(), time.process_time()
            arms[method].step()
            if cuda:
                torch.cuda.synchronize()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if cuda:
                transient[method] = max(transient[method], torch.cuda.max_memory_allocated() - before)
            if round_index >= warmup:
                times["wall"][method].append(wall * 1e3)
                times["cpu"][method].append(cpu * 1e3)
        gflops.append(per_core_gflops())
    return times, gflops, transient


def _optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))


def measure(name: str, family: str, load: Callable[[], Any], records: list[dict[str, Any]], load_image: Callable,
            *, steps: int, warmup: int, dropout: float, device: str = "cpu") -> Result:  # fmt: skip
    """Both methods on two copies of one model (``load()`` builds one), interleaved; see the module docstring."""
    cuda = device.startswith("cuda")
    arms: dict[str, Arm] = {}
    batch: dict[str, Any] = {}
    for method in METHODS:
        before = torch.cuda.memory_allocated() if cuda else 0
        model = load()
        if not batch:
            batch = model.collator(load_image)(records)
        dtype = next(model.lm.parameters()).dtype
        arms[method] = build_arm(model, method, to_device(batch, device, dtype), dropout)
        arms[method].resident_bytes = (torch.cuda.memory_allocated() - before) if cuda else 0
    times, gflops, transient = interleave(arms, steps, warmup, cuda)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    image_id = model.image_token_id
    peak = {}
    if cuda:
        peak = {m: (a.resident_bytes + _optimizer_bytes(a.optimizer) + transient[m]) / 2**30 for m, a in arms.items()}
    return Result(
        name, family, dropout, int(mask.sum()), int((ids == image_id).sum()), tuple(ids.shape),  # type: ignore[arg-type]
        {m: a.trainable for m, a in arms.items()}, {m: a.adapter_dtype for m, a in arms.items()},
        times, gflops, peak,
    )  # fmt: skip


# -- real mode ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Real:
    """A published checkpoint's sizes: the fixture's builder kwargs (image processor at the real settings) and the
    text / vision / top-level config values of its config.json."""

    family: str
    fixture: dict[str, Any]
    text: dict[str, Any]
    vision: dict[str, Any]
    top: dict[str, Any] = field(default_factory=dict)


_QWEN_VISION = {
    "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
    "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2, "hidden_act": "silu",
}  # fmt: skip
_QWEN_ROPE = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}
_QWEN_PIXELS = {"patch_size": 14, "min_pixels": 56 * 56, "max_pixels": 1280 * 28 * 28}  # the model cards' setting

REAL: dict[str, Real] = {
    "llava-1.5-7b": Real(  # llava-hf/llava-1.5-7b-hf
        "llava", {"image_size": 336, "patch_size": 14},
        {"vocab_size": 32064, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
         "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 128, "max_position_embeddings": 4096,
         "rms_norm_eps": 1e-5},
        {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
         "image_size": 336, "patch_size": 14, "projection_dim": 768},
        {"projector_hidden_act": "gelu", "vision_feature_layer": -2},
    ),
    "qwen2.5-vl-3b": Real(  # Qwen/Qwen2.5-VL-3B-Instruct
        "qwen2_5_vl", _QWEN_PIXELS,
        {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
         "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 128, "max_position_embeddings": 128000,
         "rms_norm_eps": 1e-6, "rope_parameters": _QWEN_ROPE, "tie_word_embeddings": True},
        {**_QWEN_VISION, "out_hidden_size": 2048},
        {"tie_word_embeddings": True},
    ),
    "qwen2.5-vl-7b": Real(  # Qwen/Qwen2.5-VL-7B-Instruct
        "qwen2_5_vl", _QWEN_PIXELS,
        {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
         "num_attention_heads": 28, "num_key_value_heads": 4, "head_dim": 128, "max_position_embeddings": 128000,
         "rms_norm_eps": 1e-6, "rope_parameters": _QWEN_ROPE, "tie_word_embeddings": False},
        {**_QWEN_VISION, "out_hidden_size": 3584},
        {"tie_word_embeddings": False},
    ),
    "gemma-3-4b": Real(  # google/gemma-3-4b-it (MedGemma 4B has the same architecture)
        "gemma3", {"image_size": 896, "patch_size": 14, "mm_tokens_per_image": 256},
        {"vocab_size": 262208, "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
         "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "query_pre_attn_scalar": 256,
         "sliding_window": 1024, "sliding_window_pattern": 6, "_sliding_window_pattern": 6,
         "max_position_embeddings": 131072,
         "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                             "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}}},
        {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
         "image_size": 896, "patch_size": 14, "vision_use_head": False},
        {"mm_tokens_per_image": 256},
    ),
    "smolvlm-256m": Real(  # HuggingFaceTB/SmolVLM-256M-Instruct
        "idefics3", {"image_size": 512, "patch_size": 16, "scale_factor": 4, "longest_edge": 2048},
        {"vocab_size": 49280, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
         "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "max_position_embeddings": 8192,
         "rms_norm_eps": 1e-5, "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
         "tie_word_embeddings": True},
        {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
         "image_size": 512, "patch_size": 16},
        {"scale_factor": 4},
    ),
}  # fmt: skip


def real_loader(spec: Real, folder: Path, device: str, dtype: torch.dtype, layers: int | None) -> Callable[[], Any]:
    """A function that builds the real-size model in memory on ``device`` (random init, ``dtype``) as an HFVLM, with
    the fixture's processor at the real image settings. ``layers`` (testing only) cuts both towers' depth."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from components.models.hf import HFVLM, family_for
    from tests.fixtures.tiny_vlms import build_tiny

    build_tiny(spec.family, folder, **spec.fixture)
    text, vision = dict(spec.text), dict(spec.vision)
    if layers is not None:
        text["num_hidden_layers"] = layers
        vision["depth" if "depth" in vision else "num_hidden_layers"] = layers
        if "fullatt_block_indexes" in vision:
            vision["fullatt_block_indexes"] = [layers - 1]
    config = _rebuild(AutoConfig.from_pretrained(folder, local_files_only=True), text, vision, spec.top)
    processor = family_for(config).load_processor(folder)

    def load() -> Any:
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
        return HFVLM(model, processor, source=f"random {spec.family} at real size").eval()

    return load


Prepare = Callable[[Path], Callable[[], Any]]  # a temporary folder -> a function that builds one fresh model


def run(jobs: dict[str, tuple[str, Prepare]], args: argparse.Namespace, device: str) -> tuple[list[Result], dict]:
    """Measure every job (name -> its family and how to prepare it) whose family can run; the others are skipped."""
    records, load_image, source = make_records(args.batch)
    print(f"records: {len(records)} from {source}", flush=True)
    present = availability(tuple(dict.fromkeys(family for family, _ in jobs.values())))
    results, skipped = [], {}
    for name, (family, prepare) in jobs.items():
        if present[family] is not None:
            skipped[name] = str(present[family])
            print(f"skip {name}: {skipped[name]}", flush=True)
            continue
        with tempfile.TemporaryDirectory(prefix=f"byo-{family}-") as tmp:
            try:
                load = prepare(Path(tmp))
                for dropout in args.dropout:
                    result = measure(name, family, load, records, load_image, steps=args.steps, warmup=args.warmup,
                                     dropout=dropout, device=device)  # fmt: skip
                    results.append(result)
                    print(f"done {name}, dropout {dropout}: H-LoRA/LoRA {result.ratio():.3f} wall, "
                          f"{result.ratio('cpu'):.3f} cpu", flush=True)  # fmt: skip
            except Exception as e:  # noqa: BLE001  (another engineer's family may be mid-change: report, go on)
                skipped[name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                print(f"FAILED {name}: {skipped[name]}", flush=True)
            finally:
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
    return results, skipped


# -- output -------------------------------------------------------------------------------------------------------
def format_table(results: list[Result], real: bool = False) -> str:
    """One markdown row per result and clock (real mode: the wall clock, with tokens/s and peak memory)."""
    head = "| dropout | model | tokens/step (image) | batch x len | clock | LoRA ms | H-LoRA ms | H-LoRA/LoRA "
    head += "| per round p25 / p50 / p75 "
    head += "| LoRA tok/s | H-LoRA tok/s | LoRA peak GiB | H-LoRA peak GiB |" if real else "| per-core GFLOP/s |"
    lines = [head, "|---:|---|---:|---:|---|---:|---:|---:|---:|" + ("---:|" * 4 if real else "---:|")]
    for r in sorted(results, key=lambda r: -r.dropout):  # stable: families keep their order within a dropout
        for clock in ("wall",) if real else ("wall", "cpu"):
            ratio, (q1, q2, q3) = r.ratio(clock), r.spread(clock)
            row = (f"| {r.dropout} | {r.name} | {r.tokens} ({r.image_tokens}) | {r.padded[0]} x {r.padded[1]} "
                   f"| {clock} | {r.ms('lora', clock):.1f} | {r.ms('hlora', clock):.1f} "
                   f"| {ratio:.3f} {'✓' if ratio <= TARGET else '✗'} | {q1:.2f} / {q2:.2f} / {q3:.2f} |")  # fmt: skip
            if real:
                tps = [r.tokens / (r.ms(m) / 1e3) for m in METHODS]
                row += f" {tps[0]:.0f} | {tps[1]:.0f} | {r.peak_gib['lora']:.2f} | {r.peak_gib['hlora']:.2f} |"
            else:
                row += f" {statistics.median(r.gflops):.1f} |"
            lines.append(row)
    return "\n".join(lines)


def report(results: list[Result], skipped: dict[str, str], real: bool) -> None:
    print("\n" + format_table(results, real))
    if results:
        r = results[0]
        print(f"\nTrainable parameters: LoRA {r.trainable['lora']:,}, H-LoRA {r.trainable['hlora']:,} ({r.name}); "
              f"adapter dtype LoRA {r.adapter_dtype['lora']}, H-LoRA {r.adapter_dtype['hlora']}.")  # fmt: skip
    for r in results:
        clocks = ("wall",) if real else ("wall", "cpu")
        verdict = ", ".join(f"{c} {r.ratio(c):.3f} {'met' if r.ratio(c) <= TARGET else 'NOT met'}" for c in clocks)
        print(f"- {r.name}, dropout {r.dropout}: H-LoRA/LoRA {verdict} (target <= {TARGET})")
    for name, why in skipped.items():
        print(f"- {name}: skipped — {why}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES, help="tiny mode")
    parser.add_argument("--models", nargs="+", default=list(REAL), choices=list(REAL), help="real mode")
    parser.add_argument("--real", action="store_true", help="real sizes, bf16, on CUDA (skipped without CUDA)")
    parser.add_argument("--quick", action="store_true", help="2 measured steps of one family (path check)")
    parser.add_argument("--hidden", type=int, default=512, help="tiny mode: the language model's width")
    parser.add_argument(
        "--layers", type=int, default=None, help="tiny: LM layers (2); real: cut both towers to N (a smaller GPU)"
    )
    parser.add_argument("--steps", type=int, default=None, help="measured rounds (default 20 tiny, 10 real)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None, help="records per step (default 4 tiny, 2 real)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--dropout", type=float, nargs="+", default=[0.05, 0.0], help="one table per value")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # load reports, deprecation and torchvision notes: not the benchmark's output
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)  # peft's call
    torch.set_num_threads(args.threads)
    args.steps = args.steps or (10 if args.real else 20)
    args.batch = args.batch or (2 if args.real else 4)
    if args.quick:
        args.steps, args.warmup, args.dropout = 2, 1, args.dropout[:1]
    load_before = os.getloadavg()[0]
    for _ in range(3):  # the first calls pay one-off set-up
        per_core_gflops()
    gflops_before = per_core_gflops()
    if args.real:
        if not torch.cuda.is_available():
            print("--real skipped: it needs a CUDA GPU (random-init 0.3B-7B VLMs in bf16) and torch.cuda is not "
                  "available here; nothing measured. The tiny CPU benchmark is the default mode.")  # fmt: skip
            return 0
        models = tuple(args.models[:1] if args.quick else args.models)
        print(f"# H-LoRA vs LoRA at real sizes — {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, "
              f"batch {args.batch}, {args.steps} interleaved steps after {args.warmup}")  # fmt: skip
        jobs = {
            n: (REAL[n].family, lambda tmp, spec=REAL[n]: real_loader(spec, tmp, "cuda", torch.bfloat16, args.layers))
            for n in models
        }
        results, skipped = run(jobs, args, "cuda")
    else:
        args.layers = args.layers or 2
        families = tuple(args.families[:1] if args.quick else args.families)
        print(f"# H-LoRA vs LoRA per family, tiny width — torch {torch.__version__}, {args.threads} threads, "
              f"{platform.processor() or platform.machine()}, LM hidden {args.hidden} x {args.layers} layers, batch "
              f"{args.batch}, rank {RANK} (H-LoRA {EXPERTS} x {RANK // EXPERTS}), {args.steps} interleaved steps "
              f"after {args.warmup}")  # fmt: skip
        jobs = {f: (f, lambda tmp, f=f: tiny_loader(f, tmp, args.hidden, args.layers)) for f in families}
        results, skipped = run(jobs, args, "cpu")
    report(results, skipped, args.real)
    print(f"\nPer-core speed (1-thread fp32 512^3 matmul): {gflops_before:.1f} GFLOP/s before, "
          f"{per_core_gflops():.1f} after; load average (1 min) {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores.")  # fmt: skip
    return 1 if any(why.startswith("failed") for why in skipped.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
