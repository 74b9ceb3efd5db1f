"""SLoRA's model-side pieces (METHODS.md §4): the shared random mask of the sparse stage, the sparse and low-rank
weight deltas that clients train, and the SVD initialisation of LoRA from the accumulated sparse update.

    idx = shared_mask((384, 384), density=0.01, seed=0, name="encoder.0.weight")   # same on every client
    delta = attach_sparse(linear, idx)           # linear.weight == W0 + scatter(idx, delta.values); values train
    a, b = svd_lora_init(delta_w, rank=8, scale=2.0)   # scale * b @ a = best rank-8 approximation of delta_w
    lora = attach_low_rank(linear, a, b, scale=2.0)    # linear.weight == W0 + 2.0 * b @ a; a and b train
    detach_delta(linear)                         # back to the plain weight W0 (or merge=True: W0 + delta)

Where it lives: beside the federated engine rather than in ``components/adapters/`` because a ClientApp starts a
fresh process every round in deployment, and ``components.adapters`` imports peft and transformers (seconds per
round on a small machine); this module needs torch only.

**The mask.** ``k = max(1, round(d * numel))`` distinct flat indices drawn uniformly without replacement and
sorted, from torch's CPU ``Generator`` (platform independent) seeded with the shared seed mixed with a hash of the
matrix name, so matrices of one shape get different masks and adding a matrix leaves the others' masks alone.

**The deltas** are ``torch.nn.utils.parametrize`` parametrizations of a module's weight, so they work on a plain
``nn.Linear`` and on the base layer inside a peft-wrapped one alike (in the retrain stage the adapted matrices
already sit inside peft's H-LoRA layers, and peft refuses to mix adapter kinds in one model). With dropout 0 the
low-rank forward equals peft's LoRA (``base(x) + scale * B(A(x))``) up to float rounding; the frozen original
weight stays in ``parametrizations.weight.original`` and gets no gradient.

**The SVD init.** With ``delta_w = U S Vᵀ``: ``B = U_r sqrt(S_r) / sqrt(scale)`` and ``A = sqrt(S_r) V_rᵀ /
sqrt(scale)``, so ``scale * B @ A`` is the best rank-r approximation of ``delta_w`` (Eckart-Young) and the base
goes back to W0. METHODS.md says "divided by the LoRA scale" without saying which factor; medtune splits
``1/scale`` evenly, which keeps A and B balanced (the paper's ``sqrt(S_r)`` split). The SVD runs in float64.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize


def mask_numel(shape: tuple[int, ...], density: float) -> int:
    """How many entries a mask of ``density`` keeps in a matrix of ``shape`` (at least one)."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"mask density must be in (0, 1], got {density}")
    numel = 1
    for size in shape:
        numel *= int(size)
    return max(1, min(numel, round(density * numel)))


def _name_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def shared_mask(shape: tuple[int, ...], density: float, seed: int, name: str) -> Tensor:
    """Sorted flat indices (int64) of the masked entries of the matrix ``name``: a pure function of its arguments."""
    k = mask_numel(shape, density)
    numel = 1
    for size in shape:
        numel *= int(size)
    gen = torch.Generator(device="cpu").manual_seed(_name_seed(seed, name))
    idx = torch.randperm(numel, generator=gen)[:k]
    return torch.sort(idx).values


def svd_lora_init(delta_w: Tensor, rank: int, scale: float) -> tuple[Tensor, Tensor]:
    """``(A, B)`` of shapes ``(rank, in)`` and ``(out, rank)`` with ``scale * B @ A`` the rank-r truncation."""
    if delta_w.ndim != 2:
        raise ValueError(f"svd_lora_init needs a matrix, got shape {tuple(delta_w.shape)}")
    if rank < 1 or scale <= 0:
        raise ValueError(f"svd_lora_init needs rank >= 1 and scale > 0, got rank={rank}, scale={scale}")
    out_f, in_f = delta_w.shape
    u, s, vh = torch.linalg.svd(delta_w.detach().to(torch.float64), full_matrices=False)
    r = min(rank, s.numel())
    root = torch.sqrt(s[:r])
    b = u[:, :r] * root / math.sqrt(scale)
    a = root[:, None] * vh[:r] / math.sqrt(scale)
    if r < rank:  # a matrix smaller than the rank: pad with zero directions so every client sees one shape
        b = torch.cat([b, b.new_zeros(out_f, rank - r)], dim=1)
        a = torch.cat([a, a.new_zeros(rank - r, in_f)], dim=0)
    return a.to(delta_w.dtype).contiguous(), b.to(delta_w.dtype).contiguous()


