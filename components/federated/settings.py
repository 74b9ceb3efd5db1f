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
AGGREGATIONS: tuple[str, ...] = ("weighted_mean", "trimmed_mean", "median")


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
    # robust aggregation (issue 22): every site's update (its reply minus the round's payload) is clipped in L2
    # norm before it is combined; see components.federated.server for the bounds
    aggregation: str = "weighted_mean"  # weighted_mean | trimmed_mean | median (coordinate-wise)
    trim_fraction: float = 0.2  # trimmed_mean: the share of sites dropped at each end, per coordinate
    clip_norm: float = 0.0  # a fixed L2 bound on each site's update (0: clip_factor x the round's median norm)
    clip_factor: float = 5.0  # the adaptive bound's factor (0 with clip_norm 0: no clipping)
    max_examples: int = 0  # a cap on a site's claimed example count (0: examples_factor x the round's median)
    examples_factor: float = 10.0  # the adaptive cap's factor (0 with max_examples 0: no cap)
    # client-level differential privacy (central: the server clips, sums and adds Gaussian noise)
    dp_noise_multiplier: float = 0.0  # sigma; > 0 turns DP on (or set dp_epsilon)
    dp_epsilon: float = 0.0  # a target epsilon for the whole run; sigma is solved for it (0: none)
    dp_delta: float = 1e-5
    # adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive Clipping"): clip_norm is
    # the initial bound, moved geometrically each round toward the dp_target_quantile of the sites' update norms
    dp_adaptive_clipping: bool = False
    dp_target_quantile: float = 0.5  # gamma: the share of updates the bound should leave unclipped (0.5: median)
    dp_clip_lr: float = 0.2  # eta: C <- C * exp(-eta * (noised unclipped share - gamma))
    dp_count_stddev: float = 0.0  # sigma_b: noise on the unclipped count (0: min_sites / 20, the paper's m / 20)
    secure_aggregation: bool = False  # Flower's SecAgg+: the server learns only the sum (components.federated.secagg)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"federated method {self.method!r} unknown; choose one of {', '.join(METHODS)}")
        if self.rounds_sparse < 0 or self.rounds_lora < 0 or self.total_rounds < 1:
            raise ValueError(f"need rounds >= 0 and at least one round, got {self.rounds_sparse}+{self.rounds_lora}")
        if self.method == "slora" and (self.rounds_sparse < 1 or self.rounds_lora < 1):
            raise ValueError("slora needs rounds_sparse >= 1 and rounds_lora >= 1")
        if not 0 < self.density <= 1 or self.rank < 1 or self.min_sites < 1:
            raise ValueError(f"bad federated settings: density={self.density}, rank={self.rank}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"federated aggregation {self.aggregation!r} unknown; choose one of "
                             f"{', '.join(AGGREGATIONS)}")  # fmt: skip
        if not 0 <= self.trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {self.trim_fraction}")
        if min(self.clip_norm, self.clip_factor, self.max_examples, self.examples_factor) < 0:
            raise ValueError("clip_norm, clip_factor, max_examples and examples_factor must be >= 0")
        if self.dp_noise_multiplier < 0 or self.dp_epsilon < 0 or not 0 < self.dp_delta < 1:
            raise ValueError(f"bad DP settings: noise multiplier {self.dp_noise_multiplier}, "
                             f"epsilon {self.dp_epsilon}, delta {self.dp_delta} (delta must be in (0, 1))")  # fmt: skip
        if self.dp_noise_multiplier > 0 and self.dp_epsilon > 0:
            raise ValueError("DP: set a noise multiplier or a target epsilon, not both")
        if self.dp and self.clip_norm <= 0:
            raise ValueError("DP needs a fixed clip_norm > 0 (the sensitivity of each site's update)")
        if self.secure_aggregation and self.aggregation != "weighted_mean":
            raise ValueError(f"secure aggregation sums the updates: aggregation {self.aggregation!r} needs each one")
        if self.dp and self.aggregation != "weighted_mean":
            raise ValueError(f"DP is accounted for the clipped mean only, not aggregation {self.aggregation!r}")
        if self.dp_adaptive_clipping:
            if not self.dp:
                raise ValueError("dp_adaptive_clipping needs DP on (dp_epsilon or dp_noise_multiplier)")
            if self.secure_aggregation:
                raise ValueError("dp_adaptive_clipping counts the updates under the bound: not with secure aggregation")
            if not 0 <= self.dp_target_quantile <= 1 or self.dp_clip_lr <= 0 or self.dp_count_stddev < 0:
                raise ValueError(f"bad adaptive clipping settings: dp_target_quantile {self.dp_target_quantile} "
                                 f"(must be in [0, 1]), dp_clip_lr {self.dp_clip_lr} (> 0), "
                                 f"dp_count_stddev {self.dp_count_stddev} (>= 0)")  # fmt: skip
            sigma, sigma_b = self.dp_sigma(), self.count_stddev
            if sigma >= 2 * sigma_b:
                raise ValueError(f"adaptive clipping: noise multiplier {sigma:.4g} needs dp_count_stddev > "
                                 f"{sigma / 2:.4g} (it is {sigma_b:.4g}; the count's noise is part of the privacy "
                                 f"budget); raise dp_count_stddev or lower the noise")  # fmt: skip

    @property
    def dp(self) -> bool:
        """Whether client-level differential privacy is on."""
        return self.dp_noise_multiplier > 0 or self.dp_epsilon > 0

    @property
    def count_stddev(self) -> float:
        """Adaptive clipping's noise on the unclipped count (sigma_b)."""
        return self.dp_count_stddev if self.dp_count_stddev > 0 else self.min_sites / 20

    def dp_sigma(self) -> float:
        """The run's (effective) noise multiplier: ``dp_noise_multiplier``, or the one Opacus' RDP accountant
        solves for ``dp_epsilon`` over ``total_rounds`` releases at sample rate 1 (0 without DP)."""
        if self.dp_noise_multiplier > 0 or self.dp_epsilon <= 0:
            return self.dp_noise_multiplier
        from opacus.accountants.utils import get_noise_multiplier

        return float(get_noise_multiplier(target_epsilon=self.dp_epsilon, target_delta=self.dp_delta,
                                          sample_rate=1.0, steps=self.total_rounds, accountant="rdp"))  # fmt: skip

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
