"""The two ways to run a federated job from medtune, both through Flower, both ending in the same output folder
(:mod:`components.federated.results`):

    history = simulate(settings, num_sites=3)                   # Flower's simulation engine (Ray), one machine
    history = deploy(settings, app_dir="infra/flower", connection="medtune")   # `flwr run` on a running SuperLink

Simulation: ``flwr.simulation.run_simulation`` with the apps built around ``settings`` (it takes no run config), Ray
limited to ``num_cpus`` (default 2) without its dashboard, one CPU per virtual SuperNode; the SuperNodes get
``partition-id``/``num-partitions`` node configs from Flower. Flower 1.42 marks ``run_simulation`` deprecated in
favour of ``flwr run`` against a local simulation SuperLink; it is still the engine's in-process entry point and
needs no background server, so medtune keeps it until Flower removes it. Known Ray behaviour medtune cannot switch
off: Ray's processes register under the machine's own address (not 127.0.0.1), and its dashboard head, even without
the dashboard and with usage stats off (``RAY_USAGE_STATS_ENABLED=0``), asks the cloud metadata addresses
(169.254.169.254, metadata.google.internal) once at start-up with a 1 s timeout; offline that fails and the run goes
on. (So a sandbox that refuses every non-loopback connection, like the integration tests' netguard, stops Ray from
starting; the deployment path has no such need.)

Deployment: ``flwr run`` submits ``infra/flower`` (a FAB of configuration only; the code is the installed medtune
package) to the SuperLink named ``connection`` in ``$FLWR_HOME/config.toml`` and streams its logs; the ServerApp
writes to ``settings.out_dir``, so that folder must be visible to the SuperLink host (the same machine, or shared
storage). Both wait at most ``bound_seconds(settings)``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from components.federated.results import HISTORY, read_history
from components.federated.settings import FedSettings


class FederatedRunError(RuntimeError):
    """A federated run did not finish; the message says how far it got."""


def bound_seconds(settings: FedSettings) -> float:
    """The longest a whole run may take: every round (and the final evaluation) at its timeout, plus start-up."""
    return settings.node_wait_timeout + (settings.total_rounds + 1) * settings.round_timeout + 120.0


def _finished(settings: FedSettings, what: str, detail: str = "") -> dict[str, Any]:
    out = Path(settings.out_dir)
    if not (out / HISTORY).is_file():
        raise FederatedRunError(f"{what} wrote no {HISTORY} in {out}{': ' + detail if detail else ''}")
    history = read_history(out)
    if history["status"] != "finished":
        raise FederatedRunError(f"{what} failed after {len(history['rounds'])} rounds: {history['error']}")
    return history


def simulate(settings: FedSettings, num_sites: int, *, num_cpus: int = 2) -> dict[str, Any]:
    """Run ``settings`` on ``num_sites`` virtual SuperNodes in Flower's simulation engine; returns the history."""
    from flwr.simulation import run_simulation

    from components.federated.app import make_client_app, make_server_app

    if not settings.out_dir:
        raise ValueError("simulate needs settings.out_dir (the ServerApp writes the results there)")
    history = Path(settings.out_dir) / HISTORY
    history.unlink(missing_ok=True)
    backend_config: dict[str, Any] = {
        "init_args": {"num_cpus": max(1, min(2, num_cpus)), "include_dashboard": False},
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
    }
    try:
        run_simulation(
            server_app=make_server_app(settings),
            client_app=make_client_app(settings),
            num_supernodes=num_sites,
            backend_config=backend_config,
        )
    except Exception as e:  # run_simulation re-raises the ServerApp's error (e.g. RoundFailed)
        raise FederatedRunError(f"the Flower simulation failed: {e}") from e
    return _finished(settings, "the Flower simulation")


def flwr_executable() -> str:
    """``flwr`` beside this interpreter (a venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "flwr"
    found = str(beside) if beside.exists() else shutil.which("flwr")
    if not found:
        raise FederatedRunError("the `flwr` command is not installed (pip install 'flwr[simulation]==1.42.0')")
    return found


def deploy(settings: FedSettings, app_dir: str | Path, connection: str, *, echo: Any = None) -> dict[str, Any]:
    """``flwr run app_dir connection --stream`` with ``settings`` as the run config; returns the history."""
    if not settings.out_dir:
        raise ValueError("deploy needs settings.out_dir on storage the SuperLink host can write")
    (Path(settings.out_dir) / HISTORY).unlink(missing_ok=True)
    args = [flwr_executable(), "run", str(app_dir), connection, "--stream"]
    for item in settings.to_flwr_args():
        args += ["-c", item]
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    try:
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=bound_seconds(settings))
    except subprocess.TimeoutExpired:
        raise FederatedRunError(f"flwr run did not end within {bound_seconds(settings):.0f} s") from None
    if echo is not None:
        for line in proc.stdout.splitlines()[-20:]:
            echo(line)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-8:])
    return _finished(settings, f"flwr run (exit {proc.returncode})", tail)
