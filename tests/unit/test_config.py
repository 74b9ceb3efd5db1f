"""Config: every shipped YAML validates, every field is documented, mistakes name their path."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel, ValidationError

from components.config import ConfigError, config_hash, load_config
from components.config.loader import apply_override
from components.config.schema import MedtuneConfig
from components.data.sources import SOURCES

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
DEFAULT = REPO / "configs" / "default.yaml"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.data.sources


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    if model in seen:
        return
    seen.add(model)
    for field in model.model_fields.values():
        stack: list[Any] = [field.annotation]
        while stack:
            tp = stack.pop()
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                _models(tp, seen)
            stack.extend(get_args(tp))


def test_every_field_has_a_description_and_models_are_strict() -> None:
    seen: set[type[BaseModel]] = set()
    _models(MedtuneConfig, seen)
    for spec in SOURCES.values():
        _models(spec.config, seen)
    assert len(seen) > 8
    for model in seen:
        assert model.model_config.get("extra") == "forbid", model
        assert model.model_config.get("frozen") is True, model
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_misspelt_key_names_path_and_allowed_keys() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(DEFAULT, ["data.soruces.x=1"])
    msg = str(e.value)
    assert msg.count("\n") == 0
    assert msg.startswith("data.soruces: unknown key")
    assert "sources" in msg and "workers" in msg


def test_misspelt_key_inside_a_source_skips_the_union_tag() -> None:
    with pytest.raises(ConfigError, match=r"^data\.sources\.phantom\.subjectz: unknown key; allowed keys: kind"):
        load_config(DEFAULT, ["data.sources.phantom.subjectz=3"])


def test_unknown_source_kind_lists_known_kinds() -> None:
    with pytest.raises(ConfigError, match=r"data\.sources\.phantom\.kind: unknown kind 'nope'; known kinds"):
        load_config(DEFAULT, ["data.sources.phantom.kind=nope"])


def test_bad_value_names_path_and_value() -> None:
    with pytest.raises(ConfigError, match=r"^data\.workers: .*integer.*\(got 'many'\)$"):
        load_config(DEFAULT, ["data.workers=many"])
    with pytest.raises(ConfigError, match=r"^data\.splits: train \+ val \+ test must be 1"):
        load_config(DEFAULT, ["data.splits.train=0.5"])


def test_overrides_parse_yaml_values() -> None:
    cfg = load_config(DEFAULT, ["data.workers=2", "validate.split_tolerance=5e-2", "tracking.uri=null"])
    assert cfg.data.workers == 2
    assert cfg.validate_.split_tolerance == pytest.approx(0.05)
    assert cfg.tracking.uri is None


def test_override_without_equals_is_an_error() -> None:
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_override({}, "data.workers")


def test_override_into_a_scalar_is_an_error() -> None:
    with pytest.raises(ConfigError, match="data.workers: is a value"):
        apply_override({"data": {"workers": 1}}, "data.workers.x=1")


def test_config_is_frozen() -> None:
    cfg = load_config(DEFAULT)
    with pytest.raises(ValidationError):
        cfg.data.workers = 3  # type: ignore[misc]


def test_hash_is_stable_and_sensitive() -> None:
    a, b = load_config(DEFAULT), load_config(DEFAULT)
    assert config_hash(a) == config_hash(b)
    assert config_hash(load_config(DEFAULT, ["data.workers=2"])) != config_hash(a)


def test_extends_merges_over_parent(tmp_path: Path) -> None:
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {DEFAULT}\ndata:\n  workers: 2\n")
    cfg = load_config(child)
    assert cfg.data.workers == 2
    assert "phantom" in cfg.data.sources


def test_yaml_error_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  workers: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_config(bad)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Path("/nonexistent/medtune.yaml"))


def test_s3_remote_requires_settings() -> None:
    with pytest.raises(ConfigError, match=r"^dvc: remote 's3' needs an 's3' section"):
        load_config(DEFAULT, ["dvc.remote=s3"])
