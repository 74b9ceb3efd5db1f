"""What every command needs first: the workspace, its state folder, the environment, and the resolved config.

Order matters: the environment (telemetry off, tool homes in the state folder) is set before any command
imports prefect, mlflow, dvc or flwr, and the config is validated before anything is written, so a bad key
leaves no trace.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.config import ConfigError, MedtuneConfig, config_dict, config_hash, load_config, validate_config
from components.config.loader import apply_override, read_yaml
from components.runtime import StatePaths, configure_environment, find_workspace, state_paths

PARAMS_FILE = "params.yaml"  # DVC's default params file: the resolved config of the last run
CODE_KEY = "_medtune"  # a params.yaml section that is not config: hashes of the code behind each DVC stage
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Context:
    workspace: Path
    state: StatePaths
    config: MedtuneConfig
    config_path: Path

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)

    def path(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.workspace / p

    @property
    def tracking_uri(self) -> str:
        return self.config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or self.state.mlflow_uri


def resolve(
    config: Path | None,
    overrides: list[str] | None,
    *,
    workspace: Path | None = None,
    make_state: bool = True,
) -> Context:
    """Find the workspace, validate the config (raises ConfigError before anything is written), set up env."""
    workspace = workspace or find_workspace()
    path = config if config is not None else workspace / "configs" / "default.yaml"
    if not path.is_absolute():
        path = (Path.cwd() / path).resolve()
    cfg = load_params(path, overrides or [])
    state = state_paths(workspace)
    configure_environment(state)  # before the model check imports transformers (its progress-bar switch)
    check_model_source(cfg, workspace)
    if make_state:
        state.make()
    return Context(workspace, state, cfg, path)


def apply_threads(ctx: Context) -> dict[str, int]:
    """Size torch's threads for this command (``train.threads``, or the CPUs the process may use: affinity and
    cgroup quota); called once at the start of ``medtune run`` and of every stage command, before any training.
    Returns the figures as MLflow params of the command's parent run."""
    from components import runtime

    threads = ctx.config.train.threads
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun: the processes of this machine share its CPUs
    if threads is None and local > 1:
        threads = max(1, runtime.usable_cpus() // local)
    return {"runtime.cpus": runtime.usable_cpus(), "runtime.threads": runtime.apply_threads(threads)}


def model_path(cfg: MedtuneConfig, workspace: Path) -> Path | None:
    """The local folder of ``model.path`` (relative paths are the workspace's; a hub id: its cached snapshot)."""
    value = cfg.model.path
    if not value:
        return None
    from components.models.hf import resolve_checkpoint

    candidate = Path(value).expanduser()
    if not candidate.is_absolute() and (workspace / candidate).is_dir():
        return workspace / candidate
    return resolve_checkpoint(value)


def check_model_source(cfg: MedtuneConfig, workspace: Path) -> None:
    """Fail within seconds, before any data work, when the model settings name no usable checkpoint
    (issue 16): one line naming the key and the path, raised as a ConfigError (exit 2)."""
    if cfg.model.path:
        from components.models.hf import CheckpointError, check_checkpoint

        try:
            folder = model_path(cfg, workspace)
            assert folder is not None
            check_checkpoint(folder)
        except CheckpointError as e:
            raise ConfigError(str(e)) from None
    for key, value in (("model.lm.path", cfg.model.lm.path), ("model.vision.path", cfg.model.vision.path)):
        folder = Path(value).expanduser() if value else None
        if folder is None or value is None:
            continue
        if not folder.is_dir():
            from components.models.hf import CheckpointError, resolve_checkpoint

            try:
                folder = resolve_checkpoint(value, key)  # a hub id: its snapshot in the local HF cache
            except CheckpointError as e:
                raise ConfigError(str(e)) from None
        cfg_file = folder / "config.json"
        if not cfg_file.is_file():
            raise ConfigError(f"{key}: {folder} holds no config.json: not a Hugging Face model folder")
        model_type = str(json.loads(cfg_file.read_text()).get("model_type", ""))
        if model_type in VLM_TYPES:
            raise ConfigError(f"{key}: {folder} is a whole {model_type} VLM; pass it as model.path instead")
        if key == "model.vision.path" and model_type not in ("clip", "clip_vision_model"):
            raise ConfigError(f"{key}: {folder} is a {model_type!r} model, not a CLIP vision checkpoint")
    if cfg.model.quantize != "none":  # issue 20: a 4-/8-bit base needs CUDA and bitsandbytes
        from components.models.quantize import QuantizeError, check_quantize

        try:
            check_quantize(cfg.model.quantize, cfg.train.device)
        except QuantizeError as e:
            raise ConfigError(str(e)) from None


VLM_TYPES = ("llava", "qwen2_5_vl", "qwen2_vl", "gemma3", "idefics3", "smolvlm", "llava_next", "mllama", "paligemma")


def load_params(path: Path, overrides: list[str]) -> MedtuneConfig:
    """Load a config file; a params.yaml written by :func:`write_params` loads too (its code section is dropped)."""
    if path.name == PARAMS_FILE:
        data = read_yaml(path)
        data.pop(CODE_KEY, None)
        for override in overrides:
            apply_override(data, override)
        return validate_config(data)
    return load_config(path, overrides)


def code_hash(*parts: str) -> str:
    """Hash of medtune's Python sources (folders or files, relative to the package root), so a DVC stage re-runs
    when the code behind it changes."""
    digest = hashlib.sha256()
    for part in parts:
        path = PACKAGE_ROOT / part
        files = [path] if path.is_file() else sorted(path.rglob("*.py"))
        for file in files:
            digest.update(str(file.relative_to(PACKAGE_ROOT)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def write_params(ctx: Context) -> Path:
    """Write the resolved config to params.yaml (atomically) for DVC: stages take their params from it."""
    data: dict[str, Any] = config_dict(ctx.config)
    from components.data.build import external_inputs_hash

    data[CODE_KEY] = {
        "build": code_hash("components/data"),
        "sources": external_inputs_hash(dict(ctx.config.data.sources), ctx.workspace, ctx.path(ctx.config.data.raw)),
        "validate": code_hash("components/validation", "components/data/records.py", "components/data/phi.py"),
    }
    target = ctx.workspace / PARAMS_FILE
    text = "# Written by medtune from " + str(ctx.config_path.name) + "; DVC reads stage params from here.\n"
    text += yaml.safe_dump(data, sort_keys=False)
    if target.exists() and target.read_text() == text:
        return target
    fd, tmp = tempfile.mkstemp(dir=ctx.workspace, prefix=".params.", suffix=".yaml")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, target)
    return target


def git_info(workspace: Path) -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "none"
    dirty = "true" if git("status", "--porcelain", "--untracked-files=no") else "false"
    return {"git_commit": commit, "git_dirty": dirty}


def describe(ctx: Context) -> str:
    return json.dumps(config_dict(ctx.config), indent=2)


__all__ = ["ConfigError", "Context", "apply_threads", "code_hash", "git_info", "load_params", "resolve", "write_params"]
