"""The tiny VLM on real data: VQA-RAD with images held out, closed-question accuracy next to the majority baseline
(issue 4: "reported next to its majority baseline, whatever it is, honestly").

    .venv/bin/python benchmarks/vqa_rad.py                  # base bootstrap + stage 1 + stage 3, then the test split
    .venv/bin/python benchmarks/vqa_rad.py --quick          # a few steps: checks the path, not the quality

What it does: builds VL-Health from ``../shared/data/vqa_rad`` alone (the vqa_rad reader re-splits by image, so no
test image is seen in training; 64 px greyscale like the embedded default), bootstraps the tiny base on the train
split (the embedded default's base: vision warm-up, 4 x 4 patch merger), trains HealthGPT's comprehension stages
(1 and 3; VQA-RAD has no generation pairs, so stage 2 has nothing to learn) with H-LoRA, and scores the test split.
Two majority baselines, both fitted on the train split: the most frequent answer per question type ("majority
type") and per question template ("majority template").

No pretrained vision or language weights can be had on these machines: the tiny model starts from nothing, so on
radiology photographs it is expected to lean on question priors (answering "yes"/"no" from the wording). The table
shows that honestly; it is not a claim about medtune's method on a real base model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from components.models.vlm import VLMArgs
from components.training.base import DEFAULT_STEPS, DEFAULT_VISION_WARMUP

REPO = Path(__file__).resolve().parent.parent
VQA_RAD = (REPO.parent / "shared" / "data" / "vqa_rad").resolve()


def build(root: Path) -> Path:
    from components.data.build import build_dataset
    from components.data.sources.vqa_rad import VqaRadSourceConfig

    out = root / "vlhealth"
    report = build_dataset(
        {"vqa_rad": VqaRadSourceConfig(path=str(VQA_RAD))}, out, workspace=root, image_size=64, image_mode="L",
        resize="pad", split_ratios=(0.8, 0.1, 0.1), split_seed=0, on_error="quarantine", workers=2,
        deid_key=b"benchmark-vqa-rad" * 2, seed=0,
    )  # fmt: skip
    print(f"built {report.records} records ({len(report.quarantined)} quarantined)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few steps of each part (checks the code path)")
    ap.add_argument("--base-steps", type=int, default=DEFAULT_STEPS, help="the embedded default's")
    ap.add_argument("--vision-warmup", type=int, default=DEFAULT_VISION_WARMUP, help="the embedded default's")
    ap.add_argument("--merge", type=int, default=4, help="patch merger (model.vision.merge; the default's 4)")
    ap.add_argument("--stage-steps", type=int, default=300, help="steps of stage 1 and of stage 3")
    ap.add_argument("--threads", type=int, default=2)
    ns = ap.parse_args()
    if not VQA_RAD.is_dir():
        raise SystemExit(f"needs {VQA_RAD} (the project's ../shared/data folder beside this checkout)")
    torch.set_num_threads(ns.threads)
    from components.training.recipe import train_recipe

    base_steps, stage_steps = (10, 10) if ns.quick else (ns.base_steps, ns.stage_steps)
    warmup = 10 if ns.quick else ns.vision_warmup
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medtune-vqa-rad-") as tmp:
        dataset = build(Path(tmp))
        result = train_recipe(
            dataset, Path(tmp) / "work", model_args=VLMArgs(merge=ns.merge), base_steps=base_steps,
            base_vision_warmup=warmup, stages="1,3", vq_steps=10,
            stage_steps={1: stage_steps, 3: stage_steps}, task_mix={3: {"comprehension": 1.0}}, device="cpu",
        )  # fmt: skip
        m = result.metrics
    rows = [("all closed", "")] + [
        (k.split("=", 1)[1], "=" + k.split("=", 1)[1])
        for k in sorted(m)
        if k.startswith("closed/accuracy/question_type=") and m.get("closed/n/question_type=" + k.split("=", 1)[1], 0)
    ]
    print(f"\nVQA-RAD, images held out: base {warmup} warm-up + {base_steps} steps, merge {ns.merge}, "
          f"stages 1 and 3 x {stage_steps} steps "
          f"({time.perf_counter() - started:.0f} s)\n")  # fmt: skip
    print("| closed questions | n | tiny VLM | majority (type) | majority (template) |")
    print("|---|---|---|---|---|")
    for name, suffix in rows:
        key = f"/question_type{suffix}" if suffix else ""
        print(
            f"| {name} | {m.get('closed/n' + key, 0):.0f} | {m.get('closed/accuracy' + key, float('nan')):.3f} "
            f"| {m.get('closed/majority_type' + key, float('nan')):.3f} "
            f"| {m.get('closed/majority_template' + key, float('nan')):.3f} |"
        )
    print(f"\nopen-answer token recall {m.get('open/recall', float('nan')):.3f}")
    print(json.dumps({k: round(v, 4) for k, v in m.items() if k.startswith("closed/") and "/" not in k[7:]}))


if __name__ == "__main__":
    main()
