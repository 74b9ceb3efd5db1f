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
- **Robust aggregation** (issue 22). Each accepted reply becomes an update ``u = reply - payload`` (all keys
  flattened into one vector) and is clipped to L2 norm ``C``: ``settings.clip_norm`` when set, else
  ``clip_factor`` times the round's lower median update norm (with two sites the smaller one: the server cannot
  tell which is honest, so the larger is bounded by the smaller). Each site's claimed example count is capped at
  ``max_examples``, else ``examples_factor`` times the round's lower median claim. ``weighted_mean`` (default)
  averages the clipped updates by the capped counts, so the global model moves by at most ``C`` in L2 norm per
  round whatever one site claims or sends; ``trimmed_mean`` drops ``floor(trim_fraction * n)`` sites at each end
  of every coordinate and ``median`` takes the coordinate-wise median (both unweighted, a minority of outliers
  cannot drag them). Without clipping and caps (``clip_factor = examples_factor = 0``) ``weighted_mean`` is the
  plain FedAvg of the replies.
- **Client-level differential privacy** (``settings.dp``: DP-FedAvg of McMahan et al. 2018, central model: the
  server sees the updates, the released global model is private). Clip every update to the fixed ``clip_norm``,
  sum, add ``N(0, (sigma * clip_norm)^2)`` per coordinate to the sum and divide by the number averaged (equal
  weights: a site's example count would be a sensitivity the clip does not bound). Adding or removing one site
  changes the sum by at most ``clip_norm``, so each round is a Gaussian mechanism with noise multiplier sigma;
  every site takes part in every round (sample rate 1, no amplification by subsampling) and Opacus' RDP
  accountant composes the rounds into the epsilon at ``dp_delta`` logged after each round
  (:class:`PrivacyLedger`). A target ``dp_epsilon`` is turned into sigma by Opacus' ``get_noise_multiplier`` for
  ``total_rounds`` releases. The noise comes from the OS's entropy, never from the shared seed (which every site
  knows). Not covered: the per-site metrics and example counts in the replies, and the evaluation round.
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
    clipped: list[str] = field(default_factory=list)  # sites whose update was scaled down to clip_bound
    clip_bound: float = math.inf
    example_cap: float = math.inf
    noise_std: float = 0.0  # DP: the Gaussian noise's standard deviation on the averaged update
    epsilon: float | None = None  # DP: the privacy spent after this round (Opacus RDP at dp_delta)
    next_clip_bound: float | None = None  # DP with adaptive clipping: the bound the next round clips at

    def summary(self) -> dict[str, float]:
        """Example-weighted means of the accepted sites' metrics plus the round's counts."""
        out: dict[str, float] = {
            "bytes_down": float(self.bytes_down),
            "bytes_up": float(self.bytes_up),
            "sites_accepted": float(len(self.accepted)),
            "sites_rejected": float(len(self.rejected)),
            "sites_missing": float(self.missing),
            "seconds": self.seconds,
            "sites_clipped": float(len(self.clipped)),
        }
        if math.isfinite(self.clip_bound):
            out["clip_bound"] = self.clip_bound
        if self.epsilon is not None:
            out["dp_epsilon"], out["dp_noise_std"] = self.epsilon, self.noise_std
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
            "clipped": self.clipped,
            "clip_bound": self.clip_bound if math.isfinite(self.clip_bound) else None,
            "example_cap": self.example_cap if math.isfinite(self.example_cap) else None,
            "noise_std": self.noise_std,
            "epsilon": self.epsilon,
            "next_clip_bound": self.next_clip_bound,
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


def flat_norm(arrays: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all of ``arrays`` as one vector (float64)."""
    return math.sqrt(sum(float(np.sum(np.square(np.asarray(a, np.float64)))) for a in arrays.values()))


def lower_median(values: Sequence[float]) -> float:
    """The lower median: a value of ``values`` itself, the smaller middle one when their count is even."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def combine(updates: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float], how: str, trim: float = 0.0
            ) -> dict[str, np.ndarray]:  # fmt: skip
    """Key by key, in float64: the ``weights``-weighted mean, the coordinate-wise trimmed mean (``trim`` of the
    updates dropped at each end) or the coordinate-wise median of ``updates``."""
    out: dict[str, np.ndarray] = {}
    for key in updates[0]:
        stack = np.stack([np.asarray(u[key], np.float64) for u in updates])
        if how == "weighted_mean":
            w = np.asarray(weights, np.float64).reshape((-1,) + (1,) * (stack.ndim - 1))
            out[key] = (stack * w).sum(axis=0) / float(np.sum(weights))
        elif how == "trimmed_mean":
            cut = int(math.floor(trim * len(updates)))
            out[key] = np.sort(stack, axis=0)[cut : len(updates) - cut].mean(axis=0)
        elif how == "median":
            out[key] = np.median(stack, axis=0)
        else:
            raise ValueError(f"unknown aggregation {how!r}")
    return out


