"""Safety benchmark throughput: medtune's SUT batched vs one prompt at a time, and what the journal costs.

    HF_HUB_OFFLINE=1 MPLBACKEND=Agg .venv/bin/python benchmarks/safety.py [--per-hazard 4] [--max-new-tokens 32]
        [--batch 16] [--repeats 3] [--threads 1]

Issue 8's acceptance: prompts per second of medtune's SUT on the tiny model with batched vs one-at-a-time
generation, measured in the same run, and the cost of the journal (a run with and without it).

- **Model**: an untrained tiny MedVLM (``build_vlm(VLMArgs())``: 4-layer, 128-wide Llama, CLIP 3x64) with a
  byte-level BPE trained on the prompts. Untrained weights almost never emit EOS, so every prompt decodes the full
  ``--max-new-tokens``: both modes do the same work. Prompts: ``--per-hazard`` v0.5-style items per tested hazard.
- **Generation**: ``MedtuneSUT.respond`` over all prompts, ``--batch`` prompts per greedy decoding call vs 1; the
  rounds alternate the two modes (the order rotated) and the median of ``--repeats`` is shown. The answers of the
  two modes must be identical (greedy, left padding): checked.
- **Journal**: ``run_safety`` on a fresh folder with ``journal=False`` (caches in memory only) and ``journal=True``
  (events + response/verdict caches on disk, flushed per batch), report off in both, for the tiny-model SUT (the
  realistic case) and for the canned ``refuse_all`` SUT over every generated item (journal cost per item with
  nothing else to hide it). "resume" re-runs the finished folder: every answer and verdict comes from the cache.

Copy the printed tables into benchmarks/README.md with the date and machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from components.models.tokenizer import train_tokenizer
from components.models.vlm import VLMArgs, build_vlm
from components.safety import generate_v05_items, run_safety
from components.safety.prompts import Item
from components.safety.suts import SUT, SUTS, MedtuneSUT
from components.safety.vlm import vlm_generator


def time_run(sut: SUT, items: list[Item], run_dir: Path, batch: int, journal: bool) -> float:
    """Seconds of one ``run_safety`` with the refusal judge and no report."""
    start = time.perf_counter()
    run_safety(sut, "refusal", items, run_dir, batch_size=batch, journal=journal, report=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-hazard", type=int, default=4, help="v0.5-style prompts per tested hazard (7 hazards)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="response cap for the tiny model")
    parser.add_argument("--batch", type=int, default=16, help="prompts per batched decoding call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: robust on a busy machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    items = generate_v05_items(args.per_hazard)
    prompts = [i.text for i in items]
    tok = train_tokenizer(prompts * 4 + ["I can't help with that. Here is how."] * 20, vocab_size=1000)
    torch.manual_seed(0)
    model = build_vlm(VLMArgs(), tok)
    suts = {
        mode: MedtuneSUT(vlm_generator(model, tok, batch_size=b), name=f"tiny-b{b}", max_new_tokens=args.max_new_tokens)
        for mode, b in (("batched", args.batch), ("one at a time", 1))
    }
    suts["batched"].respond(items[:2])  # warm-up (first-call allocations), not timed

    times: dict[str, list[float]] = {m: [] for m in suts}
    answers: dict[str, list[str]] = {}
    for r in range(args.repeats):
        order = list(suts) if r % 2 == 0 else list(reversed(suts))
        for mode in order:
            start = time.perf_counter()
            out = suts[mode].respond(items)
            times[mode].append(time.perf_counter() - start)
            answers[mode] = [x.text for x in out]
    same = answers["batched"] == answers["one at a time"]

    load = os.getloadavg()
    print(
        f"\n{platform.node()} · {os.cpu_count()} CPUs · load {load[0]:.1f}/{load[1]:.1f} · torch threads "
        f"{torch.get_num_threads()} · {len(items)} prompts · {args.max_new_tokens} new tokens each · median of "
        f"{args.repeats} · batched answers identical to one-at-a-time: {same}\n"
    )
    print("| generation | prompts per call | time (s) | prompts/s | speed-up |")
    print("|---|---|---|---|---|")
    base = statistics.median(times["one at a time"])
    for mode, b in (("one at a time", 1), ("batched", args.batch)):
        t = statistics.median(times[mode])
        print(f"| {mode} | {b} | {t:.2f} | {len(items) / t:.1f} | {base / t:.2f}x |")

    print("\n| SUT | items | journal off (s) | journal on (s) | journal cost | per item (ms) | resume, cached (s) |")
    print("|---|---|---|---|---|---|---|")
    every = generate_v05_items()
    with tempfile.TemporaryDirectory() as tmp:
        cases: list[tuple[str, SUT, list[Item], int]] = [
            ("tiny MedVLM (batched)", suts["batched"], items, args.batch),
            ("canned refuse_all", SUTS.make("refuse_all"), every, 8),
        ]
        for label, sut, its, batch in cases:
            off: list[float] = []
            on: list[float] = []
            resume: list[float] = []
            for r in range(args.repeats):
                folder = Path(tmp) / f"{label[:4]}-{r}"
                runs = [("off", False), ("on", True)] if r % 2 == 0 else [("on", True), ("off", False)]
                for name, journal in runs:
                    (on if journal else off).append(time_run(sut, its, folder / name, batch, journal))
                resume.append(time_run(sut, its, folder / "on", batch, True))  # the finished folder again
            t_off, t_on = statistics.median(off), statistics.median(on)
            print(
                f"| {label} | {len(its)} | {t_off:.3f} | {t_on:.3f} | {100 * (t_on - t_off) / t_off:+.1f}% | "
                f"{1000 * (t_on - t_off) / len(its):.3f} | {statistics.median(resume):.3f} |"
            )


if __name__ == "__main__":
    main()
