"""The settings of one federated run, shared by the server, every client and both ways to run (simulation,
deployment). Flower carries them as a flat run config (``[tool.flwr.app.config]`` or ``flwr run -c``), so they
convert to and from a dict of plain values with Flower's dashed keys.

    s = FedSettings(method="slora", rounds_sparse=2, rounds_lora=3, task="mlp")
    s.phase(1), s.phase(3)                    # "sparse", "lora"
    FedSettings.from_config(s.to_config())    # round trip through a Flower run config
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Method = Literal["slora", "fedavg_lora", "fedavg_full"]
Phase = Literal["sparse", "lora", "full"]
METHODS: tuple[str, ...] = ("slora", "fedavg_lora", "fedavg_full")


@dataclass(frozen=True)
class FedSettings:
    """One run. ``method``: ``slora`` (sparse rounds -> SVD init -> LoRA rounds), ``fedavg_lora`` (LoRA rounds from
    the usual init) or ``fedavg_full`` (dense deltas of the adapted matrices). Every method runs
    ``rounds_sparse + rounds_lora`` rounds, so the baselines get the same number of rounds as SLoRA."""

    method: str = "slora"
    rounds_sparse: int = 2  # R1: SLoRA's sparse rounds
    rounds_lora: int = 3  # R2: SLoRA's LoRA rounds
    density: float = 0.01  # d: the shared mask's density
    rank: int = 8  # r: LoRA rank
    lora_scale: float = 2.0  # alpha / r (medtune's convention alpha = 2r)
    min_sites: int = 2  # fewer valid updates than this fails the round
    local_steps: int = 5  # optimizer steps per client per round
    lr: float = 1e-3  # client AdamW learning rate (fresh optimizer every round)
    batch_size: int = 16
    seed: int = 0  # the shared seed: mask, LoRA init, client data order
    round_timeout: float = 120.0  # seconds the server waits for a round's replies
    node_wait_timeout: float = 60.0  # seconds the server waits for min_sites nodes to connect
    task: str = "mlp"  # a name in components.federated.tasks.TASKS
    task_args: dict[str, Any] = field(default_factory=dict)  # the task's own settings (paths, sizes)
    out_dir: str = ""  # where the server writes history.json and the final deltas ("" = nowhere)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"federated method {self.method!r} unknown; choose one of {', '.join(METHODS)}")
        if self.rounds_sparse < 0 or self.rounds_lora < 0 or self.total_rounds < 1:
            raise ValueError(f"need rounds >= 0 and at least one round, got {self.rounds_sparse}+{self.rounds_lora}")
        if self.method == "slora" and (self.rounds_sparse < 1 or self.rounds_lora < 1):
            raise ValueError("slora needs rounds_sparse >= 1 and rounds_lora >= 1")
        if not 0 < self.density <= 1 or self.rank < 1 or self.min_sites < 1:
            raise ValueError(f"bad federated settings: density={self.density}, rank={self.rank}")

    @property
    def total_rounds(self) -> int:
        return self.rounds_sparse + self.rounds_lora

    def phase(self, server_round: int) -> Phase:
        """What round ``server_round`` (from 1) trains."""
        if self.method == "fedavg_full":
            return "full"
        if self.method == "slora" and server_round <= self.rounds_sparse:
            return "sparse"
        return "lora"

    def to_config(self) -> dict[str, Any]:
        """A flat Flower run config: dashed keys; ``task_args`` as JSON (Flower values are scalars)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name.replace("_", "-")] = json.dumps(value, sort_keys=True) if f.name == "task_args" else value
        return out

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FedSettings:
        """Read a Flower run config (dashed or underscored keys); unknown keys are an error naming them."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        unknown = []
        for key, value in config.items():
            name = str(key).replace("-", "_")
            if name not in known:
                unknown.append(str(key))
                continue
            if name == "task_args":
                kwargs[name] = json.loads(value) if isinstance(value, str) else dict(value)
                continue
            default = known[name].default
            kwargs[name] = type(default)(value) if isinstance(default, int | float | str) else value
        if unknown:
            raise ValueError(f"unknown federated run config keys: {', '.join(sorted(unknown))}")
        return cls(**kwargs)

    def to_flwr_args(self) -> list[str]:
        """``key=value`` items for ``flwr run -c`` (TOML values; strings as literal strings, which keep JSON's
        double quotes intact)."""
        items = []
        for key, value in self.to_config().items():
            if isinstance(value, str):
                if "'" in value or "\n" in value:
                    raise ValueError(f"run config {key}: a value with a single quote or newline cannot be passed")
                items.append(f"{key}='{value}'")
            else:
                items.append(f"{key}={json.dumps(value)}")
        return items

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
