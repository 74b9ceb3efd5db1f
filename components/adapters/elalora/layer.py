"""The ElaLoRA layer: AdaLoRA's SVD form with ``r_max`` pre-allocated rank slots and an active mask (METHODS.md §2).

For an input x (width d_in), with slots i = 1..r_max::

    delta = B · ((A · dropout(x)) * (E * mask)) * alpha / r0       # A (r_max, d_in), E (r_max,), B (d_out, r_max)
    y     = base(x) + delta

An inactive slot (mask 0) contributes nothing and receives a zero gradient in A, E and B, so toggling slots
changes the rank without changing any tensor shape: the optimizer, its state and the learning-rate schedule live
on across reallocations (the public code rebuilds them; METHODS.md "known weaknesses"). The mask is a persistent
buffer (``elalora_mask``), saved in the adapter's safetensors beside A, E and B.

Slot operations used by :mod:`components.adapters.elalora.allocator`:

- :meth:`ElaLoraLayer.prune_slots` sets mask and E of the slots to 0 (E = 0 so that ``merge`` and the masked
  forward agree bit for bit).
- :meth:`ElaLoraLayer.grow_slots` activates free slots with a random A row orthogonalised against the active rows,
  a random B column orthogonalised against the active columns, both normalised, and E = 0: the layer's output is
  unchanged at insertion. When the active rows already span the whole space (r >= d_in) there is nothing to be
  orthogonal to; the vector is then only normalised.

Init (paper / peft's AdaLoRA): A, B ~ N(0, 0.02²), E = 0; the first ``r`` slots (or the module's ``rank_pattern``
rank) are active.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn


class ElaLoraLayer(BaseTunerLayer):
    """State of the ElaLoRA adapters on one wrapped ``nn.Linear`` (one entry per adapter name)."""

    adapter_layer_names: tuple[str, ...] = ("elalora_A", "elalora_E", "elalora_B")
    other_param_names: tuple[str, ...] = ("r", "r_max", "lora_alpha", "scaling", "elalora_dropout", "elalora_mask")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.r: dict[str, int] = {}  # initial active rank (the rank at creation; see active_rank for the current one)
        self.r_max: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.elalora_dropout = nn.ModuleDict({})
        self.elalora_A = nn.ParameterDict({})
        self.elalora_E = nn.ParameterDict({})
        self.elalora_B = nn.ParameterDict({})
        self.elalora_mask = BufferDict({}, persistent=True)
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"ElaLoRA adapts nn.Linear layers only, got {type(base).__name__}")
        self.in_features = base.in_features
        self.out_features = base.out_features

    def update_layer(
        self,
        adapter_name: str,
        *,
        r: int,
        r_max: int,
        lora_alpha: float,
        scale_rank: int,
        lora_dropout: float,
        init_lora_weights: bool = True,
        inference_mode: bool = False,
    ) -> None:
        """Add adapter ``adapter_name``: ``r_max`` slots, the first ``r`` active, scale ``lora_alpha / scale_rank``."""
        if not 1 <= r <= r_max:
            raise ValueError(f"ElaLoRA needs 1 <= r <= r_max, got r={r}, r_max={r_max}")
        self.r[adapter_name] = r
        self.r_max[adapter_name] = r_max
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha / scale_rank
        self.elalora_dropout[adapter_name] = nn.Dropout(p=lora_dropout) if lora_dropout > 0.0 else nn.Identity()
        self.elalora_A[adapter_name] = nn.Parameter(torch.empty(r_max, self.in_features))
        self.elalora_E[adapter_name] = nn.Parameter(torch.empty(r_max))
        self.elalora_B[adapter_name] = nn.Parameter(torch.empty(self.out_features, r_max))
        mask = torch.zeros(r_max)
        mask[:r] = 1.0
        self.elalora_mask[adapter_name] = mask
        self.reset_parameters(adapter_name, init_lora_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def reset_parameters(self, adapter_name: str, init_lora_weights: bool = True) -> None:
        """A, B ~ N(0, 0.02²); E = 0 (E ~ N(0, 1) when ``init_lora_weights`` is False, for tests)."""
        if adapter_name not in self.elalora_A:
            return
        with torch.no_grad():
            nn.init.normal_(self.elalora_A[adapter_name], mean=0.0, std=0.02)
            nn.init.normal_(self.elalora_B[adapter_name], mean=0.0, std=0.02)
            if init_lora_weights:
                nn.init.zeros_(self.elalora_E[adapter_name])
            else:
                nn.init.normal_(self.elalora_E[adapter_name], mean=0.0, std=1.0)

    # -- the slots --------------------------------------------------------------------------------------------------

    def active_slots(self, adapter_name: str) -> torch.Tensor:
        """Indices of the active slots (ascending)."""
        return torch.nonzero(self.elalora_mask[adapter_name] > 0, as_tuple=False).flatten()

    def free_slots(self, adapter_name: str) -> torch.Tensor:
        return torch.nonzero(self.elalora_mask[adapter_name] <= 0, as_tuple=False).flatten()

    def active_rank(self, adapter_name: str) -> int:
        return int((self.elalora_mask[adapter_name] > 0).sum())

    @torch.no_grad()
    def prune_slots(self, adapter_name: str, slots: list[int]) -> None:
        """Deactivate ``slots`` (mask 0, E 0); refuses to leave the matrix without a rank."""
        if not slots:
            return
        mask = self.elalora_mask[adapter_name]
        if any(mask[s] <= 0 for s in slots):
            raise ValueError(f"prune_slots: slots {slots} are not all active")
        if self.active_rank(adapter_name) - len(slots) < 1:
            raise ValueError(
                f"prune_slots: removing {len(slots)} of {self.active_rank(adapter_name)} ranks leaves none"
            )
        index = torch.tensor(slots, device=mask.device)
        mask[index] = 0.0
        self.elalora_E[adapter_name][index] = 0.0

    @torch.no_grad()
    def grow_slots(self, adapter_name: str, count: int, generator: torch.Generator | None = None) -> list[int]:
        """Activate ``count`` free slots (lowest indices first) as new ranks with E = 0; returns their indices."""
        free = self.free_slots(adapter_name).tolist()
        if count > len(free):
            raise ValueError(
                f"grow_slots: {count} ranks asked, {len(free)} free slots (r_max={self.r_max[adapter_name]})"
            )
        weight_a, weight_b = self.elalora_A[adapter_name], self.elalora_B[adapter_name]
        mask, e = self.elalora_mask[adapter_name], self.elalora_E[adapter_name]
        grown: list[int] = []
        for slot in free[:count]:
            active = self.active_slots(adapter_name)
            row = _orthonormal_to(weight_a[active].float(), self.in_features, generator)
            col = _orthonormal_to(weight_b[:, active].t().float(), self.out_features, generator)
            weight_a[slot] = row.to(weight_a.dtype)
            weight_b[:, slot] = col.to(weight_b.dtype)
            e[slot] = 0.0
            mask[slot] = 1.0
            grown.append(int(slot))
        return grown

    def orthogonality(self, adapter_name: str) -> torch.Tensor:
        """``‖A Aᵀ - I‖_F + ‖Bᵀ B - I‖_F`` over the active slots (masked, so no indexing on the hot path)."""
        mask = self.elalora_mask[adapter_name]
        weight_a, weight_b = self.elalora_A[adapter_name], self.elalora_B[adapter_name]
        outer = mask[:, None] * mask[None, :]
        eye = torch.diag(mask)
        gram_a = (weight_a @ weight_a.t()) * outer - eye
        gram_b = (weight_b.t() @ weight_b) * outer - eye
        return torch.linalg.matrix_norm(gram_a) + torch.linalg.matrix_norm(gram_b)

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The (d_out, d_in) weight update of the active slots."""
        gains = self.elalora_E[adapter_name] * self.elalora_mask[adapter_name]
        return (self.elalora_B[adapter_name] * gains) @ self.elalora_A[adapter_name] * self.scaling[adapter_name]

    def add_elalora(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        weight_a = self.elalora_A[adapter_name]
        gains = self.elalora_E[adapter_name] * self.elalora_mask[adapter_name] * self.scaling[adapter_name]
        hidden = F.linear(self.elalora_dropout[adapter_name](x.to(weight_a.dtype)), weight_a) * gains
        return result + F.linear(hidden, self.elalora_B[adapter_name]).to(result.dtype)


def _orthonormal_to(rows: torch.Tensor, width: int, generator: torch.Generator | None) -> torch.Tensor:
    """A random unit vector of ``width`` orthogonal to the span of ``rows`` (k, width) when that span is not all."""
    vector = torch.randn(width, generator=generator, dtype=torch.float32).to(rows.device)
    if rows.shape[0] and rows.shape[0] < width:
        basis, _ = torch.linalg.qr(rows.t())  # (width, k): orthonormal basis of the active rows' span
        vector = vector - basis @ (basis.t() @ vector)
        vector = vector - basis @ (basis.t() @ vector)  # twice is enough (Kahan's rule) for float32
    return vector / vector.norm().clamp_min(1e-12)


class Linear(nn.Module, ElaLoraLayer):
    """An ``nn.Linear`` with ElaLoRA adapters; the active adapter(s) add their masked SVD-form delta."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        super().__init__()
        ElaLoraLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, **kwargs)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        base = self.get_base_layer()
        assert isinstance(base, nn.Linear)  # checked in ElaLoraLayer.__init__
        from components.models.quantize import is_quantized

        if is_quantized(base):  # adding a delta to packed 4-/8-bit storage would corrupt it (issue 20)
            raise ValueError(
                "cannot merge ElaLoRA into a 4-/8-bit base layer (model.quantize); load the base unquantized to merge"
            )
        for name in adapter_names or list(self.active_adapters):
            if name not in self.elalora_A or name in self.merged_adapters:
                continue
            delta = self.delta_weight(name).to(base.weight.dtype)
            if safe_merge and not torch.isfinite(base.weight + delta).all():
                raise ValueError(f"NaNs or infs when merging ElaLoRA adapter {name!r}")
            base.weight.data += delta
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        base = self.get_base_layer()
        assert isinstance(base, nn.Linear)
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            base.weight.data -= self.delta_weight(name).to(base.weight.dtype)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        return self.delta_weight(adapter)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError("ElaLoRA does not support per-example adapter_names; switch adapters with set_adapter")
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        for name in self.active_adapters:
            if name in self.elalora_A:
                result = self.add_elalora(name, x, result)
        return result

    def __repr__(self) -> str:
        return "elalora." + super().__repr__()