class PrivacyLedger:
    """The privacy spent so far by a DP run: Opacus' RDP accountant over one Gaussian release per round.

    With adaptive clipping (Andrew et al. 2021) each round releases two things: the noised sum of the clipped
    updates and the noised count of updates within the bound. The paper's Theorem 1 (as Flower's
    ``compute_adaptive_noise_params`` and TensorFlow Privacy's quantile estimator apply it): noise ``sigma_u * C`` on
    the sum of updates (sensitivity C) and ``sigma_b`` on the count of centred bits ``b_i - 1/2`` (sensitivity 1/2,
    so noise multiplier ``2 * sigma_b``) together are one Gaussian mechanism of noise multiplier ``sigma`` with
    ``sigma**-2 = sigma_u**-2 + (2 * sigma_b)**-2``. So the accountant steps with the run's ``sigma`` (configured,
    or solved for the target epsilon) and the updates get the larger ``sigma_u``; the count's noise costs no extra
    epsilon beyond that, it is paid for by the extra update noise."""

    def __init__(self, settings: FedSettings):
        from opacus.accountants import RDPAccountant

        self.delta = settings.dp_delta
        self.noise_multiplier = settings.dp_sigma()  # sigma: what the accountant composes
        self.clip_norm = settings.clip_norm  # the bound of the next release (moves under adaptive clipping)
        self.initial_clip_norm = settings.clip_norm
        self.adaptive = settings.dp_adaptive_clipping
        self.target_quantile, self.clip_lr = settings.dp_target_quantile, settings.dp_clip_lr
        self.count_stddev = settings.count_stddev if self.adaptive else 0.0
        self.update_noise_multiplier = (
            (self.noise_multiplier**-2 - (2 * self.count_stddev) ** -2) ** -0.5 if self.adaptive
            else self.noise_multiplier
        )  # fmt: skip
        self.accountant = RDPAccountant()

    def adapt(self, unclipped: int, sites: int, noise: np.random.Generator) -> tuple[float, float]:
        """Andrew et al.'s geometric update after a round that clipped ``sites`` updates at ``self.clip_norm`` and
        left ``unclipped`` of them within it: ``C <- C * exp(-clip_lr * (b - target_quantile))`` with ``b`` the
        noised unclipped share (count + N(0, count_stddev^2), over ``sites``). Returns (b, the new bound)."""
        share = (unclipped + float(noise.normal(0.0, self.count_stddev))) / sites
        self.clip_norm = self.clip_norm * math.exp(-self.clip_lr * (share - self.target_quantile))
        return share, self.clip_norm

    def step(self) -> float:
        """Record one release; the epsilon spent so far."""
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=1.0)
        return self.epsilon

    @property
    def releases(self) -> int:
        return sum(n for _, _, n in self.accountant.history)

    @property
    def epsilon(self) -> float:
        return float(self.accountant.get_epsilon(self.delta)) if self.accountant.history else 0.0

    def to_json(self) -> dict[str, Any]:
        out = {"mechanism": "client-level DP-FedAvg (central Gaussian)", "accountant": "opacus RDP",
               "noise_multiplier": self.noise_multiplier, "clip_norm": self.initial_clip_norm, "delta": self.delta,
               "sample_rate": 1.0, "releases": self.releases, "epsilon": self.epsilon}  # fmt: skip
        if self.adaptive:
            out["adaptive_clipping"] = {
                "method": "Andrew et al. 2021 (geometric update toward a target quantile, noised count)",
                "update_noise_multiplier": self.update_noise_multiplier, "count_stddev": self.count_stddev,
                "target_quantile": self.target_quantile, "clip_lr": self.clip_lr, "final_clip_norm": self.clip_norm,
            }  # fmt: skip
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

    def __init__(
        self,
        settings: FedSettings,
        targets: Mapping[str, Shape],
        heads: Mapping[str, Shape],
        *,
        noise: np.random.Generator | None = None,
    ):
        self.settings = settings
        self.privacy = PrivacyLedger(settings) if settings.dp else None
        self._noise = noise or np.random.default_rng()  # OS entropy; tests pass a seeded generator
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
        good: list[tuple[Mapping[str, np.ndarray], int]] = []
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
            good.append((reply.arrays, reply.num_examples))
        if len(good) < self.settings.min_sites:
            self.history.append(record)
            raise RoundFailed(
                f"round {self.round}: {len(good)} valid updates (rejected {record.rejected or 'none'}, "
                f"missing {record.missing}), fewer than min_sites={self.settings.min_sites}"
            )
        self.state = self._combine(good, record)
        return self._advance(record)

    def _advance(self, record: RoundRecord) -> RoundRecord:
        self.history.append(record)
        self.round += 1
        if not self.finished and self.settings.phase(self.round) != self.phase:
            self._enter(self.settings.phase(self.round))
        return record

    def apply_aggregate(
        self,
        update: Mapping[str, np.ndarray],
        *,
        sites: Mapping[str, Mapping[str, float]],
        sent: int,
        failed: Mapping[str, str] | None = None,
        seconds: float = 0.0,
    ) -> RoundRecord:
        """Secure aggregation: add the sites' weighted mean ``update`` (all the server sees) to the state, after
        validating it (keys, shapes, NaN/Inf and, with ``clip_norm``, its norm: a mean of clipped updates cannot
        exceed the bound). ``sites`` holds the per-site metrics that travel in the clear."""
        record = RoundRecord(self.round, self.phase, seconds=seconds)
        failed = failed or {}
        record.sites = {site: dict(m) for site, m in sites.items()}
        record.accepted = sorted(sites)
        record.rejected.update({node: f"no update: {reason}" for node, reason in failed.items()})
        record.missing = max(0, sent - len(sites) - len(failed))
        record.bytes_down = sent * payload_bytes(self.state)
        record.bytes_up = len(sites) * payload_bytes(update)
        reason = check_update(update, self.expected())
        bound = self.settings.clip_norm
        if reason is None and bound > 0:
            slack = 4.0 * bound / (1 << 21) * math.sqrt(sum(np.size(v) for v in update.values()))  # quantization
            record.clip_bound = bound
            if (norm := flat_norm(update)) > bound * (1 + 1e-6) + slack:
                reason = f"the aggregate's norm {norm:.4g} exceeds clip_norm {bound:g}: a site did not clip"
        if reason is None and len(sites) < self.settings.min_sites:
            reason = f"{len(sites)} sites in the sum, fewer than min_sites={self.settings.min_sites}"
        if reason is not None:
            self.history.append(record)
            raise RoundFailed(f"round {self.round}: secure aggregate refused: {reason}")
        mean = {k: np.asarray(update[k], np.float64) for k in self.state}
        if self.privacy is not None:
            std = self.privacy.noise_multiplier * bound / len(sites)
            for key in mean:
                mean[key] = mean[key] + self._noise.normal(0.0, std, size=mean[key].shape)
            record.noise_std, record.epsilon = std, self.privacy.step()
        self.state = {k: (self.state[k].astype(np.float64) + mean[k]).astype(np.float32) for k in self.state}
        return self._advance(record)

    def adopt(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Take ``arrays`` as this round's global state: what a Flower strategy wrapper (e.g. central DP noise)
        made of the state this server returned. Keys and shapes must be this round's."""
        reason = check_update(arrays, self.expected())
        if reason is not None:
            raise ValueError(f"round {self.round}: the arrays handed to the strategy do not fit: {reason}")
        self.state = {k: np.asarray(arrays[k], np.float32).copy() for k in self.state}

    def clip_bound(self, norms: Sequence[float]) -> float:
        """This round's L2 bound on one site's update (``inf``: no clipping)."""
        s = self.settings
        if self.privacy is not None:  # DP: the ledger's bound (clip_norm, or where adaptive clipping moved it)
            return self.privacy.clip_norm
        if s.clip_norm > 0:
            return s.clip_norm
        return s.clip_factor * lower_median(norms) if s.clip_factor > 0 else math.inf

    def example_cap(self, claims: Sequence[int]) -> float:
        """This round's cap on one site's claimed example count (``inf``: none)."""
        s = self.settings
        if s.max_examples > 0:
            return float(s.max_examples)
        return s.examples_factor * lower_median([float(c) for c in claims]) if s.examples_factor > 0 else math.inf

    def _combine(self, good: Sequence[tuple[Mapping[str, np.ndarray], int]], record: RoundRecord
                 ) -> dict[str, np.ndarray]:  # fmt: skip
        """The next global state from the valid replies: clip, cap, aggregate (and with DP, add the noise)."""
        s = self.settings
        updates = [{k: np.asarray(a[k], np.float64) - self.state[k] for k in self.state} for a, _ in good]
        norms = [flat_norm(u) for u in updates]
        bound = self.clip_bound(norms)
        for site, u, norm in zip(record.accepted, updates, norms, strict=True):
            record.sites[site]["update_norm"] = norm
            if norm > bound:
                for key in u:
                    u[key] *= bound / norm
                record.clipped.append(site)
        record.clip_bound = bound
        if self.privacy is not None:  # equal weights; noise of sigma * C on the sum, i.e. / n on the mean
            mean = combine(updates, [1.0] * len(updates), "weighted_mean")
            std = self.privacy.update_noise_multiplier * bound / len(updates)
            for key in mean:
                mean[key] = mean[key] + self._noise.normal(0.0, std, size=mean[key].shape)
            record.noise_std = std
            if self.privacy.adaptive:  # the next round's bound, from this round's noised unclipped count
                share, record.next_clip_bound = self.privacy.adapt(
                    sum(n <= bound for n in norms), len(updates), self._noise
                )
                log.info("round %d: adaptive clipping: noised unclipped share %.3f, clip norm %.4g -> %.4g",
                         self.round, share, bound, record.next_clip_bound)  # fmt: skip
            record.epsilon = self.privacy.step()
        else:
            cap = self.example_cap([n for _, n in good])
            weights = [min(float(n), cap) for _, n in good]
            record.example_cap = cap
            mean = combine(updates, weights, s.aggregation, s.trim_fraction)
        return {k: (self.state[k].astype(np.float64) + mean[k]).astype(np.float32) for k in self.state}

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
