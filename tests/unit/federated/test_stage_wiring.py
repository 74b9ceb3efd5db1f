"""The ``federated`` stage joins retrain only when the config names sites, and then evaluation, safety and
registration read its model (issue 7, item 5).

    .venv/bin/pytest tests/unit/federated
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from components.config import ConfigError, load_config
from pipelines.retrain import STAGES, stages_for

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def _ctx(*overrides: str, config: str = "default.yaml") -> SimpleNamespace:
    return SimpleNamespace(config=load_config(CONFIGS / config, list(overrides)))


def test_default_retrain_is_unchanged_without_sites() -> None:
    got = stages_for(_ctx())  # type: ignore[arg-type]
    assert [(s.name, s.fn, s.inputs) for s in got] == [(s.name, s.fn, s.inputs) for s in STAGES]


def test_federated_profile_inserts_the_stage_after_train_and_rewires_its_readers() -> None:
    got = stages_for(_ctx(config="federated.yaml"))  # type: ignore[arg-type]
    names = [s.name for s in got]
    assert names.index("federated") == names.index("train") + 1
    fed = got[names.index("federated")]
    assert fed.inputs["model_dir"] == ("train", "model_dir")
    readers = [s for s in got if "model_dir" in s.inputs and s.name != "federated"]
    assert readers and all(s.inputs["model_dir"] == ("federated", "model_dir") for s in readers)
    assert {s.name for s in readers} >= {"evaluate", "safety"}


def test_federated_config_is_checked_at_load_time() -> None:
    with pytest.raises(ConfigError, match="at least two distinct sites"):
        _ctx("federated.sites=[site-0]")
    with pytest.raises(ConfigError, match="min_sites=3 exceeds"):
        _ctx("federated.sites=[a,b]", "federated.min_sites=3")
    with pytest.raises(ConfigError, match="federated.mode"):
        _ctx("federated.sites=[a,b]", "federated.mode=cloud")


def test_robust_aggregation_and_dp_config_is_checked_at_load_time() -> None:
    cfg = _ctx("federated.sites=[a,b]", "federated.aggregation=median").config.federated
    assert cfg.aggregation == "median" and cfg.clip_factor == 5.0 and not cfg.dp.enabled
    with pytest.raises(ConfigError, match="federated.aggregation"):
        _ctx("federated.sites=[a,b]", "federated.aggregation=mean")
    with pytest.raises(ConfigError, match="dp needs federated.clip_norm"):
        _ctx("federated.sites=[a,b]", "federated.dp.epsilon=8")
    with pytest.raises(ConfigError, match="not both"):
        _ctx(
            "federated.sites=[a,b]",
            "federated.clip_norm=1",
            "federated.dp.epsilon=8",
            "federated.dp.noise_multiplier=1",
        )
    with pytest.raises(ConfigError, match="weighted_mean only"):
        _ctx("federated.sites=[a,b]", "federated.clip_norm=1", "federated.dp.epsilon=8", "federated.aggregation=median")
    assert _ctx("federated.sites=[a,b]", "federated.clip_norm=1", "federated.dp.epsilon=8").config.federated.dp.enabled
