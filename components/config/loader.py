"""Load a YAML config, apply dotted overrides, validate; turn every mistake into one readable line.

    cfg = load_config(Path("configs/default.yaml"), ["data.sources.phantom.subjects=8"])

A profile may start with ``extends: other.yaml`` (relative to itself): the other file is loaded first and this
one is merged over it key by key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from components.config.schema import MedtuneConfig


class ConfigError(Exception):
    """A config that cannot be used. ``str()`` is one line per problem, each naming its dotted path."""


def read_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent is not None:
        parent_path = (path.parent / str(parent)).resolve()
        if parent_path in _seen:
            raise ConfigError(f"{path}: 'extends' loops back to {parent_path}")
        data = deep_merge(read_yaml(parent_path, (*_seen, path.resolve())), data)
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set ``a.b.c=value`` in place; the value is parsed as YAML (``1e-4`` is a float, ``[a, b]`` a list)."""
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected KEY=VALUE, e.g. data.workers=2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node: Any = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if child is None:
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, cannot set {key!r} inside it")
        node = child
    node[parts[-1]] = value


def _model_at(loc: tuple[Any, ...]) -> tuple[str, type[BaseModel] | None]:
    """Walk a pydantic error location; return the dotted path a user wrote and the model owning the last key."""
    model: Any = MedtuneConfig
    shown: list[str] = []
    pending_tag = False
    for part in loc:
        if pending_tag:  # discriminated unions add the tag to the location; the user never wrote it
            pending_tag = False
            tagged = [a for a in get_args(model) if isinstance(a, type) and issubclass(a, BaseModel)]
            model = next((a for a in tagged if a.model_fields["kind"].default == part), None)
            if model is None:
                model = next((a for a in tagged if get_args(a.model_fields["kind"].annotation) == (part,)), None)
            continue
        shown.append(str(part))
        if isinstance(model, type) and issubclass(model, BaseModel):
            field = next(
                (f for name, f in model.model_fields.items() if part in (name, f.alias)),
                None,
            )
            model = field.annotation if field is not None else None
        elif get_origin(model) is dict:
            model = get_args(model)[1]
        else:
            model = None
        model = _unwrap(model)
        is_model = isinstance(model, type) and issubclass(model, BaseModel)
        if model is not None and not is_model and get_origin(model) is not dict and _is_union_of_models(model):
            pending_tag = True
    return ".".join(shown), model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    args = get_args(tp)
    if args and get_origin(tp) is not dict:
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(models) == 1:  # Optional[Model] or Annotated[Model, ...]
            return models[0]
        if args and get_origin(args[0]) is not None and _is_union_of_models(args[0]):
            return args[0]  # Annotated[Union[...], discriminator]
    return tp


def _is_union_of_models(tp: Any) -> bool:
    args = get_args(tp)
    return len(args) > 1 and all(isinstance(a, type) and issubclass(a, BaseModel) for a in args)


def _allowed(model: type[BaseModel] | None) -> str:
    if model is None:
        return ""
    return "; allowed keys: " + ", ".join(f.alias or name for name, f in model.model_fields.items())


def format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        if e["type"] == "extra_forbidden":
            path, _ = _model_at(loc)
            _, parent = _model_at(loc[:-1])
            lines.append(f"{path}: unknown key{_allowed(parent)}")
        elif e["type"] == "union_tag_invalid":
            path, _ = _model_at(loc)
            ctx = e.get("ctx", {})
            lines.append(f"{path}.kind: unknown kind {ctx.get('tag')!r}; known kinds: {ctx.get('expected_tags')}")
        else:
            path, _ = _model_at(loc)
            msg = e["msg"].removeprefix("Value error, ")
            value = e.get("input")
            got = "" if e["type"] == "missing" or isinstance(value, dict | list) else f" (got {value!r})"
            lines.append(f"{path or '<top>'}: {msg}{got}")
    return "\n".join(dict.fromkeys(lines))


def validate_config(data: dict[str, Any]) -> MedtuneConfig:
    try:
        return MedtuneConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(e)) from None


def load_config(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> MedtuneConfig:
    data = read_yaml(path)
    for override in overrides:
        apply_override(data, override)
    return validate_config(data)


def config_dict(cfg: MedtuneConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json", by_alias=True)


def config_hash(cfg: MedtuneConfig) -> str:
    """Short, stable hash of the resolved config (the same config gives the same hash on any machine)."""
    blob = json.dumps(config_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
