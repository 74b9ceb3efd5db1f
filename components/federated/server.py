"""The server side of every method, without transport: what goes down each round, which replies are valid, the
weighted average, and SLoRA's switch from sparse to LoRA rounds. Flower's strategy
(:mod:`components.federated.strategy`) and the in-process runner (:mod:`components.federated.inprocess`) both
drive this one class, so the benchmark measures the same aggregation the ServerApp runs.

    server = FederatedServer(settings, targets={"fc1.weight": (32, 16)}, heads={"out.weight": (4, 32)})
    down = server.payload()                          # {name: ndarray} for round server.round
    record = server.aggregate([Reply("site-0", up0, 40, {...}), Reply("site-1", up1, 60, {...})])
    server.final_deltas()                            # {name: dense ΔW} to merge into W0 at the end

Payload keys: ``<matrix>::values`` (sparse round: the masked entries of the accumulated ΔW, in mask order),
``<matrix>::A`` / ``<matrix>::B`` (LoRA rounds), ``<matrix>::delta`` (full fine-tuning) and ``<head>::delta``
(parameters every method trains densely, e.g. a classifier head). Everything is a delta from the shared W0 that
every client builds itself, so nothing but deltas ever travels.

Choices where METHODS.md is silent:

- **Aggregation.** FedAvg weighted by each site's example count, key by key (for LoRA, A and B are averaged
  separately, as SLoRA and FedAvg-LoRA do).
- **Rejected updates.** A reply whose keys differ from what was sent, whose shapes differ, or that holds NaN/Inf
  is rejected with a reason in the round record and the log, and never enters the average. A round with fewer
  than ``min_sites`` valid updates raises :class:`RoundFailed` (the global state is left unchanged).
- **The switch.** After the last sparse round the accumulated ΔW of each matrix is factorised by
  :func:`components.federated.slora.svd_lora_init`; the heads keep their stage-1 deltas.
- **FedAvg-LoRA's usual init.** A from Kaiming-uniform (a=√5, nn.Linear's and peft's default) under the shared
  seed, B = 0.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from components.federated.settings import FedSettings, Phase
from components.federated.slora import shared_mask, svd_lora_init

log = logging.getLogger("medtune.federated")

Shape = tuple[int, ...]


class RoundFailed(RuntimeError):
    """Too few valid updates arrived for a round."""


@dataclass(frozen=True)
class Reply:
    """One site's answer to a training round (the transport already stripped)."""

    site: str
    arrays: Mapping[str, np.ndarray]
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass
class RoundRecord:
    """What happened in one round: who was averaged in, who was not and why, bytes moved, per-site metrics."""

    round: int
    phase: str
    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    missing: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    seconds: float = 0.0
    sites: dict[str, dict[str, float]] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        """Example-weighted means of the accepted sites' metrics plus the round's counts."""
        out: dict[str, float] = {
            "bytes_down": float(self.bytes_down),
            "bytes_up": float(self.bytes_up),
            "sites_accepted": float(len(self.accepted)),
            "sites_rejected": float(len(self.rejected)),
            "sites_missing": float(self.missing),
            "seconds": self.seconds,
        }
        weights = {s: m.get("num_examples", 1.0) for s, m in self.sites.items() if s in self.accepted}
        total = sum(weights.values())
        keys = {k for s in weights for k in self.sites[s] if k != "num_examples"}
        for key in sorted(keys):
            have = [(self.sites[s][key], w) for s, w in weights.items() if key in self.sites[s]]
            if have and total > 0:
                out[key] = sum(v * w for v, w in have) / sum(w for _, w in have)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "phase": self.phase,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "missing": self.missing,
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "seconds": self.seconds,
            "sites": self.sites,
            "summary": self.summary(),
        }


def payload_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))


