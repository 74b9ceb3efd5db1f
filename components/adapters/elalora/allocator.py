"""ElaLoRA's rank allocator: importance scores, the schedule, and prune/expand rounds (METHODS.md §2).

    allocator = RankAllocator.from_model(peft_model, optimizer)
    loss = peft_model(**batch).loss + allocator.regularizer()      # γ · mean(‖AAᵀ-I‖_F + ‖BᵀB-I‖_F), active slots
    loss.backward()
    optimizer.step()
    allocator.after_step(step)      # step = optimizer steps done (1-based); BEFORE scheduler.step() and zero_grad()
    scheduler.step(); optimizer.zero_grad()

What ``after_step`` does, in order:

1. **Bias correction of reset slots.** A slot whose optimizer moments were reset at optimizer step t0 should be
   updated as if Adam had started there (bias corrections ``1 - b^(t - t0)``), but torch's AdamW keeps one step
   counter per tensor, shared by all slots of a matrix. The update AdamW just applied to such a slot is therefore
   replaced by the one a fresh Adam would have made (closed form, from the slot's moments after the step and the
   group's lr/betas/eps): untouched slots keep AdamW's update exactly, reset slots get the correct one. Without this
   a new rank's first update is ``(1-b1)/sqrt(1-b2)`` ≈ 3.2 times too large (betas 0.9/0.999).
2. **Importance** (dynamic phase and warm-up only), per element w: ``I = |w · dL/dw|``,
   ``Ī ← b1 Ī + (1-b1) I``, ``Ū ← b2 Ū + (1-b2) |I - Ī|`` (the updated Ī, as peft's AdaLoRA), ``s = Ī · Ū``;
   rank i scores ``S_i = s(E_i) + mean_j s(A_ij) + mean_j s(B_ji)``.
3. **A round** every Δ steps after ``t_init`` up to ``total_step - t_final`` (:func:`reallocation_budget`):
   each matrix offers its ``min(k, r - 1)`` lowest-scoring active ranks that are out of their grace period (so
   never its last rank); the b lowest of the pool are pruned, the b highest earn their matrix one new rank each
   (a matrix can earn several). New ranks: :meth:`ElaLoraLayer.grow_slots` (orthogonalised, normalised, E = 0).
   Pruned and grown slots get zeroed optimizer moments (step handling as in 1.) and zeroed importance EMAs; every
   other slot keeps its moments; the optimizer and the learning-rate schedule are never rebuilt.

Choices where the paper is silent:

- **b when the pool is small.** Pruning and granting come from one pool, so b is capped at half the pool.
- **A full matrix** (all ``r_max`` slots active before the round) cannot earn a rank in that round; the next
  highest candidate of a matrix with room earns it instead. Grants and prunes are then cut to the same count, so
  the total active rank stays exactly constant.
- **Grace period.** A grown rank is not offered for pruning until more than ``grace`` steps have passed
  (``grace = 0`` means Δ: it survives at least the next round). Initial ranks have no grace.
- **Ties** in scores break by (module name, slot), so a round is deterministic.
- **Rounding of b_t**: half up (``floor(x + 0.5)``).
- The optimizer must be torch's ``Adam`` or ``AdamW`` without amsgrad or maximize (the moment handling reads
  and corrects their state).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from components.adapters.elalora.config import ElaLoraConfig
from components.adapters.elalora.layer import ElaLoraLayer

PEFT_PREFIX = "base_model.model."
_FORGET = 1e-7  # a reset slot's bias correction is dropped once b1^age and b2^age fall below this


def reallocation_budget(step: int, *, total_step: int, t_init: int, t_final: int, delta_t: int, b0: int) -> int:
    """Ranks moved at optimizer step ``step`` (1-based): ``round(b0 (1 - p³))`` on a round step, else 0.

    Rounds happen at ``t_init + Δ, t_init + 2Δ, ...`` up to ``total_step - t_final``; p is the progress through
    the dynamic phase ``(step - t_init) / (total_step - t_final - t_init)``."""
    end = total_step - t_final
    if step <= t_init or step > end or (step - t_init) % delta_t:
        return 0
    progress = (step - t_init) / max(1, end - t_init)
    return int(math.floor(b0 * (1.0 - progress**3) + 0.5))


def module_name(name: str) -> str:
    """A tuner layer's name relative to the model peft wrapped (``lm.base_model.model.x.y`` -> ``x.y``)."""
    return name.split(PEFT_PREFIX, 1)[-1]


