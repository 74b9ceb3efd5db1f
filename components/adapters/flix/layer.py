"""The FLix layer: every feature value's LoRA fused into one wide A and one wide B, masked per example (METHODS.md §3).

For an example with features ``features(x)`` and a token x (width d_in), V feature values of rank r each::

    h     = A dropout(x)                                   # (V*r,)  A is (V*r, d_in): the A_f stacked in rows
    w     = [scale_f if the example has value v of f (and kept f) else 0 for v in values]     # (V,) per example
    delta = B (h * repeat_each(w, r))                      # B is (d_out, V*r): the B_f side by side
    y     = base(x) + delta  = base(x) + sum_{f in features(x)} scale_f B_f A_f x

Two matrix products per layer whatever the number of features (the cost grows with the summed rank V x r, not
with a loop over features); ``repeat_each`` is never materialised: ``h`` is viewed as (..., V, r) and multiplied by
``w[:, None..., :, None]``. The per-example ``w`` is built once per forward (and adapter) from the call's features
(:mod:`components.adapters.flix.features`) and shared by every layer, so one forward draws one feature-dropout mask.

Decisions:

- **Init** as peft's LoRA: A Kaiming-uniform (a = sqrt(5)), B zero, so a new adapter leaves the outputs unchanged.
- **No merge**: the delta depends on each example's features, so no single matrix can be folded into W;
  :meth:`Linear.merge` raises :class:`MergeNotSupportedError`.
- Several active adapters (``base_model.set_adapter([...])``) add their deltas; peft's per-example
  ``adapter_names`` is refused (FLix's own per-example mechanism is the features).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from components.adapters.flix.features import FeatureSpec, current_features


class MergeNotSupportedError(RuntimeError):
    """FLix cannot be merged into the base weights: its delta depends on each example's features."""


MERGE_MESSAGE = (
    "FLix cannot be merged into the base weights: each example adds the adapters of its own feature values "
    "(METHODS.md §3), so W + delta is not one fixed matrix. Keep the adapter unmerged or use unload() to get the "
    "base model back without it."
)


