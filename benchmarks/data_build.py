"""Data build throughput: the default sources (phantom + embedded DICOM) with 1 and 2 workers, and a no-op rebuild.

    .venv/bin/python benchmarks/data_build.py [--subjects 48] [--repeats 3] [--size 64]

Each row builds into a fresh folder of a temporary workspace (``force=True``: no skipping) from
``configs/default.yaml`` with the phantom's subject count overridden; the time is the whole ``build_dataset``
call (reading and rendering the sources, decoding, normalising, PNG-encoding and writing the images, records,
report, atomic swap); images/s counts the distinct image files written. "images stage" is the decode/encode/
write step alone, the part the worker pool parallelises. "no-op rebuild" is a second build of identical inputs
into the same folder: the inputs stamp matches and the build is skipped; "forced rebuild" redoes the work and
must give byte-identical files (checked). Prints a markdown table; the median of ``--repeats`` runs is shown.
The header gives the machine's load average: on a busy 2-core machine a second worker process only competes
for the same cores, so compare rows measured together.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from components.config.loader import load_config
from components.data.build import BuildReport, build_dataset
from components.data.intake import ingest
from components.data.samples import materialize_embedded

REPO = Path(__file__).resolve().parent.parent


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=48, help="phantom subjects (48 = the embedded default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=64, help="data.image.size")
    args = parser.parse_args()
    cfg = load_config(
        REPO / "configs" / "default.yaml",
        [f"data.sources.phantom.subjects={args.subjects}", f"data.image.size={args.size}"],
    ).data
    with tempfile.TemporaryDirectory(prefix="medtune-data-bench-") as tmp:
        ws = Path(tmp)
        materialize_embedded(ws / cfg.intake)  # identified, as published; de-identified into the raw tree
        key = b"benchmark-key-0123456789abcdef"
        ingest(
            dict(cfg.sources),
            workspace=ws,
            raw=cfg.raw,
            intake=cfg.intake,
            key=key,
            secrets=ws / "secrets",
            stamps=ws / "stamps",
            burned_in=cfg.deid.burned_in,
        )

        def run(out: str, workers: int, force: bool = True) -> tuple[float, BuildReport]:
            t = time.perf_counter()
            report = build_dataset(
                dict(cfg.sources),
                ws / out,
                workspace=ws,
                image_size=cfg.image.size,
                image_mode=cfg.image.mode,
                resize=cfg.image.resize,
                split_ratios=(cfg.splits.train, cfg.splits.val, cfg.splits.test),
                split_seed=cfg.splits.seed,
                on_error=cfg.on_error,
                workers=workers,
                deid_key=key,
                seed=0,
                force=force,
            )
            return time.perf_counter() - t, report

        rows = []
        digests = set()
        for workers in (1, 2):
            runs = [run(f"w{workers}-{i}", workers) for i in range(args.repeats)]
            digests.update(tree_digest(ws / f"w{workers}-{i}") for i in range(args.repeats))
            total = statistics.median(t for t, _ in runs)
            stage = statistics.median(r.timing["images_s"] for _, r in runs)
            report = runs[0][1]
            rows.append((f"build, {workers} worker{'s' if workers > 1 else ''}", report, total, stage))
        noop = [run("w1-0", 1, force=False) for _ in range(args.repeats)]
        assert all(r.skipped for _, r in noop), "identical inputs were not recognised"
        forced = [run("w1-0", 1) for _ in range(args.repeats)]
        digests.add(tree_digest(ws / "w1-0"))
    if len(digests) != 1:
        raise SystemExit(f"builds differ: {len(digests)} distinct outputs (expected byte-identical)")
    report = rows[0][1]
    print(
        f"default sources: phantom subjects={args.subjects} + {report.per_source.get('pydicom_samples', 0) // 3} "
        f"embedded DICOM files; {report.records} records, {report.images} images of {args.size}x{args.size}; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end; all builds byte-identical"
    )
    print()
    print("| run | time (s) | images/s (whole build) | images stage (s) | images/s (images stage) |")
    print("|---|---|---|---|---|")
    for name, rep, total, stage in rows:
        print(f"| {name} | {total:.2f} | {rep.images / total:.0f} | {stage:.2f} | {rep.images / stage:.0f} |")
    t_noop = statistics.median(t for t, _ in noop)
    t_forced = statistics.median(t for t, _ in forced)
    print(f"| no-op rebuild (inputs unchanged, skipped) | {t_noop:.3f} | - | - | - |")
    print(f"| forced rebuild of identical inputs, 1 worker | {t_forced:.2f} | {report.images / t_forced:.0f} | - | - |")


if __name__ == "__main__":
    main()