def elalora_layers(model: nn.Module, adapter_name: str) -> dict[str, ElaLoraLayer]:
    """The ElaLoRA layers of ``model`` holding ``adapter_name``, by module name (see :func:`module_name`)."""
    layers = {
        module_name(name): module
        for name, module in model.named_modules()
        if isinstance(module, ElaLoraLayer) and adapter_name in module.elalora_A
    }
    if not layers:
        raise ValueError(f"no ElaLoRA layer holds an adapter named {adapter_name!r}")
    return layers


@dataclass
class Round:
    """One reallocation round: what moved (module name, slot) and the total active rank after it."""

    step: int
    budget: int
    pruned: list[tuple[str, int]] = field(default_factory=list)
    grown: list[tuple[str, int]] = field(default_factory=list)
    total_rank: int = 0


class RankAllocator:
    """Scores the ranks of one ElaLoRA adapter and moves them between matrices (see the module docstring)."""

    def __init__(
        self,
        layers: Mapping[str, ElaLoraLayer],
        optimizer: torch.optim.Optimizer | None,
        *,
        adapter_name: str = "default",
        total_step: int,
        t_init: int = 0,
        t_final: int = 0,
        delta_t: int = 10,
        b0: int = 4,
        k: int = 2,
        grace: int = 0,
        beta1: float = 0.85,
        beta2: float = 0.85,
        orth_reg_weight: float = 0.1,
        seed: int = 0,
    ) -> None:
        if total_step <= 0:
            raise ValueError(f"RankAllocator needs total_step > 0 (the schedule depends on it), got {total_step}")
        if t_init + t_final > total_step:
            raise ValueError(f"t_init ({t_init}) + t_final ({t_final}) exceed total_step ({total_step})")
        if optimizer is not None:
            for group in optimizer.param_groups:
                adam = isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW)
                if not adam or group.get("amsgrad") or group.get("maximize"):
                    raise TypeError(f"RankAllocator handles torch Adam/AdamW without amsgrad/maximize, got {optimizer}")
        self.layers = dict(sorted(layers.items()))
        self.optimizer = optimizer
        self.adapter = adapter_name
        self.total_step, self.t_init, self.t_final, self.delta_t = total_step, t_init, t_final, delta_t
        self.b0, self.k, self.grace = b0, k, grace or delta_t
        self.beta1, self.beta2, self.gamma = beta1, beta2, orth_reg_weight
        self.generator = torch.Generator().manual_seed(seed)
        self.sensitivity: dict[str, list[Tensor]] = {}
        self.uncertainty: dict[str, list[Tensor]] = {}
        for name, layer in self.layers.items():
            params = self._params(layer)
            self.sensitivity[name] = [torch.zeros_like(p, dtype=torch.float32) for p in params]
            self.uncertainty[name] = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        self.grown_at: dict[str, dict[int, int]] = {name: {} for name in self.layers}
        self.reset_at: dict[tuple[str, int], float] = {}  # (module, slot) -> optimizer step count at the reset
        self.config: ElaLoraConfig | None = None  # from_model: its rank_pattern follows every round (saved config)
        self.rounds: list[Round] = []
        self.trajectory: list[tuple[int, dict[str, int]]] = [(0, self.ranks())]
        self.budget_total = sum(self.ranks().values())

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        *,
        adapter_name: str | None = None,
        seed: int = 0,
    ) -> RankAllocator:
        """An allocator for the ElaLoRA adapter of a ``PeftModel`` (or any module holding one), schedule from its
        config (``total_step`` etc.)."""
        configs: Mapping[str, Any] = getattr(model, "peft_config", {}) or {}
        if adapter_name is None:
            names = [n for n, c in configs.items() if isinstance(c, ElaLoraConfig)]
            if len(names) != 1:
                raise ValueError(f"pass adapter_name: ElaLoRA adapters found: {names or 'none'}")
            adapter_name = names[0]
        config = configs.get(adapter_name)
        if not isinstance(config, ElaLoraConfig):
            raise ValueError(f"adapter {adapter_name!r} is not an ElaLoRA adapter of this model")
        allocator = cls(
            elalora_layers(model, adapter_name), optimizer, adapter_name=adapter_name, total_step=config.total_step,
            t_init=config.t_init, t_final=config.t_final, delta_t=config.delta_t, b0=config.b0, k=config.k,
            grace=config.grace, beta1=config.beta1, beta2=config.beta2, orth_reg_weight=config.orth_reg_weight,
            seed=seed,
        )  # fmt: skip
        allocator.config = config
        return allocator

    # -- per step ---------------------------------------------------------------------------------------------------

    def _params(self, layer: ElaLoraLayer) -> list[nn.Parameter]:
        return [layer.elalora_A[self.adapter], layer.elalora_E[self.adapter], layer.elalora_B[self.adapter]]

    def ranks(self) -> dict[str, int]:
        """Active rank per module now."""
        return {name: layer.active_rank(self.adapter) for name, layer in self.layers.items()}

    def regularizer(self) -> Tensor:
        """``γ · mean over matrices of (‖AAᵀ - I‖_F + ‖BᵀB - I‖_F)`` over the active slots."""
        terms = [layer.orthogonality(self.adapter) for layer in self.layers.values()]
        return self.gamma * torch.stack(terms).mean()

    def after_step(self, step: int) -> Round | None:
        """Call right after ``optimizer.step()`` (gradients still present), ``step`` = optimizer steps done."""
        if self.reset_at:
            self._correct_reset_slots()
        if step > self.total_step - self.t_final:
            return None  # ranks are frozen: the EMAs are no longer needed
        self._update_importance()
        if step <= self.t_init or (step - self.t_init) % self.delta_t:
            return None
        budget = reallocation_budget(
            step, total_step=self.total_step, t_init=self.t_init, t_final=self.t_final, delta_t=self.delta_t, b0=self.b0
        )
        return self._reallocate(step, budget)

    @torch.no_grad()
    def _update_importance(self) -> None:
        b1, b2 = self.beta1, self.beta2
        for name, layer in self.layers.items():
            for param, sens, unc in zip(
                self._params(layer), self.sensitivity[name], self.uncertainty[name], strict=True
            ):
                if param.grad is None:
                    continue
                ipt = (param.detach() * param.grad).abs().float()
                sens.mul_(b1).add_(ipt, alpha=1.0 - b1)
                unc.mul_(b2).add_((ipt - sens).abs(), alpha=1.0 - b2)

    def scores(self) -> dict[str, Tensor]:
        """Rank scores S_i per module (r_max,), -inf for inactive slots."""
        out: dict[str, Tensor] = {}
        for name, layer in self.layers.items():
            s_a, s_e, s_b = (
                sens * unc for sens, unc in zip(self.sensitivity[name], self.uncertainty[name], strict=True)
            )
            score = s_e + s_a.mean(dim=1) + s_b.mean(dim=0)
            out[name] = torch.where(layer.elalora_mask[self.adapter] > 0, score, torch.full_like(score, -math.inf))
        return out

    # -- a round ----------------------------------------------------------------------------------------------------

    def _pool(self, step: int) -> list[tuple[float, str, int]]:
        pool: list[tuple[float, str, int]] = []
        for name, score in self.scores().items():
            layer = self.layers[name]
            active = layer.active_slots(self.adapter).tolist()
            offer = min(self.k, len(active) - 1)
            eligible = [s for s in active if step - self.grown_at[name].get(s, -(10**9)) > self.grace]
            ranked = sorted(eligible, key=lambda s: (float(score[s]), s))[:offer]
            pool += [(float(score[s]), name, s) for s in ranked]
        return sorted(pool)

    @torch.no_grad()
    def _reallocate(self, step: int, budget: int) -> Round:
        pool = self._pool(step)
        budget = min(budget, len(pool) // 2)
        prune = pool[:budget]
        room = {
            name: layer.r_max[self.adapter] - layer.active_rank(self.adapter) for name, layer in self.layers.items()
        }
        grants: list[str] = []
        for _, name, _ in reversed(pool[budget:]):
            if len(grants) == budget:
                break
            if room[name] > 0:
                grants.append(name)
                room[name] -= 1
        prune = prune[: len(grants)]
        done = Round(step=step, budget=budget)
        for _, name, slot in prune:
            self.layers[name].prune_slots(self.adapter, [slot])
            self.grown_at[name].pop(slot, None)
            done.pruned.append((name, slot))
        for name in grants:
            (slot,) = self.layers[name].grow_slots(self.adapter, 1, generator=self.generator)
            self.grown_at[name][slot] = step
            done.grown.append((name, slot))
        for name, slot in [*done.pruned, *done.grown]:
            self._reset_slot(name, slot, track=(name, slot) in done.grown)
        ranks = self.ranks()
        done.total_rank = sum(ranks.values())
        if done.total_rank != self.budget_total:  # cannot happen by construction; fail loudly if it ever does
            raise RuntimeError(
                f"ElaLoRA round at step {step} changed the total rank {self.budget_total} -> {done.total_rank}"
            )
        self.rounds.append(done)
        self.trajectory.append((step, ranks))
        if self.config is not None:  # adapter_config.json then records the pattern that the masks hold
            self.config.rank_pattern = dict(ranks)
        return done

    def _slot_views(self, layer: ElaLoraLayer, slot: int) -> list[tuple[nn.Parameter, tuple[Any, ...]]]:
        a, e, b = self._params(layer)
        return [(a, (slot,)), (e, (slot,)), (b, (slice(None), slot))]

    def _reset_slot(self, name: str, slot: int, *, track: bool) -> None:
        """Zero the slot's importance EMAs and optimizer moments; a grown slot's updates get bias-corrected."""
        layer = self.layers[name]
        for index, (param, where) in enumerate(self._slot_views(layer, slot)):
            self.sensitivity[name][index][where] = 0.0
            self.uncertainty[name][index][where] = 0.0
            state = self.optimizer.state.get(param) if self.optimizer is not None else None
            if state:
                state["exp_avg"][where] = 0.0
                state["exp_avg_sq"][where] = 0.0
                if track:
                    self.reset_at[(name, slot)] = float(state["step"])
        if not track:
            self.reset_at.pop((name, slot), None)

    @torch.no_grad()
    def _correct_reset_slots(self) -> None:
        """Replace AdamW's update of reset slots by the update of an Adam started at the reset (module docstring)."""
        assert self.optimizer is not None
        groups = {id(p): g for g in self.optimizer.param_groups for p in g["params"]}
        for (name, slot), t0 in list(self.reset_at.items()):
            views = self._slot_views(self.layers[name], slot)
            age = 0.0
            for param, where in views:
                state = self.optimizer.state.get(param)
                if not state:
                    continue
                group = groups[id(param)]
                lr, (b1, b2), eps = float(group["lr"]), group["betas"], float(group["eps"])
                t = float(state["step"])
                age = t - t0
                if age <= 0:
                    continue
                m, v = state["exp_avg"][where], state["exp_avg_sq"][where]
                applied = (m / (1 - b1**t)) / (v.sqrt() / math.sqrt(1 - b2**t) + eps)
                wanted = (m / (1 - b1**age)) / (v.sqrt() / math.sqrt(1 - b2**age) + eps)
                param[where] += lr * (applied - wanted)
            betas = self.optimizer.param_groups[0]["betas"]
            if age > 0 and max(betas[0] ** age, betas[1] ** age) < _FORGET:
                del self.reset_at[(name, slot)]

    def summary(self) -> dict[str, Any]:
        """Rounds, moves and the final ranks, as plain JSON-able values."""
        return {
            "total_rank": self.budget_total,
            "rounds": len(self.rounds),
            "moved": sum(len(r.grown) for r in self.rounds),
            "ranks": self.ranks(),
        }
