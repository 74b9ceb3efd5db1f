"""This machine's per-core speed, printed beside every absolute time a benchmark reports (machines of one kind
differ by 3x): GFLOP/s of one single-thread float32 512 x 512 x 512 matmul, best of 3.

No side effects on import: a benchmark that starts ``medtune`` commands passes its environment on, and an
``OMP_WAIT_POLICY`` set here would change how those commands run (``benchmarks/main_job.py`` once ran ``medtune
run`` with byo_vlm.py's ``OMP_WAIT_POLICY=PASSIVE``, 1.4-1.6x slower on an idle machine; benchmarks/README.md).
"""

from __future__ import annotations

import os
import time

import torch

_CALIBRATION = (torch.randn(512, 512, generator=torch.Generator().manual_seed(0)),) * 2


def per_core_gflops() -> float:
    """GFLOP/s of one single-thread float32 512 x 512 x 512 matmul (best of 3): this core's speed right now."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        torch.mm(*_CALIBRATION)
        best = min(best, time.perf_counter() - start)
    torch.set_num_threads(threads)
    return 2 * 512**3 / best / 1e9


def snapshot() -> dict[str, float]:
    """The per-core figure and the one-minute load average now, for a benchmark's start."""
    return {"per_core_gflops": round(per_core_gflops(), 1), "load_average": round(os.getloadavg()[0], 2)}


def close(speed: dict[str, float]) -> None:
    """Add the closing figures to ``speed`` (from :func:`snapshot`) and print both ends on one line."""
    speed.update(per_core_gflops_after=round(per_core_gflops(), 1), load_average_after=round(os.getloadavg()[0], 2))
    print(f"\nper-core speed (1-thread fp32 512^3 matmul) {speed['per_core_gflops']} GFLOP/s before, "
          f"{speed['per_core_gflops_after']} after; load average {speed['load_average']} -> "
          f"{speed['load_average_after']}")  # fmt: skip
