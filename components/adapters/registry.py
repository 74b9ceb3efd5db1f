"""Adapter methods by short name: ``kind: hlora`` in YAML -> a peft config -> a ``PeftModel`` (STYLE.md point 3).

    from components.adapters import apply_adapter, add_adapter
    model = apply_adapter(lm, "hlora", adapter_name="comprehension", rank=64, num_experts=4)
    add_adapter(model, "hlora", adapter_name="generation", rank=256, num_experts=4)
    model.set_adapter("generation")

Every kind takes the same arguments, so a trainer can switch methods by name and a comparison is fair:

- ``rank`` is the *total* rank of an adapted layer. For ``lora`` it is r; for ``hlora`` it is k x r
  (``num_experts`` k, default 4, so ``rank=64`` means 4 experts of rank 16). Both then hold about the same A/B
  parameters; H-LoRA adds a router of k x d_in per layer.
  For ``elalora`` it is the initial rank r0 of every matrix (``r_max`` slots, default 2 x r0): the total
  r0 x matrices stays fixed while a rank search moves ranks (:mod:`components.adapters.elalora`).
- ``alpha=None`` means 2 x the total rank (HealthGPT's setting, METHODS.md §1), per module when a
  ``rank_pattern`` changes the rank, so the scale stays the same in every module: 2 for LoRA, 2k for H-LoRA
  (whose scale is alpha / rank per expert).
- ``flix`` (METHODS.md §3) needs ``features`` (feature name -> its values, the vocabulary) in ``method_kwargs``.
  Its ``rank`` is the total rank *one example* sees, summed over its F features: each feature value gets
  ``rank // F`` (``rank`` must be a multiple of F), so a FLix example has the capacity of a LoRA of rank ``rank``
  while the layer holds V x ``rank // F`` rows for V values in all; ``rank_per_feature=`` in ``method_kwargs``
  sets it directly instead (``rank`` is then ignored). ``alpha=None`` gives a scale of 2 per feature; a given
  ``alpha`` is per feature value (scale alpha / rank per feature, peft's rule per adapter).
- ``target_modules=None`` means every ``nn.Linear`` of the language model except the output head
  (:func:`~components.adapters.peft_ext.lm_linear_targets`).
- ``rank_pattern`` maps a module-name regex or suffix to that module's total rank (a rank search's output).
- ``method_kwargs`` go to the method's config as they are (e.g. ``num_experts``, ``task_type``,
  ``alpha_pattern``, ``modules_to_save``, ``init_lora_weights``).

All adapters of one ``PeftModel`` must be of one kind (peft refuses to mix types in one model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from torch import nn

from components.adapters.elalora import ElaLoraConfig
from components.adapters.flix import FLixConfig
from components.adapters.hlora import HLoraConfig
from components.adapters.peft_ext import lm_linear_targets

#: (model, target_modules, rank, alpha, dropout, rank_pattern, method_kwargs) -> the method's peft config.
ConfigBuilder = Callable[
    [nn.Module, list[str] | str | None, int, float | None, float, dict[str, int], dict[str, Any]], PeftConfig
]


@dataclass(frozen=True)
class AdapterKind:
    """One adapter method the registry knows: its short name, a one-line summary, and its config builder."""

    name: str
    summary: str
    build_config: ConfigBuilder


def _lora_config(
    model: nn.Module,
    target_modules: list[str] | str | None,
    rank: int,
    alpha: float | None,
    dropout: float,
    rank_pattern: dict[str, int],
    method_kwargs: dict[str, Any],
) -> PeftConfig:
    kwargs = dict(method_kwargs)
    alpha_pattern = kwargs.pop("alpha_pattern", None)
    if alpha is None:
        alpha = 2 * rank
        if alpha_pattern is None:
            alpha_pattern = {key: 2 * value for key, value in rank_pattern.items()}
    targets = sorted(lm_linear_targets(model)) if target_modules is None else target_modules
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates int; a float alpha works (scale = alpha / r)
        lora_dropout=dropout,
        target_modules=targets,
        rank_pattern=dict(rank_pattern),
        alpha_pattern=dict(alpha_pattern or {}),
        **kwargs,
    )


def _hlora_config(
    model: nn.Module,
    target_modules: list[str] | str | None,
    rank: int,
    alpha: float | None,
    dropout: float,
    rank_pattern: dict[str, int],
    method_kwargs: dict[str, Any],
) -> PeftConfig:
    kwargs = dict(method_kwargs)
    num_experts = int(kwargs.pop("num_experts", 4))
    if num_experts <= 0 or rank % num_experts:
        raise ValueError(
            f"hlora: rank is the TOTAL rank (num_experts x rank per expert); {rank} is not a positive multiple "
            f"of num_experts={num_experts}"
        )
    # target_modules=None is resolved by HLoraModel itself (the same lm_linear_targets), so that a bare
    # HLoraConfig used with get_peft_model behaves the same.
    return HLoraConfig(
        r=rank // num_experts,
        num_experts=num_experts,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        rank_pattern=dict(rank_pattern),
        **kwargs,
    )


def _elalora_config(
    model: nn.Module,
    target_modules: list[str] | str | None,
    rank: int,
    alpha: float | None,
    dropout: float,
    rank_pattern: dict[str, int],
    method_kwargs: dict[str, Any],
) -> PeftConfig:
    # rank is the initial rank r0 of every matrix (the budget is r0 x matrices); alpha None = 2 x r0, so the fixed
    # scale alpha / r0 is 2 as for LoRA. Schedule keys (total_step, t_init, r_max, b0, k ...) go in method_kwargs.
    return ElaLoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        rank_pattern=dict(rank_pattern),
        **method_kwargs,
    )


def _flix_config(
    model: nn.Module,
    target_modules: list[str] | str | None,
    rank: int,
    alpha: float | None,
    dropout: float,
    rank_pattern: dict[str, int],
    method_kwargs: dict[str, Any],
) -> PeftConfig:
    kwargs = dict(method_kwargs)
    features = kwargs.pop("features", None)
    if not isinstance(features, dict) or not features:
        raise ValueError("flix: pass features={name: [values, ...], ...} (the vocabulary of feature values)")
    per_feature = kwargs.pop("rank_per_feature", None)
    if per_feature is None:
        if rank % len(features):
            raise ValueError(
                f"flix: rank is the TOTAL rank of an example (features x rank per feature); {rank} is not a multiple "
                f"of the {len(features)} features {sorted(features)}: change rank or pass rank_per_feature"
            )
        per_feature = rank // len(features)
    # target_modules=None is resolved by FLixModel itself (the same lm_linear_targets), as for H-LoRA.
    return FLixConfig(
        features=features,
        r=int(per_feature),
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        rank_pattern=dict(rank_pattern),
        **kwargs,
    )


ADAPTER_KINDS: dict[str, AdapterKind] = {
    "lora": AdapterKind("lora", "peft's LoRA (its own LoraConfig)", _lora_config),
    "hlora": AdapterKind("hlora", "HealthGPT's H-LoRA: k fused experts, per-token router (METHODS §1)", _hlora_config),
    "elalora": AdapterKind(
        "elalora", "ElaLoRA: SVD-form LoRA whose ranks move between matrices (METHODS §2)", _elalora_config
    ),
    "flix": AdapterKind(
        "flix", "FLix: a low-rank adapter per feature value, composed per example (METHODS §3)", _flix_config
    ),
}


def adapter_kind(kind: str) -> AdapterKind:
    """The registered method called ``kind``; an unknown name fails with the list of known ones."""
    try:
        return ADAPTER_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown adapter kind {kind!r}; known kinds: {', '.join(sorted(ADAPTER_KINDS))}") from None


def build_adapter_config(
    model: nn.Module,
    kind: str,
    *,
    target_modules: list[str] | str | None = None,
    rank: int = 16,
    alpha: float | None = None,
    dropout: float = 0.05,
    rank_pattern: dict[str, int] | None = None,
    **method_kwargs: Any,
) -> PeftConfig:
    """The peft config that :func:`apply_adapter` would use (``model`` resolves the default targets)."""
    if rank <= 0:
        raise ValueError(f"rank must be positive, got {rank}")
    return adapter_kind(kind).build_config(
        model, target_modules, rank, alpha, dropout, dict(rank_pattern or {}), method_kwargs
    )


def apply_adapter(
    model: nn.Module,
    kind: str,
    *,
    adapter_name: str,
    target_modules: list[str] | str | None = None,
    rank: int = 16,
    alpha: float | None = None,
    dropout: float = 0.05,
    rank_pattern: dict[str, int] | None = None,
    **method_kwargs: Any,
) -> PeftModel:
    """Wrap ``model`` in a ``PeftModel`` with a first adapter ``adapter_name`` of method ``kind``.

    Only that adapter's parameters train afterwards (peft freezes the base model).
    """
    config = build_adapter_config(
        model,
        kind,
        target_modules=target_modules,
        rank=rank,
        alpha=alpha,
        dropout=dropout,
        rank_pattern=rank_pattern,
        **method_kwargs,
    )
    return get_peft_model(model, config, adapter_name=adapter_name)


def add_adapter(
    peft_model: PeftModel,
    kind: str,
    *,
    adapter_name: str,
    target_modules: list[str] | str | None = None,
    rank: int = 16,
    alpha: float | None = None,
    dropout: float = 0.05,
    rank_pattern: dict[str, int] | None = None,
    **method_kwargs: Any,
) -> None:
    """Add another adapter (e.g. the generation plugin) to ``peft_model``; it is inactive until ``set_adapter``."""
    config = build_adapter_config(
        peft_model.get_base_model(),
        kind,
        target_modules=target_modules,
        rank=rank,
        alpha=alpha,
        dropout=dropout,
        rank_pattern=rank_pattern,
        **method_kwargs,
    )
    peft_model.add_adapter(adapter_name, config)
