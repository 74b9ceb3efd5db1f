"""The stage table: per stage and task, EXACTLY the listed parameters require grad, for both adapter kinds
(issue 4 acceptance: "per stage exactly the listed parameters require grad"). Run::

    .venv/bin/pytest tests/unit/training/test_stages.py -q

The expected sets are written here by name pattern, independently of ``parameter_groups``.
"""

from __future__ import annotations

import re

import pytest

from components.training.stages import STAGES, freeze_for, stage_spec, trainable_parameters
from tests.unit.training.conftest import ModelFactory

PLUGIN = {"lora": r"\.lora_(A|B)\.{task}\.weight$", "hlora": r"\.hlora_(A|B|router)\.{task}$"}


def expected(names: list[str], kind: str, groups: tuple[str, ...]) -> set[str]:
    """Parameter names of the given groups, by pattern."""
    out: set[str] = set()
    for group in groups:
        if group.startswith("projector."):
            out |= {n for n in names if n.startswith(f"projectors.{group.split('.')[1]}.")}
        elif group.startswith("plugin."):
            pattern = re.compile(PLUGIN[kind].format(task=group.split(".")[1]))
            out |= {n for n in names if pattern.search(n)}
        elif group == "embeddings":
            out |= {n for n in names if n.endswith("embed_tokens.weight")}
        elif group == "head":
            out |= {n for n in names if n.endswith("lm_head.weight")}
        else:
            raise AssertionError(f"the test has no pattern for group {group}")
    return out


# (stage, task) -> groups: the table of METHODS.md §1, restated here on purpose.
TABLE = {
    (1, "comprehension"): ("projector.comprehension",),
    (1, "generation"): ("projector.generation", "plugin.generation"),
    (2, "comprehension"): ("embeddings", "head"),
    (2, "generation"): ("embeddings", "head"),
    (3, "comprehension"): ("projector.comprehension", "plugin.comprehension"),
    (3, "generation"): ("projector.generation", "plugin.generation"),
    ("mixed", "comprehension"): ("projector.comprehension", "plugin.comprehension", "embeddings", "head"),
    ("mixed", "generation"): ("projector.generation", "plugin.generation", "embeddings", "head"),
}


@pytest.mark.parametrize("kind", ["lora", "hlora"])
def test_exactly_the_listed_parameters_train(make_model: ModelFactory, kind: str) -> None:
    model = make_model(kind)
    names = [n for n, _ in model.named_parameters()]
    assert any(re.search(PLUGIN[kind].format(task="generation"), n) for n in names)
    for (stage, task), groups in TABLE.items():
        want = expected(names, kind, groups)
        assert want, (stage, task)
        assert trainable_parameters(model, stage, task) == want, (stage, task)
        freeze_for(model, stage, task)
        assert {n for n, p in model.named_parameters() if p.requires_grad} == want, (stage, task)
        # the vision encoder and the LM's base weights never train in stages 1-3 / mixed
        assert not any(n.startswith("vision.") or ".base_layer." in n for n in want)
    for stage in (1, 2, 3, "mixed"):
        union = set().union(*(expected(names, kind, g) for (s, _), g in TABLE.items() if s == stage))
        assert freeze_for(model, stage) == union
        assert {n for n, p in model.named_parameters() if p.requires_grad} == union


def test_the_table_matches_methods_md() -> None:
    assert set(STAGES) == {"base", 1, 2, 3, "mixed"}
    for (stage, task), groups in TABLE.items():
        assert set(stage_spec(stage).trains[task]) == set(groups)
    assert stage_spec(1).data["generation"] == ("reconstruction",)  # generation aligns on reconstruction
    assert set(stage_spec(2).data) == {"comprehension", "generation"}  # a mixed sample of both tasks
    assert stage_spec("3").key == 3


def test_base_stage_trains_everything_of_comprehension(make_model: ModelFactory) -> None:
    model = make_model("lora")
    names = trainable_parameters(model, "base", "comprehension")
    assert {n for n in names if n.startswith("vision.")} == {
        n for n, _ in model.named_parameters() if n.startswith("vision.")
    }
    assert not any("lora_" in n or n.startswith("projectors.generation") for n in names)


def test_errors_name_the_choices(make_model: ModelFactory) -> None:
    model = make_model("hlora")
    with pytest.raises(ValueError, match="known: base, 1, 2, 3, mixed"):
        trainable_parameters(model, 4)
    with pytest.raises(ValueError, match="has no 'generation' task"):
        trainable_parameters(model, "base", "generation")