def check_update(arrays: Mapping[str, Any], expected: Mapping[str, Shape]) -> str | None:
    """Why an update cannot be averaged in (wrong keys, shape, dtype, NaN/Inf), or None when it can."""
    got, want = set(arrays), set(expected)
    if got != want:
        extra, lacking = sorted(got - want), sorted(want - got)
        parts = ([f"unexpected keys {extra[:3]}"] if extra else []) + (
            [f"missing keys {lacking[:3]}"] if lacking else []
        )
        return "wrong keys: " + "; ".join(parts)
    for key in sorted(want):
        value = arrays[key]
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
            return f"{key}: not a float array ({type(value).__name__} {getattr(value, 'dtype', '')})"
        if tuple(value.shape) != tuple(expected[key]):
            return f"{key}: shape {tuple(value.shape)}, expected {tuple(expected[key])}"
        if not np.isfinite(value).all():
            return f"{key}: holds NaN or Inf"
    return None


def weighted_average(updates: Sequence[tuple[Mapping[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """Key-by-key mean of ``(arrays, weight)`` pairs, in float64, returned as float32."""
    total = float(sum(w for _, w in updates))
    if not updates or total <= 0:
        raise ValueError("weighted_average needs at least one update with positive weight")
    keys = list(updates[0][0])
    out: dict[str, np.ndarray] = {}
    for k in keys:
        acc = np.zeros(np.shape(updates[0][0][k]), np.float64)
        for arrays, weight in updates:
            acc += np.asarray(arrays[k], dtype=np.float64) * weight
        out[k] = (acc / total).astype(np.float32)
    return out


def lora_init(shape: Shape, rank: int, seed: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The usual LoRA init: A Kaiming-uniform(a=√5) under the shared seed and the matrix name, B zero."""
    out_f, in_f = shape
    gen = torch.Generator().manual_seed(_stable(seed, name))
    bound = 1.0 / math.sqrt(in_f)  # kaiming_uniform_(a=sqrt(5)) on fan_in = in_f gives bound 1/sqrt(fan_in)
    a = (torch.rand(rank, in_f, generator=gen) * 2 - 1) * bound
    return a.numpy().astype(np.float32), np.zeros((out_f, rank), dtype=np.float32)


def _stable(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"lora-a:{seed}:{name}".encode()).digest()[:8], "little") >> 2


class FederatedServer:
    """The global state of one run and its round-by-round update (see the module docstring)."""

    def __init__(self, settings: FedSettings, targets: Mapping[str, Shape], heads: Mapping[str, Shape]):
        self.settings = settings
        self.targets = {k: tuple(v) for k, v in targets.items()}
        self.heads = {k: tuple(v) for k, v in heads.items()}
        bad = [k for k, v in self.targets.items() if len(v) != 2]
        if bad:
            raise ValueError(f"adapted parameters must be matrices: {bad}")
        self.round = 1
        self.history: list[RoundRecord] = []
        self.state: dict[str, np.ndarray] = {f"{k}::delta": np.zeros(v, np.float32) for k, v in self.heads.items()}
        self.masks: dict[str, np.ndarray] = {}
        self.accumulated: dict[str, np.ndarray] = {}  # SLoRA: each matrix's stage-1 ΔW, kept after the switch
        self._enter(settings.phase(1))

    # -- phases ------------------------------------------------------------------------------------------------------

    def _enter(self, phase: Phase) -> None:
        s = self.settings
        if phase == "sparse":
            for name, shape in self.targets.items():
                idx = shared_mask(shape, s.density, s.seed, name).numpy()
                self.masks[name] = idx
                self.state[f"{name}::values"] = np.zeros(idx.size, np.float32)
        elif phase == "full":
            for name, shape in self.targets.items():
                self.state[f"{name}::delta"] = np.zeros(shape, np.float32)
        elif phase == "lora" and s.method == "fedavg_lora":
            for name, shape in self.targets.items():
                self.state[f"{name}::A"], self.state[f"{name}::B"] = lora_init(shape, s.rank, s.seed, name)
        elif phase == "lora":  # SLoRA's switch: SVD of each accumulated sparse update
            for name in self.targets:
                self.accumulated[name] = self.sparse_dense(name)
                a, b = svd_lora_init(torch.from_numpy(self.accumulated[name]), s.rank, s.lora_scale)
                del self.state[f"{name}::values"]
                self.state[f"{name}::A"], self.state[f"{name}::B"] = a.numpy(), b.numpy()
            log.info(
                "SLoRA: LoRA rank %d initialised from the SVD of %d accumulated updates", s.rank, len(self.targets)
            )
        self.phase: Phase = phase

    def sparse_dense(self, name: str) -> np.ndarray:
        """The accumulated sparse update of matrix ``name`` as a dense ΔW (zeros off the mask)."""
        out = np.zeros(int(np.prod(self.targets[name])), np.float32)
        out[self.masks[name]] = self.state[f"{name}::values"]
        return out.reshape(self.targets[name])

    # -- rounds ------------------------------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.round > self.settings.total_rounds

    def payload(self) -> dict[str, np.ndarray]:
        """What every site receives this round (and must send back, same keys and shapes)."""
        return dict(self.state)

    def expected(self) -> dict[str, Shape]:
        return {k: tuple(v.shape) for k, v in self.state.items()}

    def aggregate(
        self,
        replies: Sequence[Reply],
        *,
        sent: int | None = None,
        failed: Mapping[str, str] | None = None,
        seconds: float = 0.0,
    ) -> RoundRecord:
        """Validate, average the valid updates into the global state, and move to the next round. ``failed`` are
        nodes that answered with an error instead of an update (recorded as rejected, with Flower's reason)."""
        record = RoundRecord(self.round, self.phase, seconds=seconds)
        failed = failed or {}
        sent = len(replies) + len(failed) if sent is None else sent
        record.missing = max(0, sent - len(replies) - len(failed))
        record.rejected.update({node: f"no update: {reason}" for node, reason in failed.items()})
        record.bytes_down = sent * payload_bytes(self.state)
        expected = self.expected()
        good: list[tuple[Mapping[str, np.ndarray], float]] = []
        for reply in replies:
            record.bytes_up += payload_bytes(reply.arrays)
            record.sites[reply.site] = {**{k: float(v) for k, v in reply.metrics.items()}}
            record.sites[reply.site]["num_examples"] = float(reply.num_examples)
            reason = check_update(reply.arrays, expected)
            if reason is None and reply.num_examples <= 0:
                reason = f"num_examples {reply.num_examples} <= 0"
            if reason is not None:
                record.rejected[reply.site] = reason
                log.warning("round %d: rejected the update of site %s: %s", self.round, reply.site, reason)
                continue
            record.accepted.append(reply.site)
            good.append((reply.arrays, float(reply.num_examples)))
        if len(good) < self.settings.min_sites:
            self.history.append(record)
            raise RoundFailed(
                f"round {self.round}: {len(good)} valid updates (rejected {record.rejected or 'none'}, "
                f"missing {record.missing}), fewer than min_sites={self.settings.min_sites}"
            )
        self.state = weighted_average(good)
        self.history.append(record)
        self.round += 1
        if not self.finished and self.settings.phase(self.round) != self.phase:
            self._enter(self.settings.phase(self.round))
        return record

    def final_deltas(self) -> dict[str, np.ndarray]:
        """Dense ΔW per adapted matrix and per head, to add to W0 (LoRA: ``scale * B @ A``)."""
        out: dict[str, np.ndarray] = {}
        for name in self.targets:
            if f"{name}::A" in self.state:
                a, b = self.state[f"{name}::A"], self.state[f"{name}::B"]
                out[name] = (self.settings.lora_scale * (b.astype(np.float64) @ a.astype(np.float64))).astype(
                    np.float32
                )
            elif f"{name}::values" in self.state:
                out[name] = self.sparse_dense(name)
            else:
                out[name] = self.state[f"{name}::delta"]
        for name in self.heads:
            out[name] = self.state[f"{name}::delta"]
        return out