class SparseDelta(nn.Module):
    """``W -> W + scatter(idx, values)``; only ``values`` (one per masked entry) trains."""

    def __init__(self, idx: Tensor, values: Tensor | None = None):
        super().__init__()
        self.idx: Tensor
        self.register_buffer("idx", idx.to(torch.int64))
        init = torch.zeros(idx.numel()) if values is None else values.detach().clone().reshape(-1)
        if init.numel() != idx.numel():
            raise ValueError(f"sparse delta: {init.numel()} values for {idx.numel()} masked entries")
        self.values = nn.Parameter(init)

    def forward(self, weight: Tensor) -> Tensor:
        flat = weight.reshape(-1).index_add(0, self.idx, self.values.to(weight.dtype))
        return flat.view_as(weight)

    def dense(self, shape: torch.Size) -> Tensor:
        """The delta as a dense matrix (zeros off the mask)."""
        out = torch.zeros(shape, dtype=self.values.dtype).reshape(-1)
        out[self.idx] = self.values.detach()
        return out.view(shape)


class LowRankDelta(nn.Module):
    """``W -> W + scale * B @ A`` with ``A: (r, in)`` and ``B: (out, r)`` trainable: a LoRA update."""

    def __init__(self, a: Tensor, b: Tensor, scale: float):
        super().__init__()
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(f"low-rank delta: A {tuple(a.shape)} and B {tuple(b.shape)} do not compose")
        self.a = nn.Parameter(a.detach().clone())
        self.b = nn.Parameter(b.detach().clone())
        self.scale = float(scale)

    def forward(self, weight: Tensor) -> Tensor:
        return weight + self.scale * (self.b @ self.a).to(weight.dtype)


def _check_free(module: nn.Module, what: str) -> None:
    if parametrize.is_parametrized(module, "weight"):
        raise ValueError(f"{what}: {type(module).__name__}.weight already carries a delta; detach_delta first")


def attach_sparse(module: nn.Module, idx: Tensor, values: Tensor | None = None) -> SparseDelta:
    """Freeze ``module.weight`` at its value and train only the masked entries' delta (zeros unless ``values``)."""
    _check_free(module, "attach_sparse")
    delta = SparseDelta(idx, values)
    parametrize.register_parametrization(module, "weight", delta, unsafe=True)
    module.parametrizations.weight.original.requires_grad_(False)  # type: ignore[union-attr]
    return delta


def attach_low_rank(module: nn.Module, a: Tensor, b: Tensor, scale: float) -> LowRankDelta:
    """Freeze ``module.weight`` at its value and train a LoRA update ``scale * b @ a`` on top."""
    _check_free(module, "attach_low_rank")
    delta = LowRankDelta(a, b, scale)
    parametrize.register_parametrization(module, "weight", delta, unsafe=True)
    module.parametrizations.weight.original.requires_grad_(False)  # type: ignore[union-attr]
    return delta


def get_weight(module: nn.Module) -> Tensor:
    """The frozen original weight under a delta (or the plain weight when none is attached)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original  # type: ignore[union-attr,return-value]
    return module.weight  # type: ignore[return-value]


def detach_delta(module: nn.Module, *, merge: bool = False) -> None:
    """Remove the delta: keep the original weight, or with ``merge`` the weight with the delta added."""
    if parametrize.is_parametrized(module, "weight"):
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=merge)
