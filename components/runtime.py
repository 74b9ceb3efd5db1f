"""Where medtune keeps its state, and the process environment every command runs in.

One state folder (``.medtune/`` in the workspace, or ``$MEDTUNE_HOME``) holds Prefect's home (its temporary
server's SQLite database), MLflow's SQLite store and artifacts, the DVC local remote and DVC's site cache, so
nothing is written to the user's home and one ``rm -r .medtune`` resets everything.

:func:`configure_environment` must run before ``prefect``, ``mlflow``, ``dvc`` or ``flwr`` are imported: they
read their settings (and decide on telemetry) at import time. A value the user set explicitly always wins.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

#: Telemetry and update checks, off unless the user says otherwise (values as each library parses them:
#: mlflow accepts DO_NOT_TRACK only as "true").
TELEMETRY_OFF = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GIT_TERMINAL_PROMPT": "0",
}

WORKSPACE_MARKERS = ("dvc.yaml", "configs")


class WorkspaceError(Exception):
    """No medtune workspace where one is needed."""


@dataclass(frozen=True)
class StatePaths:
    """Every folder medtune writes outside the dataset, under one root."""

    root: Path

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def mlflow_dir(self) -> Path:
        return self.root / "mlflow"

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{(self.mlflow_dir / 'mlflow.db').resolve()}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.mlflow_dir / "artifacts"

    @property
    def dvc_remote(self) -> Path:
        return self.root / "dvc-remote"

    @property
    def dvc_site_cache(self) -> Path:
        return self.root / "dvc-site-cache"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def runs(self) -> Path:
        """Scratch space of single runs (reports before they go to MLflow)."""
        return self.root / "runs"

    def make(self) -> StatePaths:
        for d in (self.root, self.prefect_home, self.mlflow_dir, self.mlflow_artifacts, self.dvc_remote, self.runs):
            d.mkdir(parents=True, exist_ok=True)
        return self


def find_workspace(start: Path | None = None) -> Path:
    """The workspace root: ``$MEDTUNE_WORKSPACE``, else the nearest folder at or above ``start`` holding
    ``dvc.yaml`` and ``configs/``."""
    env = os.environ.get("MEDTUNE_WORKSPACE")
    if env:
        root = Path(env).resolve()
        if not all((root / m).exists() for m in WORKSPACE_MARKERS):
            raise WorkspaceError(f"MEDTUNE_WORKSPACE={env} is not a medtune workspace (needs dvc.yaml and configs/)")
        return root
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if all((folder / m).exists() for m in WORKSPACE_MARKERS):
            return folder
    raise WorkspaceError(
        f"{here} is not inside a medtune workspace (no dvc.yaml and configs/ found above it); "
        "run `medtune init DIR` to create one, or cd into the medtune checkout"
    )


def state_paths(workspace: Path) -> StatePaths:
    env = os.environ.get("MEDTUNE_HOME")
    return StatePaths(Path(env).resolve() if env else workspace / ".medtune")


def configure_environment(state: StatePaths) -> None:
    """Set telemetry switches and tool homes for this process and its children; explicit settings win."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(state.prefect_home))
    # Prefect derives these from "home" only inside its root settings; the server's memo store, the results' local
    # storage and the logging config of the sub-settings default to ~/.prefect (issue 17: nothing outside the
    # workspace and its state folder)
    home = Path(os.environ["PREFECT_HOME"])
    os.environ.setdefault("PREFECT_SERVER_MEMO_STORE_PATH", str(home / "memo_store.toml"))
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(home / "storage"))
    os.environ.setdefault("PREFECT_LOGGING_CONFIG_PATH", str(home / "logging.yml"))
    os.environ.setdefault("DVC_SITE_CACHE_DIR", str(state.dvc_site_cache))
    os.environ.setdefault("FLWR_HOME", str(state.root / "flwr"))
    os.environ.setdefault("MPLCONFIGDIR", str(state.root / "matplotlib"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    # The temporary Prefect server needs a few seconds on a cold 2-core machine; 20 s is tight under load.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # transformers' notices (a processor's "falling back to the PIL backend" without torchvision, weight-loading
    # bars) are not the user's to act on; errors still print. peft reads a deprecated transformers attribute on
    # every adapter it wraps: its FutureWarning says nothing about medtune's use.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # weight-loading bars: medtune shows its own progress
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
