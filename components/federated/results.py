"""What a federated run leaves in its output folder, written by the ServerApp (in simulation and in deployment)
and read by the pipeline stage, which logs it to MLflow:

    out/history.json          settings, status, one record per round (sites averaged/rejected/clipped, bytes,
                              metrics, DP epsilon so far), the final model's per-site evaluation, the privacy
                              spent (DP runs: mechanism, noise multiplier, clip norm, delta, epsilon)
    out/final.safetensors     the final dense ΔW per adapted matrix and per head (add to W0)
    out/rounds.png            the rounds at a glance (validation accuracy and loss, bytes per round)

    write_results(out, server, final_eval, status="finished")
    history = read_history(out); deltas = read_deltas(out)
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from components.federated.server import FederatedServer

HISTORY, DELTAS, PLOT = "history.json", "final.safetensors", "rounds.png"


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_results(
    out_dir: str | Path,
    server: FederatedServer,
    final_eval: Mapping[str, Mapping[str, float]],
    *,
    status: str,
    error: str = "",
) -> Path:
    """Write history (always), final deltas and plot (when the run finished) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    history = {
        "status": status,
        "error": error,
        "settings": server.settings.as_dict(),
        "rounds": [r.to_json() for r in server.history],
        "final": {site: dict(m) for site, m in final_eval.items()},
        "privacy": server.privacy.to_json() if server.privacy is not None else None,
    }
    if status == "finished":
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in server.final_deltas().items()}
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".final.", suffix=".safetensors")
        os.close(fd)
        save_file(tensors, tmp)
        os.replace(tmp, out / DELTAS)
        plot_rounds(history, out / PLOT)
    _atomic_text(out / HISTORY, json.dumps(history, indent=1, default=float) + "\n")
    return out


def read_history(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / HISTORY
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the federated run wrote no history (did the ServerApp start?)")
    return dict(json.loads(path.read_text()))


def read_deltas(out_dir: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(out_dir) / DELTAS))


def plot_rounds(history: Mapping[str, Any], path: Path) -> Path:
    """Validation accuracy and loss of the global model per round (mean and per site), and bytes per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = history["rounds"]
    xs = [r["round"] for r in rounds]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    sites = sorted({s for r in rounds for s in r["sites"]})
    for ax, key in zip(axes[:2], ("val_accuracy", "val_loss"), strict=True):
        for site in sites:
            ys = [r["sites"].get(site, {}).get(key, math.nan) for r in rounds]
            ax.plot(xs, ys, lw=0.8, alpha=0.5)
        ax.plot(xs, [r["summary"].get(key, math.nan) for r in rounds], "k-o", lw=2, ms=3, label="weighted mean")
        ax.set_title(f"{key} of the global model at each site")
        ax.set_xlabel("round")
        ax.legend(fontsize=7)
    axes[2].bar([x - 0.2 for x in xs], [r["bytes_down"] / 1e6 for r in rounds], width=0.4, label="down")
    axes[2].bar([x + 0.2 for x in xs], [r["bytes_up"] / 1e6 for r in rounds], width=0.4, label="up")
    axes[2].set_title("MB per round (all sites)")
    axes[2].set_xlabel("round")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    method = history.get("settings", {}).get("method", "")
    fig.suptitle(f"federated {method}: {len(sites)} sites, {len(rounds)} rounds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
