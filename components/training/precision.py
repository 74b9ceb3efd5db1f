"""Mixed precision of a training stage: fp32 master weights under a bf16/fp16 frozen base (issue 20, item 1).

    from components.training.precision import Precision
    precision = Precision.for_model(model, trainable_names, device, bf16=True)   # after freeze_for, before AdamW
    with precision.context():
        loss = ...
    precision.backward(loss); precision.unscale(optimizer); clip; precision.step(optimizer)  # fp16: scaler
    precision.restore()                                                           # at the end of the stage

**Master weights.** With ``model.dtype: bfloat16`` (or float16) the whole model loads in that dtype. The stage's
trainable parameters (adapters, projectors, embedding and head rows: :func:`upcast_trainable`) are cast to float32
*in place* (``param.data``, so the Parameter object, its name and any tying stay the same) before the optimizer is
built: AdamW then keeps float32 moments and steps float32 values, so updates far below a bf16 ulp (lr 2e-4 x a
small gradient) are not rounded away. The frozen base stays in its dtype (half the memory of float32; a 4-/8-bit
base from :mod:`components.models.quantize` is not touched). :meth:`Precision.restore` casts the upcast
parameters back at the end of the stage (after the trained tensors were saved in float32), so that inference,
evaluation and the next stage see one dtype again; the next stage upcasts what it trains.

**Autocast.** A float32 trainable tensor next to a bf16 frozen one needs autocast for the matmuls to meet in one
dtype, so a low-precision base autocasts to its own dtype *on CPU too* (torch's CPU autocast runs bf16 and fp16
matmuls; decided here for the issue, so that the CPU tests exercise the same code path as the GPU). A float32 base
keeps the trainer's previous rule: bf16 autocast on CUDA (``TrainArgs.bf16``), none on CPU, where a resumed run
then equals an uninterrupted one bit for bit. Float16 adds a ``torch.amp.GradScaler`` (fp16's 5-bit exponent
underflows small gradients); bf16 needs none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

LOW_PRECISION = (torch.bfloat16, torch.float16)


def low_precision_dtype(model: nn.Module) -> torch.dtype | None:
    """bfloat16 (or float16) when any floating-point parameter of ``model`` has that dtype, else None: a float32
    tensor that trains next to one of them needs autocast to meet it. Packed 4-/8-bit weights (integer storage)
    are not counted; bfloat16 wins over float16 in a model that holds both."""
    found = {p.dtype for p in model.parameters() if p.dtype in LOW_PRECISION}
    return torch.bfloat16 if torch.bfloat16 in found else (torch.float16 if found else None)


def upcast_trainable(model: nn.Module, names: Iterable[str]) -> Callable[[], None]:
    """Cast the floating-point parameters named ``names`` that are narrower than float32 to float32, in place;
    returns a function that casts them back to their dtypes (see the module docstring)."""
    wanted = set(names)
    changed: list[tuple[nn.Parameter, torch.dtype]] = []
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if name not in wanted or id(param) in seen or not param.is_floating_point():
            continue
        seen.add(id(param))
        if param.dtype in LOW_PRECISION:
            changed.append((param, param.dtype))
            param.data = param.data.float()

    def restore() -> None:
        for param, dtype in changed:
            param.data = param.data.to(dtype)
            if param.grad is not None:
                param.grad = None

    return restore


@dataclass
class Precision:
    """How one stage computes: autocast dtype (None: none), fp16 loss scaling, the master-weight restore."""

    device: torch.device
    dtype: torch.dtype | None
    restore: Callable[[], None] = field(default=lambda: None)
    scaler: Any = None  # torch.amp.GradScaler for float16, else None

    @classmethod
    def for_model(
        cls, model: nn.Module, trainable: Iterable[str], device: torch.device, *, bf16: bool = True
    ) -> Precision:
        """Upcast ``trainable`` to float32 and choose the autocast (see the module docstring)."""
        low = low_precision_dtype(model)
        restore = upcast_trainable(model, trainable)
        if low is not None:
            dtype: torch.dtype | None = low
        elif device.type == "cuda" and bf16:
            dtype = torch.bfloat16
        else:
            dtype = None
        scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        return cls(device, dtype, restore, scaler)

    def context(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context (re-usable, one micro-batch at a time), or a null one."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Before clipping: the gradients in their true scale (a no-op without a scaler)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; with fp16 the scaler's step (skipped on inf/nan gradients) and update."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()
