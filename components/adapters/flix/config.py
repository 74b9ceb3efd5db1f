"""Configuration of FLix, featurized low-rank mixtures (METHODS.md §3), as a peft ``PeftConfig``.

One config describes one FLix adapter: a vocabulary of features and their values (``{"task": ["comprehension",
"generation"], "modality": ["CT", "MRI"]}``), each value owning a LoRA of rank ``r``. The vocabulary is part of the
config, so it is saved in ``adapter_config.json`` and ``PeftModel.from_pretrained`` rebuilds the exact layout.

Choices where METHODS.md §3 (and the paper) leave things open, written down here:

- **Layout**: features in name order (peft saves ``adapter_config.json`` with sorted keys, so this is the order
  a loaded config has too), each feature's values in the order given.
- **One rank for every value** (``r``); a ``rank_pattern`` entry gives a module the per-example TOTAL rank (summed
  over the features, F x r, as a rank search outputs it), divided by the number of features F, rounded down, at
  least 1 (the H-LoRA rule with F for k).
- **Scale per feature**: value ``v`` of feature ``f`` is scaled by ``alpha_f / r`` with ``alpha_f`` =
  ``feature_alpha[f]`` if given, else the module's alpha (``alpha_pattern``, else ``lora_alpha``, else 2 x r: a scale
  of 2 per feature, medtune's LoRA default).
- **Dropout** ``lora_dropout`` acts on x before A, as in peft's LoRA; ``feature_dropout`` is FLix's own (see
  :mod:`components.adapters.flix.features`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peft.config import PeftConfig

from components.adapters.flix.features import FeatureSpec
from components.adapters.peft_ext import ensure_peft_type


@dataclass
class FLixConfig(PeftConfig):
    """One FLix adapter: a low-rank adapter per feature value, composed per example by its features."""

    features: dict[str, list[str]] = field(
        default_factory=dict,
        metadata={
            "help": "Feature name -> its values, in order (the vocabulary), e.g. {'task': ['comprehension', "
            "'generation'], 'modality': ['CT', 'MRI']}. Each value owns an adapter of rank r."
        },
    )
    r: int = field(default=4, metadata={"help": "Rank of each feature value's adapter (rank per feature)."})
    lora_alpha: float | None = field(
        default=None,
        metadata={"help": "Alpha; a value's update is scaled by alpha / r. None: 2 x r (a scale of 2 per feature)."},
    )
    feature_alpha: dict[str, float] = field(
        default_factory=dict, metadata={"help": "Feature name -> alpha of that feature's values (overrides alpha)."}
    )
    feature_dropout: float = field(
        default=0.1,
        metadata={
            "help": "Probability, per example and feature, of dropping that feature's whole contribution in "
            "training (kept features are not rescaled)."
        },
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on x before A (peft LoRA's convention)."})
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
            "help": "Module-name regex or suffix -> TOTAL rank per example (features x rank per feature); divided "
            "by the number of features, rounded down, at least 1."
        },
    )
    alpha_pattern: dict[str, float] = field(
        default_factory=dict,
        metadata={"help": "Module-name regex or suffix -> alpha for that module, overriding lora_alpha."},
    )
    init_lora_weights: bool = field(
        default=True,
        metadata={
            "help": "True: A Kaiming-uniform, B zero (the adapter starts as the identity). False: B Kaiming-uniform "
            "too (tests only: a non-zero delta from the start)."
        },
    )
    layers_to_transform: list[int] | int | None = field(
        default=None, metadata={"help": "Only adapt the layers with these indices (peft semantics)."}
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the layer list (e.g. 'layers') used with layers_to_transform."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules other than the FLix layers to train fully and save with it."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = ensure_peft_type("flix")
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)  # type: ignore[assignment]  # peft stores sets
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)  # type: ignore[assignment]
        if not isinstance(self.features, dict) or not self.features:
            raise ValueError(
                "features must map each feature name to its list of values, e.g. {'modality': ['CT', 'MRI']}; "
                f"got {self.features!r}"
            )
        # Sorted by name: peft writes adapter_config.json with sorted keys, so a saved-then-loaded config must find
        # the features (and thus the rows of A) in the same order as the config that trained them.
        self.features = {str(k): [str(v) for v in self.features[k]] for k in sorted(self.features, key=str)}
        self.spec()  # validates: no empty value list, no value twice
        if self.r <= 0:
            raise ValueError(f"r (rank per feature) must be positive, got {self.r}")
        if not 0.0 <= self.feature_dropout < 1.0:
            raise ValueError(f"feature_dropout must be in [0, 1), got {self.feature_dropout}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        unknown = sorted(set(self.feature_alpha) - set(self.features))
        if unknown:
            raise ValueError(f"feature_alpha names features {unknown} that are not in features {list(self.features)}")
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

    def spec(self) -> FeatureSpec:
        """The vocabulary as the layers use it (feature order and value order kept)."""
        return FeatureSpec.from_mapping(self.features)

    def feature_rank(self, total_rank: int) -> int:
        """Rank per feature value for a module whose rank pattern asks for ``total_rank`` per example."""
        return max(1, int(total_rank) // len(self.features))

    def feature_scales(self, r: int, module_alpha: float | None) -> tuple[float, ...]:
        """alpha_f / r for every feature, in order (see the module docstring for alpha_f)."""
        default = float(module_alpha) if module_alpha is not None else 2.0 * r
        return tuple(float(self.feature_alpha.get(name, default)) / r for name in self.features)
