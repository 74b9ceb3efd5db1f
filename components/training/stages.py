"""Which parameters train in each stage of HealthGPT's three-stage learning (METHODS.md §1), as a table in code.

    from components.training.stages import STAGES, freeze_for, trainable_parameters
    names = trainable_parameters(model, 3, "generation")   # exact parameter names that train
    freeze_for(model, 3, "generation")                      # requires_grad = True on those, False elsewhere
    freeze_for(model, 3)                                    # the union over the stage's tasks (what DDP wraps)

The table (rows: stages; per task the parameter *groups* that train; everything else is frozen):

==========  ==============================  =====================================  ==================================
stage       name                            comprehension task trains              generation task trains
==========  ==============================  =====================================  ==================================
base        base-model bootstrap            vision, projector, LM (all of it)      (no generation data)
1           multi-modal alignment           its projector                          its projector + its H-LoRA plugin
2           heterogeneous plugin adaptation word embeddings + output head          word embeddings + output head
3           visual instruction fine-tuning  its H-LoRA plugin + its projector      its H-LoRA plugin + its projector
mixed       one mixed stage (ablation)      plugin + projector + embeddings + head plugin + projector + emb. + head
==========  ==============================  =====================================  ==================================

Data per stage and task (:attr:`StageSpec.data`): stage 1 aligns comprehension on the comprehension records and
generation on *reconstruction* (an image -> its own VQ codes; METHODS.md: "generation trains its projector and its
H-LoRA (on reconstruction)"); stage 2 uses a mixed sample of both tasks (comprehension records; generation records
plus reconstruction); stage 3 uses each task's own records (conversion and super-resolution for generation).

What the paper leaves open and what is chosen here:

- **Stage 2 rows.** METHODS.md says "only the word embeddings and output head (the new token rows) train". Freezing
  single rows is not a ``requires_grad`` property; the whole embedding and head matrices train (all rows), which is
  what "only the word embeddings and output head" says literally; in practice the new image-code rows move most,
  since only they start far from trained values (at the mean).
- **The active plugin in stages 1 and 2.** The task's plugin is switched in (``set_adapter(task)``) in every stage,
  frozen where the table says so: stage 2 then adapts the shared vocabulary *through* each task's plugin, which is
  the point of that stage ("so the plugins share one vocabulary").
- **Stage 1 and the new token rows.** The code tokens' input and output rows all start at the same mean row, so in
  stage 1 (rows frozen) every code token gets the same logit whatever the plugin does: generation alignment learns
  the code block's structure (``<img_start>``, codes, ``<img_end>``) and the image path through its projector and
  plugin, but not which code; code identity is learned from stage 2 on, when the rows train. This is what the table
  implies, and the reason stage 2 exists.
- **The "base" row** is medtune's own (HealthGPT starts from a pretrained Phi-3): the tiny model is first trained in
  full on the comprehension records so that the adapters adapt a model that already sees.
- **The "mixed" row** is the ablation METHODS.md reports (three stages 68.5 vs mixed 48.9 on OmniMedVQA): everything
  the three stages train, trained at once on the mixture of both tasks.

The vision encoder and the LM's base weights are frozen in stages 1-3 and mixed, for both adapter kinds ("lora",
"hlora"): plugins are found through peft's tuner layers (``adapter_layer_names``), so any peft method works.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from components.data.records import TASKS

StageKey = int | str
GROUPS = (
    "vision",
    "lm",
    "embeddings",
    "head",
    "projector.comprehension",
    "projector.generation",
    "plugin.comprehension",
    "plugin.generation",
)
POOLS = ("comprehension", "generation", "reconstruction")


@dataclass(frozen=True)
class StageSpec:
    """One row of the table: the groups that train per task, and the record pools each task draws from."""

    key: StageKey
    name: str
    trains: Mapping[str, tuple[str, ...]]
    data: Mapping[str, tuple[str, ...]]

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for t in TASKS if t in self.trains)


def _own(task: str) -> tuple[str, str]:
    return (f"projector.{task}", f"plugin.{task}")


STAGES: dict[StageKey, StageSpec] = {
    "base": StageSpec(
        "base",
        "base-model bootstrap",
        trains={"comprehension": ("vision", "projector.comprehension", "lm")},
        data={"comprehension": ("comprehension",)},
    ),
    1: StageSpec(
        1,
        "multi-modal alignment",
        trains={"comprehension": ("projector.comprehension",), "generation": _own("generation")},
        data={"comprehension": ("comprehension",), "generation": ("reconstruction",)},
    ),
    2: StageSpec(
        2,
        "heterogeneous plugin adaptation",
        trains={"comprehension": ("embeddings", "head"), "generation": ("embeddings", "head")},
        data={"comprehension": ("comprehension",), "generation": ("generation", "reconstruction")},
    ),
    3: StageSpec(
        3,
        "visual instruction fine-tuning",
        trains={"comprehension": _own("comprehension"), "generation": _own("generation")},
        data={"comprehension": ("comprehension",), "generation": ("generation",)},
    ),
    "mixed": StageSpec(
        "mixed",
        "one mixed stage (ablation)",
        trains={t: (*_own(t), "embeddings", "head") for t in TASKS},
        data={"comprehension": ("comprehension",), "generation": ("generation", "reconstruction")},
    ),
}
THREE_STAGES: tuple[StageKey, ...] = (1, 2, 3)


def stage_spec(stage: StageKey) -> StageSpec:
    """The table row of ``stage`` (1, 2, 3, "base" or "mixed"; "1".."3" as strings too)."""
    key: StageKey = int(stage) if isinstance(stage, str) and stage.isdigit() else stage
    if key not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(str(k) for k in STAGES)}")
    return STAGES[key]


def parameter_groups(model: nn.Module) -> dict[str, list[str]]:
    """Parameter names of a MedVLM per group of :data:`GROUPS` (a name may sit in "lm" and in "embeddings").

    "lm" is every parameter of the language model that is not a plugin's; "plugin.<task>" is whatever peft's tuner
    layers hold under the adapter named ``<task>`` (LoRA's A/B, H-LoRA's A/B/router ...)."""
    names = {id(p): n for n, p in model.named_parameters()}  # a tied parameter keeps its first name
    lm: Any = model.lm  # a PreTrainedModel or a PeftModel around it (which forwards get_*_embeddings)
    vision: Any = model.vision
    projectors: Any = model.projectors
    groups: dict[str, list[str]] = {g: [] for g in GROUPS}
    groups["vision"] = [names[id(p)] for p in vision.parameters()]
    for task in TASKS:
        groups[f"projector.{task}"] = [names[id(p)] for p in projectors[task].parameters()]
    plugin_ids: set[int] = set()
    for module in lm.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        for attr in module.adapter_layer_names:
            for adapter, holder in getattr(module, attr).items():
                params = [holder] if isinstance(holder, nn.Parameter) else list(holder.parameters())
                if adapter in TASKS:
                    groups[f"plugin.{adapter}"] += [names[id(p)] for p in params]
                plugin_ids.update(id(p) for p in params)
    groups["lm"] = [names[id(p)] for p in lm.parameters() if id(p) not in plugin_ids]
    groups["embeddings"] = [names[id(lm.get_input_embeddings().weight)]]
    head = lm.get_output_embeddings()
    groups["head"] = [names[id(p)] for p in head.parameters()] if head is not None else []
    return groups


def trainable_parameters(model: nn.Module, stage: StageKey, task: str | None = None) -> set[str]:
    """Exact names of the parameters that train in ``stage`` for ``task`` (None: the union over its tasks)."""
    spec = stage_spec(stage)
    if task is not None and task not in spec.trains:
        raise ValueError(f"stage {spec.key} ({spec.name}) has no {task!r} task; it has {', '.join(spec.tasks)}")
    groups = parameter_groups(model)
    tasks = [task] if task is not None else list(spec.tasks)
    for t in tasks:
        for group in spec.trains[t]:
            if group.startswith("plugin.") and not groups[group]:
                raise ValueError(f"stage {spec.key} trains {group} but the model has no such plugin (attach it first)")
    return {name for t in tasks for group in spec.trains[t] for name in groups[group]}


def freeze_for(model: nn.Module, stage: StageKey, task: str | None = None) -> set[str]:
    """Set ``requires_grad`` exactly on :func:`trainable_parameters`; return those names."""
    names = trainable_parameters(model, stage, task)
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    return names
