"""`medtune train` with ``adapter.kind=flix`` end to end (issue 6): a fresh workspace, the smoke profile cut to a
step or two per stage, records' features through collate -> trainer -> recipe -> evaluation. Run::

    .venv/bin/pytest tests/integration/test_flix_train.py -q
"""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import assert_offline, cli_env, medtune

pytestmark = pytest.mark.integration

SMALL = ["--config", "configs/smoke.yaml"]
TINY_RUN = [
    "base.steps=3", "base.vision_warmup=2", "vq.steps=3", "train.stage1.steps=1", "train.stage2.steps=1",
    "train.stage3.steps=2",
    "train.checkpoint_every=1",
]  # fmt: skip


def test_medtune_train_with_flix_trains_saves_and_evaluates(make_workspace, netguard) -> None:
    ws = make_workspace()
    env = cli_env(netguard)
    built = medtune(["data", "build", *SMALL], ws, env)
    assert built.returncode == 0, built.output

    trained = medtune(["train", *SMALL, "adapter.kind=flix", "adapter.features=[task,modality]", *TINY_RUN], ws, env)
    assert trained.returncode == 0, trained.output
    assert "train: stages 1,2,3 with flix" in trained.stdout
    assert "evaluate: closed/accuracy" in trained.stdout
    configs = list((ws / ".medtune" / "train").glob("*/model/adapters/*/adapter_config.json"))
    assert len(configs) == 2, configs
    for path in configs:
        config = json.loads(path.read_text())
        assert config["peft_type"] == "FLIX"
        # the vocabulary is the train split's: both tasks, the phantom's two modalities (and any other source's)
        assert config["features"]["task"] == ["comprehension", "generation"]
        assert {"CT", "MRI"} <= set(config["features"]["modality"])
        assert config["r"] == (16 if path.parent.name == "generation" else 8)  # rank 16 / 32 over 2 features
    assert_offline(netguard)
