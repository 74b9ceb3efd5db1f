"""The H-LoRA layer: k LoRA experts fused into one wide A and one wide B, mixed per token (METHODS.md §1).

For an input token x (width d_in), with k experts of rank r each::

    g(x)  = softmax(W_router x)                               # (k,)  dense: no top-k, no balance loss
    h     = dropout(A x)                                      # (k*r,) A is (k*r, d_in), experts stacked in rows
    delta = B (h * repeat_each(g(x), r)) * alpha / r          # B is (d_out, k*r)
    y     = base(x) + delta

Two matrix products per layer whatever k is (the router rides along with A), instead of a Python loop over
experts; ``repeat_each`` is never materialised: ``h`` is viewed as (..., k, r) and multiplied by
``g[..., :, None]``, and the scale alpha / r is folded into the k gate values rather than applied to the
(..., d_out) output (see :meth:`HLoraLayer.add_hlora`).

Decisions (METHODS.md §1 and the released code, ``HealthGPT/llava/peft/tuners/lora.py``):

- **Dropout on A x, before B**, as METHODS.md says and the release does (``lora_B(g * dropout(lora_A(x)))``) —
  not on x before A as peft's LoRA does. The router always sees the clean x.
- **Scale alpha / r_per_expert** (the release's ``alpha / total_r * k``).
- **Init**: A and router Kaiming-uniform with a = sqrt(5) (peft's LoRA init), B zero, so a new plugin leaves the
  model's outputs exactly unchanged.
- **Router softmax in at least float32**, the gates then cast to the activations' dtype (the release computes
  it in the model dtype, fp16 there): identical in float32, steadier in bf16/fp16.
- **No merge**: the effective weight ``W + sum_e g_e(x) B_e A_e * scale`` depends on the token through g(x), so
  no single matrix can be folded into W; :meth:`Linear.merge` raises :class:`MergeNotSupportedError`.
- Several active adapters (``base_model.set_adapter([...])``) add their deltas; per-example ``adapter_names``
  (peft's mixed-batch inference) is not supported: switch plugins per batch with ``set_adapter``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn


class MergeNotSupportedError(RuntimeError):
    """H-LoRA cannot be merged into the base weights: its delta depends on the input through the router."""


MERGE_MESSAGE = (
    "H-LoRA cannot be merged into the base weights: the router mixes the experts with weights g(x) that depend "
    "on each token, so W + delta is not one fixed matrix (METHODS.md §1). Keep the adapter unmerged (switch "
    "plugins with set_adapter) or use unload() to get the base model back without it."
)


class HLoraLayer(BaseTunerLayer):
    """State of the H-LoRA plugins on one wrapped ``nn.Linear`` (one entry per adapter name)."""

    adapter_layer_names: tuple[str, ...] = ("hlora_A", "hlora_B", "hlora_router")
    other_param_names: tuple[str, ...] = ("r", "num_experts", "lora_alpha", "scaling", "hlora_dropout")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.r: dict[str, int] = {}
        self.num_experts: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.hlora_dropout = nn.ModuleDict({})
        # Raw parameters (peft's VeRA/DeLoRA style) rather than nn.Linear modules: shapes as F.linear wants them,
        # A (k*r, d_in), B (d_out, k*r), router (k, d_in); saved as e.g. ``q_proj.hlora_A`` in the safetensors.
        self.hlora_A = nn.ParameterDict({})
        self.hlora_B = nn.ParameterDict({})
        self.hlora_router = nn.ParameterDict({})
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"H-LoRA adapts nn.Linear layers only, got {type(base).__name__}")
        self.in_features = base.in_features
        self.out_features = base.out_features

    def update_layer(
        self,
        adapter_name: str,
        *,
        r: int,
        num_experts: int,
        lora_alpha: float,
        lora_dropout: float,
        init_lora_weights: bool = True,
        inference_mode: bool = False,
    ) -> None:
        """Add (or re-create) plugin ``adapter_name`` on this layer: k experts of rank ``r`` each."""
        if r <= 0 or num_experts <= 0:
            raise ValueError(f"r and num_experts must be positive, got r={r}, num_experts={num_experts}")
        self.r[adapter_name] = r
        self.num_experts[adapter_name] = num_experts
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha / r
        dropout: nn.Module = nn.Dropout(p=lora_dropout) if lora_dropout > 0.0 else nn.Identity()
        self.hlora_dropout[adapter_name] = dropout
        self.hlora_A[adapter_name] = nn.Parameter(torch.empty(num_experts * r, self.in_features))
        self.hlora_B[adapter_name] = nn.Parameter(torch.empty(self.out_features, num_experts * r))
        self.hlora_router[adapter_name] = nn.Parameter(torch.empty(num_experts, self.in_features))
        self.reset_parameters(adapter_name, init_lora_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def reset_parameters(self, adapter_name: str, init_lora_weights: bool = True) -> None:
        """A and router Kaiming-uniform (a = sqrt(5), as peft's LoRA); B zero unless ``init_lora_weights`` is False."""
        if adapter_name not in self.hlora_A:
            return
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.hlora_A[adapter_name], a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.hlora_router[adapter_name], a=math.sqrt(5))
            if init_lora_weights:
                nn.init.zeros_(self.hlora_B[adapter_name])
            else:
                nn.init.kaiming_uniform_(self.hlora_B[adapter_name], a=math.sqrt(5))

    def router_weights(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """The router's per-token expert weights g(x) for plugin ``adapter_name``: (..., k), summing to 1."""
        weight: torch.Tensor = self.hlora_router[adapter_name]
        logits = F.linear(x.to(weight.dtype), weight)
        # at least float32: a bf16/fp16 softmax over k logits loses the small differences between experts
        return torch.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))

    def add_hlora(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """``result`` plus the fused H-LoRA update of ``x`` (..., d_in) -> (..., d_out): no loop over experts.

        Cost, by design: the experts' A and the router are one matmul over x (``cat`` of the two small weights,
        so x is read once and its gradient is accumulated once in backward); B and the residual add are one
        ``addmm``; the gates multiply a (..., k, r) view of the hidden activations, so ``repeat_each`` is never
        materialised, and the scale rides on the k gate values.
        """
        weight_a: torch.Tensor = self.hlora_A[adapter_name]
        weight_b: torch.Tensor = self.hlora_B[adapter_name]
        router: torch.Tensor = self.hlora_router[adapter_name]
        k, r = self.num_experts[adapter_name], self.r[adapter_name]
        x = x.to(weight_a.dtype)
        hidden, logits = F.linear(x, torch.cat((weight_a, router))).split((k * r, k), dim=-1)
        gates = torch.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
        gates = (gates * self.scaling[adapter_name]).to(hidden.dtype)
        hidden = self.hlora_dropout[adapter_name](hidden)
        hidden = (hidden.unflatten(-1, (k, r)) * gates.unsqueeze(-1)).flatten(-2)
        if result.dtype != hidden.dtype:  # e.g. a bf16 base layer with float32 adapter weights
            return result + F.linear(hidden, weight_b).to(result.dtype)
        out = torch.addmm(result.reshape(-1, self.out_features), hidden.reshape(-1, k * r), weight_b.t())
        return out.view(result.shape)


class Linear(nn.Module, HLoraLayer):
    """An ``nn.Linear`` with H-LoRA plugins; the active plugin(s) add their fused delta to the base output."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        super().__init__()
        HLoraLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, **kwargs)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise MergeNotSupportedError(MERGE_MESSAGE)

    def unmerge(self) -> None:
        # Nothing can have been merged (merge always raises), so this is a no-op; peft's unmerge_adapter and
        # disable_adapter call it on every layer, so it must not fail.
        return None

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        raise MergeNotSupportedError(MERGE_MESSAGE)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError("H-LoRA does not support per-example adapter_names; switch plugins with set_adapter")
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        for name in self.active_adapters:
            if name in self.hlora_A:
                result = self.add_hlora(name, x, result)
        return result

    def __repr__(self) -> str:
        return "hlora." + super().__repr__()
