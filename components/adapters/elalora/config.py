"""Configuration of ElaLoRA, elastic-rank LoRA (METHODS.md §2), as a peft ``PeftConfig``.

ElaLoRA keeps AdaLoRA's SVD form ``delta W = B · diag(E · mask) · A · alpha / r`` per adapted matrix, with
``r_max`` pre-allocated rank *slots* of which ``r`` start active, and moves ranks between matrices while training
(:mod:`components.adapters.elalora.allocator`): the total active rank stays ``r x matrices``.

    from components.adapters.elalora import ElaLoraConfig
    config = ElaLoraConfig(r=8, r_max=16, total_step=300, t_init=30, t_final=30, delta_t=10, b0=4, k=2)

Choices where METHODS.md §2 / the paper leave things open, written down here:

- ``r`` is the *initial* active rank r0 of every matrix; the scale ``alpha / r0`` is fixed for the whole run and
  for every matrix, whatever rank a matrix ends with (the paper: "the scale does not change when ranks move").
- ``lora_alpha=None`` means 2 x r0 (the registry's convention, HealthGPT's), i.e. a scale of 2 (the paper's GLUE
  runs used alpha 16 with r0 = 10).
- ``rank_pattern`` maps a module (regex or suffix, peft semantics) to its number of *active* ranks at creation;
  the search writes its result here, so a saved adapter's ``adapter_config.json`` shows the final pattern. The
  saved ``elalora_mask`` buffers (safetensors) say exactly which slots are active.
- ``r_max`` defaults to 2 x r: room for a matrix to double its rank.
- The schedule (``total_step``, ``t_init``, ``t_final``, ``delta_t``, ``b0``, ``k``, ``grace``, betas) and the
  regulariser weight ``orth_reg_weight`` (γ) are read by the allocator, not by the layers; they are stored here so
  one config describes a search completely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peft.config import PeftConfig

from components.adapters.peft_ext import ensure_peft_type


@dataclass
class ElaLoraConfig(PeftConfig):
    """One ElaLoRA adapter: SVD-form LoRA layers with ``r_max`` slots, ``r`` of them active at the start."""

    r: int = field(
        default=8, metadata={"help": "Initial active rank r0 of every matrix (the budget is r0 x matrices)."}
    )
    r_max: int | None = field(
        default=None, metadata={"help": "Rank slots pre-allocated per matrix (the most it can grow to); None: 2 x r."}
    )
    lora_alpha: float | None = field(
        default=None, metadata={"help": "Alpha; the delta is scaled by alpha / r0 in every matrix. None: 2 x r0."}
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout probability on the input x before A."})
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
        metadata={"help": "Module-name regex or suffix -> active rank at creation (a finished search's pattern)."},
    )
    init_lora_weights: bool = field(
        default=True,
        metadata={
            "help": "True: A, B ~ N(0, 0.02^2), E = 0 (the adapter starts as the identity). False: E ~ N(0, 1) too "
            "(tests only: a non-zero delta from the start)."
        },
    )
    total_step: int = field(default=0, metadata={"help": "Optimizer steps of the run (the schedule needs it)."})
    t_init: int = field(default=0, metadata={"help": "Warm-up steps without reallocation."})
    t_final: int = field(default=0, metadata={"help": "Last steps with ranks frozen."})
    delta_t: int = field(default=10, metadata={"help": "Steps between reallocation rounds (Δ)."})
    b0: int = field(default=4, metadata={"help": "Ranks moved in the first round; decays as round(b0 (1 - p^3))."})
    k: int = field(default=2, metadata={"help": "Lowest ranks each matrix offers to the pool, at most r - 1."})
    grace: int = field(default=0, metadata={"help": "Steps a newly grown rank cannot be pruned (0: one Δ)."})
    beta1: float = field(default=0.85, metadata={"help": "EMA factor of the sensitivity (b1)."})
    beta2: float = field(default=0.85, metadata={"help": "EMA factor of the uncertainty (b2)."})
    orth_reg_weight: float = field(default=0.1, metadata={"help": "γ of the orthogonality regulariser."})
    layers_to_transform: list[int] | int | None = field(
        default=None, metadata={"help": "Only adapt the layers with these indices (peft semantics)."}
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the layer list (e.g. 'layers') used with layers_to_transform."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules other than the ElaLoRA layers to train fully and save."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = ensure_peft_type("elalora")
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)  # type: ignore[assignment]  # peft stores sets
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)  # type: ignore[assignment]
        if self.r <= 0:
            raise ValueError(f"elalora: r (initial rank) must be positive, got {self.r}")
        if self.r_max is None:
            self.r_max = 2 * self.r
        if self.r_max < self.r:
            raise ValueError(f"elalora: r_max ({self.r_max}) must be at least r ({self.r})")
        too_big = {key: value for key, value in self.rank_pattern.items() if not 1 <= int(value) <= self.r_max}
        if too_big:
            raise ValueError(f"elalora: rank_pattern ranks must be in [1, r_max={self.r_max}], got {too_big}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"elalora: lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if min(self.total_step, self.t_init, self.t_final, self.b0, self.grace) < 0 or self.delta_t < 1 or self.k < 1:
            raise ValueError(
                "elalora: total_step, t_init, t_final, b0, grace >= 0 and delta_t, k >= 1 expected; got "
                f"total_step={self.total_step} t_init={self.t_init} t_final={self.t_final} delta_t={self.delta_t} "
                f"b0={self.b0} k={self.k} grace={self.grace}"
            )
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ValueError(f"elalora: beta1 and beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError("layers_to_transform cannot be used when target_modules is a regex string")

    def to_dict(self) -> dict[str, Any]:
        """As peft's, with sets as sorted lists, so adapter_config.json is byte-identical from run to run (DVC)."""
        return {key: sorted(value) if isinstance(value, set) else value for key, value in super().to_dict().items()}

    @property
    def scale_alpha(self) -> float:
        """Alpha of every matrix (the scale is alpha / r0 everywhere)."""
        return float(self.lora_alpha) if self.lora_alpha is not None else 2.0 * self.r