class FLixLayer(BaseTunerLayer):
    """State of the FLix adapters on one wrapped ``nn.Linear`` (one entry per adapter name)."""

    adapter_layer_names: tuple[str, ...] = ("flix_A", "flix_B")
    other_param_names: tuple[str, ...] = (
        "r",
        "lora_alpha",
        "scaling",
        "flix_spec",
        "flix_scales",
        "feature_dropout",
        "flix_dropout",
    )

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}  # the default scale alpha / r (features without feature_alpha)
        self.flix_spec: dict[str, FeatureSpec] = {}
        self.flix_scales: dict[str, tuple[float, ...]] = {}  # scale of every feature, in order
        self.feature_dropout: dict[str, float] = {}
        self.flix_dropout = nn.ModuleDict({})
        # Raw parameters (as H-LoRA): A (V*r, d_in), B (d_out, V*r); saved as e.g. ``q_proj.flix_A``.
        self.flix_A = nn.ParameterDict({})
        self.flix_B = nn.ParameterDict({})
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"FLix adapts nn.Linear layers only, got {type(base).__name__}")
        self.in_features = base.in_features
        self.out_features = base.out_features

    def update_layer(
        self,
        adapter_name: str,
        *,
        spec: FeatureSpec,
        r: int,
        lora_alpha: float,
        feature_scales: tuple[float, ...],
        feature_dropout: float,
        lora_dropout: float,
        init_lora_weights: bool = True,
        inference_mode: bool = False,
    ) -> None:
        """Add (or re-create) adapter ``adapter_name`` on this layer: one rank-``r`` LoRA per value of ``spec``."""
        if r <= 0:
            raise ValueError(f"r must be positive, got {r}")
        if len(feature_scales) != len(spec.names):
            raise ValueError(f"{len(feature_scales)} feature scales for {len(spec.names)} features")
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha / r
        self.flix_spec[adapter_name] = spec
        self.flix_scales[adapter_name] = tuple(float(s) for s in feature_scales)
        self.feature_dropout[adapter_name] = float(feature_dropout)
        self.flix_dropout[adapter_name] = nn.Dropout(p=lora_dropout) if lora_dropout > 0.0 else nn.Identity()
        rows = spec.num_values * r
        self.flix_A[adapter_name] = nn.Parameter(torch.empty(rows, self.in_features))
        self.flix_B[adapter_name] = nn.Parameter(torch.empty(self.out_features, rows))
        self.reset_parameters(adapter_name, init_lora_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def reset_parameters(self, adapter_name: str, init_lora_weights: bool = True) -> None:
        """A Kaiming-uniform (a = sqrt(5), as peft's LoRA); B zero unless ``init_lora_weights`` is False."""
        if adapter_name not in self.flix_A:
            return
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.flix_A[adapter_name], a=math.sqrt(5))
            if init_lora_weights:
                nn.init.zeros_(self.flix_B[adapter_name])
            else:
                nn.init.kaiming_uniform_(self.flix_B[adapter_name], a=math.sqrt(5))

    def value_slice(self, adapter_name: str, feature: str, value: str) -> slice:
        """The rank rows of A (columns of B) that belong to ``value`` of ``feature`` (for tests and inspection)."""
        spec, r = self.flix_spec[adapter_name], self.r[adapter_name]
        f = spec.names.index(feature)
        j = spec.values[f].index(value)
        start = (spec.offsets[f] + j) * r
        return slice(start, start + r)

    def add_flix(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """``result`` plus the FLix update of ``x`` (B, ..., d_in): one A matmul, a per-example mask, one B matmul."""
        weight_a: torch.Tensor = self.flix_A[adapter_name]
        weight_b: torch.Tensor = self.flix_B[adapter_name]
        spec, r = self.flix_spec[adapter_name], self.r[adapter_name]
        if x.dim() < 2:
            raise ValueError(f"FLix needs a batch dimension first (B, ..., d_in), got shape {tuple(x.shape)}")
        x = x.to(weight_a.dtype)
        weights = current_features(adapter_name).weights(
            adapter_name,
            spec,
            self.flix_scales[adapter_name],
            training=bool(getattr(self, "training", False)),  # FLixLayer is mixed into an nn.Module
            dropout=self.feature_dropout[adapter_name],
            batch=x.shape[0],
            device=x.device,
            dtype=x.dtype,
        )
        hidden = F.linear(self.flix_dropout[adapter_name](x), weight_a)
        view = (weights.shape[0],) + (1,) * (hidden.dim() - 2) + (spec.num_values, 1)
        hidden = (hidden.unflatten(-1, (spec.num_values, r)) * weights.view(view)).flatten(-2)
        if result.dtype != hidden.dtype:  # e.g. a bf16 base layer with float32 adapter weights
            return result + F.linear(hidden, weight_b).to(result.dtype)
        out = torch.addmm(result.reshape(-1, self.out_features), hidden.reshape(-1, hidden.shape[-1]), weight_b.t())
        return out.view(result.shape)


class Linear(nn.Module, FLixLayer):
    """An ``nn.Linear`` with FLix adapters; the active one(s) add each example's feature-composed delta."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        super().__init__()
        FLixLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, **kwargs)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise MergeNotSupportedError(MERGE_MESSAGE)

    def unmerge(self) -> None:
        # Nothing can have been merged (merge always raises); peft's disable_adapter calls this on every layer.
        return None

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        raise MergeNotSupportedError(MERGE_MESSAGE)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError("FLix does not take per-example adapter_names; give per-example features instead")
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        for name in self.active_adapters:
            if name in self.flix_A:
                result = self.add_flix(name, x, result)
        return result

    def __repr__(self) -> str:
        return "flix." + super().__repr__()
