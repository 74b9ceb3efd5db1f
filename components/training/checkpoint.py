"""Atomic training checkpoints and exact resume (issue 4: "killing training with SIGKILL mid-stage and re-running
resumes from the last checkpoint; the final weights equal an uninterrupted run's").

    from components.training.checkpoint import save_checkpoint, latest_checkpoint, load_checkpoint
    save_checkpoint(folder, step, tensors, optimizer=opt, scheduler=sched, state={...}, rng=[capture_rng()])
    ckpt = latest_checkpoint(folder)            # the newest complete "step-000040" folder, or None
    loaded = load_checkpoint(ckpt, optimizer=opt, scheduler=sched)   # tensors, state, per-rank RNG

One checkpoint is one folder ``step-<8 digits>`` holding

- ``trainable.safetensors``: the parameters the run trains (no pickle), by MedVLM parameter name;
- ``optimizer.pt``: the optimizer's and scheduler's ``state_dict`` (tensors and plain numbers; loaded with
  ``weights_only=True``);
- ``rng.pt``: the RNG states of every rank (torch CPU and CUDA, numpy, Python ``random``);
- ``state.json``: the step, the samplers' positions, the loss history and whatever the trainer adds.

Atomicity: everything is written into a hidden ``.tmp-*`` folder beside it, each file is fsynced, then the folder
is renamed into place (``os.replace``: atomic on POSIX). A SIGKILL at any moment leaves either the previous
checkpoint or the new one, never a half-written one; leftover ``.tmp-*`` folders are ignored and removed. Only the
newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

PREFIX = "step-"
TENSORS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "state.json"


def capture_rng() -> dict[str, Any]:
    """This process's RNG states: torch (CPU and every CUDA device), numpy's global generator, Python's random."""
    np_state: Any = np.random.get_state()  # the legacy tuple (name, keys, pos, has_gauss, cached)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": random.getstate()[0], "state": list(random.getstate()[1]), "gauss": random.getstate()[2]},
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    """Undo :func:`capture_rng`: the process continues drawing exactly where the captured one was."""
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(folder: str | Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())


def save_checkpoint(
    folder: str | Path,
    step: int,
    tensors: Mapping[str, Tensor],
    *,
    optimizer: torch.optim.Optimizer | Mapping[str, Any],
    scheduler: Any,
    state: Mapping[str, Any],
    rng: Sequence[Mapping[str, Any]],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically into ``folder`` (see the module docstring); return its path.

    ``rng`` holds one :func:`capture_rng` per rank (rank order). Call on one process only (rank 0)."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # a previous run killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{checkpoint_name(step)}-", dir=root))
    try:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp / TENSORS_FILE))
        optim = optimizer if isinstance(optimizer, Mapping) else optimizer.state_dict()  # FSDP: gathered
        torch.save({"optimizer": optim, "scheduler": scheduler.state_dict()}, tmp / OPTIMIZER_FILE)
        torch.save({"ranks": list(rng)}, tmp / RNG_FILE)
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=1) + "\n")
        _fsync_tree(tmp)
        final = root / checkpoint_name(step)
        if final.exists():  # the same step again (a resumed run re-saving): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


@dataclass
class LoadedCheckpoint:
    path: Path
    step: int
    tensors: dict[str, Tensor]
    state: dict[str, Any]
    rng: list[dict[str, Any]]


def load_checkpoint(
    path: str | Path, *, optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None
) -> LoadedCheckpoint:
    """Read a checkpoint folder; load the optimizer's and scheduler's state into the given objects."""
    folder = Path(path)
    for name in (TENSORS_FILE, OPTIMIZER_FILE, RNG_FILE, STATE_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"checkpoint {folder} lacks {name}")
    state = json.loads((folder / STATE_FILE).read_text())
    opt = torch.load(folder / OPTIMIZER_FILE, weights_only=True, map_location="cpu")
    if optimizer is not None:
        optimizer.load_state_dict(opt["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(opt["scheduler"])
    rng = torch.load(folder / RNG_FILE, weights_only=True)["ranks"]
    return LoadedCheckpoint(folder, int(state["step"]), load_file(str(folder / TENSORS_FILE)), state, rng)
