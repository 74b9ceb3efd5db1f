"""Configuration of H-LoRA, HealthGPT's heterogeneous LoRA plugin (METHODS.md §1), as a peft ``PeftConfig``.

One config describes one *plugin* (e.g. ``comprehension`` or ``generation``): k experts of rank ``r`` each,
fused into one wide A/B pair per adapted linear layer, mixed per token by a softmax router. Several plugins live
in one ``PeftModel`` as separately named adapters.

Choices where METHODS.md §1 / the release leave things open, written down here:

- ``r`` is the rank *per expert* (the release's ``hlora_r`` is the total k·r; M3 ships total 64 = 4 x 16 for
  comprehension). ``rank_pattern`` values are *total* ranks per module, because that is what a rank search
  (issue 5) produces; they are divided by k with ``r_per_expert = max(1, total // k)``: k stays the same in
  every layer (one router shape, the paper's k) and a total that is not a multiple of k is rounded down, never
  below one rank per expert (a total below k therefore becomes k ranks).
- ``lora_alpha=None`` means the release's rule, alpha = 2 x total rank, applied per module after
  ``rank_pattern``; with scale = alpha / r_per_expert that makes the scale 2k in every module, independent of
  the rank a module gets. An explicit ``lora_alpha`` (or an ``alpha_pattern`` entry) is used as given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peft.config import PeftConfig

from components.adapters.peft_ext import ensure_peft_type


@dataclass
class HLoraConfig(PeftConfig):
    """One H-LoRA plugin: k fused LoRA experts per linear layer with a dense per-token softmax router."""

    r: int = field(default=16, metadata={"help": "Rank of each expert (the total rank of a layer is r x num_experts)."})
    num_experts: int = field(
        default=4, metadata={"help": "Number of LoRA experts k per adapted layer (4 in the HealthGPT release)."}
    )
    lora_alpha: float | None = field(
        default=None,
        metadata={
            "help": "Alpha; the delta is scaled by alpha / r (per expert). None: 2 x the layer's total rank "
            "(the release's setting), i.e. a scale of 2 x num_experts in every layer."
        },
    )
    lora_dropout: float = field(
        default=0.05,
        metadata={"help": "Dropout probability on the experts' hidden activations A(x), i.e. before B (release)."},
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Module names (exact or suffix) or one regex of the modules to adapt. None: every nn.Linear of "
            "the language model (get_decoder()) except the output head."
        },
    )
    exclude_modules: list[str] | str | None = field(
        default_factory=lambda: ["lm_head"],
        metadata={"help": "Module names (exact or suffix) or one regex never to adapt; the output head by default."},
    )
    rank_pattern: dict[str, int] = field(
        default_factory=dict,
        metadata={
            "help": "Module-name regex or suffix -> TOTAL rank of that module (as a rank search outputs it); "
            "divided by num_experts, rounded down, at least 1 per expert."
        },
    )
    alpha_pattern: dict[str, float] = field(
        default_factory=dict,
        metadata={"help": "Module-name regex or suffix -> alpha for that module, overriding lora_alpha."},
    )
    init_lora_weights: bool = field(
        default=True,
        metadata={
            "help": "True: A and the router Kaiming-uniform, B zero (the adapter starts as the identity). False: B "
            "Kaiming-uniform too (tests only: a non-zero delta from the start)."
        },
    )
    layers_to_transform: list[int] | int | None = field(
        default=None, metadata={"help": "Only adapt the layers with these indices (peft semantics)."}
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the layer list (e.g. 'layers') used with layers_to_transform."}
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Modules other than the H-LoRA layers to train fully and save with the plugin."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = ensure_peft_type("hlora")
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)  # type: ignore[assignment]  # peft stores sets
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)  # type: ignore[assignment]
        if self.r <= 0:
            raise ValueError(f"r (rank per expert) must be positive, got {self.r}")
        if self.num_experts <= 0:
            raise ValueError(f"num_experts must be positive, got {self.num_experts}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        bad = {key: value for key, value in self.rank_pattern.items() if int(value) <= 0}
        if bad:
            raise ValueError(f"rank_pattern ranks must be positive, got {bad}")
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError("layers_to_transform cannot be used when target_modules is a regex string")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("layers_pattern needs layers_to_transform")

    def to_dict(self) -> dict[str, Any]:
        """As peft's, with sets as sorted lists, so adapter_config.json is byte-identical from run to run (DVC)."""
        return {key: sorted(value) if isinstance(value, set) else value for key, value in super().to_dict().items()}

    def expert_rank(self, total_rank: int) -> int:
        """Rank per expert for a module whose rank pattern asks for ``total_rank`` (see the module docstring)."""
        return max(1, int(total_rank) // self.num_experts)

    def module_alpha(self, r_per_expert: int) -> float:
        """Alpha for a module of ``r_per_expert`` ranks per expert when no alpha is configured: 2 x total rank."""
        if self.lora_alpha is not None:
            return float(self.lora_alpha)
        return 2.0 * r_per_expert * self.num_experts
