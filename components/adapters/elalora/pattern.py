"""A finished rank search as a rank pattern, and that pattern in another adapter method's terms (issue 5).

    from components.adapters.elalora import pattern_for_kind, rank_pattern
    pattern = rank_pattern(peft_model)                        # {"model.layers.0.self_attn.q_proj": 11, ...}
    pattern_for_kind(pattern, "hlora", num_experts=4)         # multiples of 4, same total as far as rounding allows
    pattern_for_kind(pattern, "lora")                         # the same numbers

Keys are full module names relative to the model peft wrapped, so they match exactly as ``rank_pattern`` keys of
any peft method (peft matches ``(.*\\.)?key$``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import nn

from components.adapters.elalora.allocator import elalora_layers


def rank_pattern(model: nn.Module, adapter_name: str = "default") -> dict[str, int]:
    """The active rank of every ElaLoRA matrix of ``adapter_name``: {module name: rank}, sorted by name."""
    layers = elalora_layers(model, adapter_name)
    return {name: layers[name].active_rank(adapter_name) for name in sorted(layers)}


def pattern_for_kind(pattern: Mapping[str, int], kind: str, *, num_experts: int = 4) -> dict[str, int]:
    """``pattern`` (total ranks per module) for adapter ``kind`` of the registry.

    - ``lora`` and ``elalora``: unchanged (any positive rank is valid).
    - ``hlora``: every module's total must be a positive multiple of ``num_experts`` k (k experts of equal rank).
      The budget is the pattern's total rounded to the nearest multiple of k (at least k per module); it is handed
      out in units of k by largest remainder: each module first gets ``k · max(1, floor(r / k))``, then the units
      left go to the modules with the largest remainders ``r / k - floor(r / k)`` (ties: larger rank, then name);
      if the one-unit minimum overshoots the budget, units come back from the largest modules. So the total equals
      the searched total up to less than k, and no module drops to zero.
    """
    if not pattern:
        return {}
    bad = {name: rank for name, rank in pattern.items() if int(rank) < 1}
    if bad:
        raise ValueError(f"rank pattern ranks must be positive, got {bad}")
    if kind in ("lora", "elalora"):
        return {name: int(rank) for name, rank in pattern.items()}
    if kind != "hlora":
        raise ValueError(f"no rank-pattern mapping for adapter kind {kind!r}; known: elalora, hlora, lora")
    if num_experts < 1:
        raise ValueError(f"num_experts must be positive, got {num_experts}")
    k = num_experts
    total = sum(int(r) for r in pattern.values())
    units = max(len(pattern), int(math.floor(total / k + 0.5)))
    given = {name: max(1, int(r) // k) for name, r in pattern.items()}
    left = units - sum(given.values())
    by_remainder = sorted(pattern, key=lambda n: (-(pattern[n] / k - pattern[n] // k), -pattern[n], n))
    for name in by_remainder[: max(0, left)]:
        given[name] += 1
    while left < 0:  # the minimum of one unit per module overshot: take back from the largest
        name = max(given, key=lambda n: (given[n], n))
        if given[name] == 1:
            break
        given[name] -= 1
        left += 1
    return {name: k * given[name] for name in sorted(given)}
