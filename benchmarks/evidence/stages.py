"""Evidence for HealthGPT's staged training (issue 23, claim 4; METHODS.md §1): its three stages beat one mixed
stage of the same total steps, on the current embedded default, over several seeds.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/evidence/stages.py --json /tmp/stages.json   # 3 seeds, ~1 h
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/evidence/stages.py --quick                  # ~5 min, not evidence

The arms are ``benchmarks/hlora.py``'s ablation (:func:`hlora.ablation_table`: three stages vs one mixed stage of
the summed steps, sharing one base and one VQ tokenizer, scored on the test split). What this script adds:

- **The current default**: the recipe's settings are read from ``configs/default.yaml`` (model shape, base steps,
  batch and rate, vision warm-up, stage steps and rates, adapter) the way ``medtune run``'s train stage reads them;
  the mixed stage trains at stage 3's rate, as the pipeline sets it. The dataset is the default's phantom source
  (its subjects, image policy and split), built once into ``--work``; the default's handful of pydicom sample
  records are not in it, and the rank search's pattern is not applied (uniform ranks in both arms).
- **Seeds**: ``--seeds`` (3); seed s trains its own base, VQ tokenizer and both arms (the arms share the base, so
  they are paired by seed).
- Rates are the recipe's, not tuned per arm here (stated in the table).

``--quick``: 2 seeds, the base and the stages cut to a few dozen steps: it checks the script, it is not evidence.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sys  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]  # claimstats; the sibling benchmark scripts whose task code is reused

import argparse  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from claimstats import finish, interval, preamble, table, verdict  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
METRICS = {"closed_accuracy": "closed acc", "open_recall": "open recall", "ssim": "SSIM",
           "ssim_ct_to_mri": "SSIM CT->MRI"}  # fmt: skip


def recipe_kwargs(cfg: Any) -> dict[str, Any]:
    """``train_recipe`` arguments of the default config, as ``pipelines.stages``' train stage passes them (base
    settings included, since the first arm of each seed bootstraps the base)."""
    from components.models.vq import VQConfig
    from pipelines.stages import model_args

    args = model_args(types.SimpleNamespace(config=cfg))  # type: ignore[arg-type]  # it reads .config only
    a, t, b = cfg.adapter, cfg.train, cfg.base
    return dict(
        model_args=args, vocab_size=cfg.model.lm.vocab_size,
        base_steps=b.steps, base_batch_size=b.batch_size, base_lr=b.lr, base_vision_warmup=b.vision_warmup,
        vq_config=VQConfig(image_size=args.image_size, channels=args.channels, downsample=cfg.vq.downsample,
                           codebook_size=cfg.vq.codebook_size, code_dim=cfg.vq.code_dim, hidden=cfg.vq.hidden),
        vq_steps=cfg.vq.steps, adapter_kind=a.kind, rank=a.rank, generation_rank=a.generation_rank,
        num_experts=a.experts, alpha=a.alpha, dropout=a.dropout, target_modules=a.target_modules,
        features=a.features, rank_per_feature=a.rank_per_feature, feature_dropout=a.feature_dropout,
        stage_lr={1: t.stage1.lr, 2: t.stage2.lr, 3: t.stage3.lr, "mixed": t.stage3.lr},
        batch_size=t.batch_size, grad_accum=t.grad_accum, warmup_steps=t.warmup_steps,
        max_grad_norm=t.max_grad_norm, checkpoint_every=t.checkpoint_every,
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 seeds, a few dozen steps per stage: NOT evidence")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    ap.add_argument("--work", type=Path, default=Path(".medtune") / "evidence-stages", help="data and runs go here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ns = ap.parse_args()
    torch.set_num_threads(ns.threads)
    from base_dynamics import build  # benchmarks/: the phantom dataset at the default's image policy
    from hlora import ablation_table

    from components.config.loader import ConfigError, load_config

    try:
        cfg = load_config(ns.config)
    except (ConfigError, OSError) as exc:
        raise SystemExit(f"{ns.config}: {exc}") from None
    if cfg.model.path or cfg.model.lm.path or cfg.model.vision.path:
        raise SystemExit(f"{ns.config}: sets model.path / model.lm.path / model.vision.path; this script trains the "
                         "embedded default's tiny model from scratch")  # fmt: skip
    try:
        kwargs = recipe_kwargs(cfg)
    except ValueError as exc:  # a shape this tiny recipe cannot build
        raise SystemExit(f"{ns.config}: {exc}") from None
    t = cfg.train
    steps: dict[int | str, int] = {1: t.stage1.steps, 2: t.stage2.steps, 3: t.stage3.steps}
    if ns.quick:
        ns.seeds = 2
        steps = {1: 10, 2: 20, 3: 60}
        kwargs.update(base_steps=150, base_vision_warmup=150, vq_steps=50)
    info = preamble("HealthGPT three stages vs one mixed stage (benchmarks/evidence/stages.py)", ns.quick)
    if "phantom" not in cfg.data.sources:
        raise SystemExit(f"{ns.config}: data.sources has no phantom source (this script builds the phantom dataset)")
    subjects = int(getattr(cfg.data.sources["phantom"], "subjects"))  # noqa: B009  (a PhantomSourceConfig)
    started = time.perf_counter()
    dataset = build(subjects, ns.work)
    print(f"dataset: phantom {subjects} subjects at {dataset} ({time.perf_counter() - started:.0f} s); stages "
          f"{steps} (mixed: their sum), base {kwargs['base_steps']} steps + {kwargs['base_vision_warmup']} warm-up; "
          f"{ns.seeds} seeds; {ns.threads} threads")  # fmt: skip
    per_seed: list[list[dict[str, Any]]] = []
    for seed in range(ns.seeds):
        rows = ablation_table(str(dataset), str(ns.work / f"seed{seed}"), stage_steps=steps, seed=seed, **kwargs)
        per_seed.append(rows)
        for r in rows:
            print(f"  seed {seed} {r['arm']}: closed {r['closed_accuracy']:.3f} (majority {r['closed_majority']:.3f}) "
                  f"open {r['open_recall']:.3f} SSIM CT->MRI {r['ssim_ct_to_mri']:.3f} ({r['seconds']:.0f} s; "
                  f"{time.perf_counter() - started:.0f} s in all)", flush=True)  # fmt: skip
    arms = [r["arm"] for r in per_seed[0]]

    def values(arm: str, key: str) -> list[float]:
        return [float(next(r for r in rows if r["arm"] == arm)[key]) for rows in per_seed]

    label = " (QUICK: reduced steps, not evidence)" if ns.quick else ""
    print(f"\n## Three stages vs one mixed stage{label}")
    print(f"Untuned arms: both train at the recipe's rates ({kwargs['stage_lr']}; mixed at stage 3's). Test split, "
          f"{ns.seeds} seeds (each its own base), mean ± 95% t-interval.\n")  # fmt: skip
    rows = [[arm, sum(int(v) for v in steps.values()), *(interval(values(arm, k)) for k in METRICS),
             interval(values(arm, "closed_majority")), f"{sum(values(arm, 'seconds')) / ns.seeds:.0f}"]
            for arm in arms]  # fmt: skip
    print(table(["arm", "steps", *METRICS.values(), "closed majority", "train s/seed"], rows))
    three, mixed = arms
    verdicts = [verdict(f"three stages > one mixed stage, {name}", values(three, key), values(mixed, key), paired=True)
                for key, name in METRICS.items()]  # fmt: skip
    print("\nVerdicts (paired by seed):")
    print("\n".join(f"- {v}" for v in verdicts))
    print(f"\nwall {time.perf_counter() - started:.0f} s")
    finish(info, {"steps": {str(k): v for k, v in steps.items()}, "per_seed": per_seed, "verdicts": verdicts,
                  "quick": ns.quick}, ns.json)  # fmt: skip


if __name__ == "__main__":
    main()
