"""DVC as a user runs it: the ``dvc`` command line, in the workspace, with output streamed and kept.

medtune calls ``python -m dvc`` of its own environment (so the venv's dvc and medtune are used even when the
venv is not activated) and puts that environment's ``bin`` first on PATH for the stage commands DVC runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from components.config.schema import DvcConfig
from components.runtime import StatePaths


class DvcError(Exception):
    """A DVC command failed; the message carries its last output lines."""


@dataclass(frozen=True)
class DvcResult:
    returncode: int
    output: str


#: What torchrun tells a rank. The DVC stages run one-process commands (``medtune data build``, ``data validate``):
#: inherited, these made the build refuse to run "under torchrun" when rank 0 of ``medtune run --nproc N`` built
#: the data of a fresh workspace.
TORCHRUN_ENV = (
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
    "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_ERROR_FILE",
)  # fmt: skip


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def dvc(
    workspace: Path,
    *args: str,
    check: bool = True,
    echo: Callable[[str], None] | None = None,
    timeout: float = 3600,
) -> DvcResult:
    """Run ``dvc ARGS`` in the workspace; stream each output line to ``echo``; raise DvcError on failure."""
    cmd = [sys.executable, "-m", "dvc", *args]
    proc = subprocess.Popen(
        cmd, cwd=workspace, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if echo is not None:
                echo(line.rstrip("\n"))
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise DvcError(f"dvc {' '.join(args)}: no result after {timeout:.0f} s") from None
    output = "\n".join(lines)
    if check and proc.returncode != 0:
        tail = "\n".join(lines[-15:])
        raise DvcError(f"dvc {' '.join(args)} failed (exit {proc.returncode}):\n{tail}")
    return DvcResult(proc.returncode, output)


def ensure_repo(workspace: Path, state: StatePaths) -> None:
    """Make the workspace a DVC repo with analytics off and the state folder's local remote as default."""
    if not (workspace / ".dvc").is_dir():
        dvc(workspace, "init", "--quiet")
        dvc(workspace, "config", "core.analytics", "false")
    local_cfg = workspace / ".dvc" / "config.local"
    remote = str(state.dvc_remote.resolve())
    text = local_cfg.read_text() if local_cfg.exists() else ""
    if remote not in text:
        state.dvc_remote.mkdir(parents=True, exist_ok=True)
        dvc(workspace, "remote", "add", "--local", "--force", "--default", "state", remote)


def stage_reused(output: str, stage: str) -> bool:
    """Whether ``dvc repro`` skipped the stage because nothing it depends on changed."""
    return f"Stage '{stage}' didn't change, skipping" in output or f"Stage '{stage}' is cached" in output


def output_hash(workspace: Path, stage: str, out: str) -> str | None:
    """The md5 DVC recorded in dvc.lock for a stage output (the data version of a built dataset)."""
    lock = workspace / "dvc.lock"
    if not lock.exists():
        return None
    data = yaml.safe_load(lock.read_text()) or {}
    for entry in data.get("stages", {}).get(stage, {}).get("outs", []):
        if entry.get("path") == out:
            md5 = entry.get("md5")
            return str(md5) if md5 else None
    return None


def tracked_hash(workspace: Path, dvc_file: str) -> str | None:
    path = workspace / dvc_file
    if not path.exists():
        return None
    data = yaml.safe_load(path.read_text()) or {}
    outs = data.get("outs") or [{}]
    md5 = outs[0].get("md5")
    return str(md5) if md5 else None


def configure_remote(workspace: Path, state: StatePaths, cfg: DvcConfig) -> str:
    """Point DVC at the configured remote and return its name.

    ``local``: the folder in the state folder (set up by :func:`ensure_repo`). ``s3``: the bucket/prefix (and
    endpoint, for S3-compatible stores) go to ``.dvc/config.local``; credentials are never written anywhere:
    boto3 reads them from the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or a role).
    """
    if cfg.remote == "local" or cfg.s3 is None:
        return "state"
    s3 = cfg.s3
    url = f"s3://{s3.bucket}/{s3.prefix.strip('/')}" if s3.prefix.strip("/") else f"s3://{s3.bucket}"
    dvc(workspace, "remote", "add", "--local", "--force", "s3", url)
    dvc(workspace, "remote", "modify", "--local", "s3", "region", s3.region)
    if s3.endpoint_url:
        dvc(workspace, "remote", "modify", "--local", "s3", "endpointurl", s3.endpoint_url)
    else:
        dvc(workspace, "remote", "modify", "--local", "--unset", "s3", "endpointurl", check=False)
    return "s3"
