"""The optimizer the training loops build: torch's AdamW, fused where it applies.

    from components.training.optim import adamw
    optimizer = adamw(params, lr=5e-4, weight_decay=0.0)

``fused=True`` runs one kernel per step over all parameters instead of a dozen small element-wise ops per tensor.
On the embedded default's ~100 small tensors that for-loop was a tenth of a CPU step (benchmarks/README.md, "The main
job"); torch fuses AdamW on CPU and CUDA for floating tensors. Where it does not apply (a sharded FSDP parameter
is a DTensor, other devices, non-floating tensors) the default implementation is used. Fused and unfused agree up
to float rounding, not bitwise: a run is reproducible with itself, and a resumed run uses the same implementation
because the choice depends only on the parameters.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

FUSED_DEVICES = ("cpu", "cuda")


def fusable(params: list[Tensor]) -> bool:
    """Every parameter a plain floating tensor on one CPU or CUDA device type (not a DTensor or other subclass)."""
    return (
        bool(params)
        and all(type(p) in (Tensor, torch.nn.Parameter) for p in params)
        and all(p.is_floating_point() for p in params)
        and len({p.device.type for p in params}) == 1
        and params[0].device.type in FUSED_DEVICES
    )


def adamw(
    params: Iterable[Tensor],
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``params``, fused when :func:`fusable`."""
    params = list(params)
    return torch.optim.AdamW(
        params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True if fusable(params) else None
    )
