"""A base folder that brings its own plugins (``plugins/<task>/``, written by ``medtune import healthgpt``):
:func:`components.training.plugins.prepare_model` starts each plugin from those weights, and the adapter settings
come from them (issue 16).

    plugins = base_plugins(base_dir)                      # {task: folder}; {} for an ordinary base
    adapter = adapter_for_base_plugins(adapter, plugins)  # rank, experts, alpha, targets as imported
    ...attach the plugins...
    load_base_plugins(model.lm, plugins)                  # every imported weight, exactly
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.data.records import TASKS
from components.models.healthgpt import PLUGINS

if TYPE_CHECKING:
    from components.training.plugins import AdapterArgs


@dataclass(frozen=True)
class PluginSettings:
    """What an imported plugin's adapter_config.json fixes."""

    peft_type: str
    total_rank: int
    experts: int
    alpha: float | None
    targets: tuple[str, ...]
    rank_pattern: dict[str, int]


def base_plugins(base_dir: str | Path) -> dict[str, Path]:
    """``{task: folder}`` for each ``base_dir/plugins/<task>/adapter_config.json`` (a HealthGPT import writes them)."""
    root = Path(base_dir) / PLUGINS
    return {t: root / t for t in TASKS if (root / t / "adapter_config.json").is_file()}


def plugin_settings(folder: str | Path) -> PluginSettings:
    meta = json.loads((Path(folder) / "adapter_config.json").read_text())
    r, k = int(meta.get("r", 0)), int(meta.get("num_experts", 1))
    targets = meta.get("target_modules") or []
    return PluginSettings(
        peft_type=str(meta.get("peft_type")), total_rank=r * k, experts=k,
        alpha=None if meta.get("lora_alpha") is None else float(meta["lora_alpha"]),
        targets=tuple(sorted([targets] if isinstance(targets, str) else targets)),
        rank_pattern={str(key): int(v) for key, v in (meta.get("rank_pattern") or {}).items()},
    )  # fmt: skip


def adapter_for_base_plugins(adapter: AdapterArgs, plugins: dict[str, Path]) -> AdapterArgs:
    """``adapter`` with the imported plugins' rank, experts, alpha and targets; a contradiction is a ValueError
    naming the config key (``adapter.rank`` ...)."""
    settings = {task: plugin_settings(folder) for task, folder in plugins.items()}

    def clash(key: str, mine: object, task: str, theirs: object) -> ValueError:
        return ValueError(
            f"{key}={mine} contradicts the imported {task} plugin {plugins[task]} ({theirs}): set {key} to match it, "
            f"or remove {plugins[task]} to train a fresh plugin"
        )

    bad = {t: s.peft_type for t, s in settings.items() if s.peft_type != "HLORA"}
    if bad:
        task = next(iter(bad))
        raise ValueError(f"{plugins[task]} holds a {bad[task]} plugin; medtune starts from imported H-LoRA plugins")
    changes: dict[str, Any] = {}
    for task, s in settings.items():
        if adapter.kind != "hlora":
            raise clash("adapter.kind", adapter.kind, task, "an H-LoRA plugin")
        if adapter.num_experts != s.experts:
            raise clash("adapter.experts", adapter.num_experts, task, f"{s.experts} experts")
        mine = adapter.rank if task == "comprehension" else (adapter.generation_rank or adapter.rank)
        key = "adapter.rank" if task == "comprehension" else "adapter.generation_rank"
        if mine != s.total_rank:
            raise clash(
                key, mine, task, f"total rank {s.total_rank} = {s.experts} experts x {s.total_rank // s.experts}"
            )
        if s.rank_pattern:
            raise ValueError(f"{plugins[task]} has a rank_pattern: only uniform plugins can be a starting point")
        if adapter.rank_pattern:
            raise clash("adapter.rank_pattern", adapter.rank_pattern, task, "uniform ranks; disable rank_search")
        rule = 2.0 * s.total_rank  # alpha None = 2 x total rank per module (HLoraConfig.module_alpha)
        if adapter.alpha is not None and s.alpha is not None and adapter.alpha != s.alpha:
            raise clash("adapter.alpha", adapter.alpha, task, f"alpha {s.alpha}")
        if adapter.alpha is None and s.alpha is not None and s.alpha != rule:
            if changes.get("alpha", s.alpha) != s.alpha:
                raise clash("adapter.alpha", None, task, f"alpha {s.alpha}, another plugin {changes['alpha']}")
            changes["alpha"] = s.alpha
        if s.targets:
            if adapter.target_modules is not None and not _same_targets(adapter.target_modules, s.targets):
                raise clash("adapter.target_modules", adapter.target_modules, task, f"{len(s.targets)} target modules")
            if changes.get("target_modules", list(s.targets)) != list(s.targets):
                raise ValueError(f"the imported plugins in {Path(plugins[task]).parent} adapt different modules")
            changes["target_modules"] = list(s.targets)
    return replace(adapter, **changes)


def _same_targets(mine: list[str], theirs: tuple[str, ...]) -> bool:
    """Whether a config's target list (full names or suffixes, peft's rule) names exactly the plugin's modules."""

    def hit(name: str, entry: str) -> bool:
        return name == entry or name.endswith("." + entry)

    return all(any(hit(t, e) for e in mine) for t in theirs) and all(any(hit(t, e) for t in theirs) for e in mine)


def load_base_plugins(peft_lm: Any, plugins: dict[str, Path]) -> None:
    """Copy each imported plugin's weights into the adapter of the same name of ``peft_lm`` (every weight, exactly)."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    for task, folder in plugins.items():
        tensors = load_file(str(folder / "adapter_model.safetensors"))
        try:
            result: Any = set_peft_model_state_dict(peft_lm, tensors, adapter_name=task)
        except RuntimeError as e:
            detail = " ".join(line.strip() for line in str(e).splitlines()[:2])
            raise ValueError(f"{folder}: its weights do not fit the model ({detail[:300]})") from None
        missing = [k for k in result.missing_keys if ".hlora_" in k and k.endswith(f".{task}")]
        if result.unexpected_keys or missing:
            first = (list(result.unexpected_keys) or missing)[0]
            raise ValueError(f"{folder}: plugin weights do not match the model (first: {first})")
