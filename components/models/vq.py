"""The VQ image tokenizer of the generation path (METHODS.md §1, "Generation path"; issue 4, item 3).

A small VQ-VAE that medtune trains itself on the dataset's images: a conv encoder that downsamples by
``downsample`` (f), a codebook of ``codebook_size`` (K) entries of ``code_dim`` (D), and a conv decoder. An image
becomes ``(image_size / f)**2`` code ids (row-major), which the LLM emits as tokens; the decoder turns exactly that
many ids back into an image::

    from components.models.vq import VQConfig, VQTokenizer, load_dataset_images, train_vq
    images = load_dataset_images(Path("data/vlhealth"))          # (N, 1, 64, 64) in [0, 1]
    tok, metrics = train_vq(images, VQConfig(), steps=1000, num_threads=1)  # ~30 s on one CPU core
    tok.save(Path("models/vq"))
    tok = VQTokenizer.load(Path("models/vq"))
    codes = tok.encode(images[:4])                             # (4, 64) ids in [0, 256)
    recon = tok.decode(codes)                                  # (4, 1, 64, 64) in [0, 1]

or from the shell, on a built VL-Health folder (train split only)::

    python -m components.models.vq data/vlhealth models/vq --steps 1000

What was chosen where METHODS.md is silent:

- **Scale.** HealthGPT uses a pretrained VQGAN (f = 8, 8,192 codes, 256 px -> 32x32 = 1,024 tokens). medtune
  trains on CPU with a tiny LM and 64 px images, so the default is f = 8 with K = 256 codes of D = 32 (64 px -> 8x8
  = 64 tokens per image; f = 4 gives 16x16 = 256 tokens). No adversarial or perceptual loss (the "GAN" of
  VQGAN): they cost more CPU than they return at this size.
- **Quantiser.** Nearest code by Euclidean distance, straight-through gradients, commitment loss
  ``beta * ||z_e - sg(e)||^2`` (beta = 0.25, van den Oord et al., 2017). The codebook is not trained by gradient but
  by exponential moving averages of the assigned encoder outputs (decay 0.99, Laplace smoothing; Razavi et al.,
  2019). The first training batch seeds every code from encoder outputs; afterwards, every ``restart_every``
  training steps, each code that no encoder output picked in that window is re-seeded from an encoder output of
  the current batch, drawn with probability proportional to its quantisation error (so dead codes move to where
  the codebook fits worst, as in k-means++). This keeps most of the codebook in use.
- **Network.** ReLU conv stacks without normalisation layers (as the original VQ-VAE): one stride-2 4x4 conv per
  halving, the width doubling towards the latent grid (``hidden`` at the grid, never below 16), ``res_blocks``
  residual blocks at the grid; the decoder mirrors it with 4x4 transposed convs. Inputs are centred (x - 0.5); the
  output is clamped to [0, 1] with a straight-through gradient, so ``forward`` returns valid images and still trains.
- **Training.** Adam, MSE reconstruction loss (the metric is PSNR; L1 measured 1.9 dB worse and no better on SSIM), 5%
  linear warm-up then cosine decay to 10% of ``lr``; batches of 16 drawn by a seeded permutation. On CPU the same
  seed gives the same weights (within one torch build and thread count).
- **Measured** (default config, batch 16, one thread of a shared 2-core CPU; process CPU seconds; PSNR dB / SSIM
  / codebook use on the training images, then on held-out images). Phantom renders (192 CT/MRI slices, 48
  subjects, with their noise; held out: 12 new subjects): 250 steps, 8 s: 24.8 / 0.64 / 100%; 500 steps, 16 s:
  26.7 / 0.74; 1,000 steps, 32 s: 28.5 / 0.80 / 100% (held out 28.1 / 0.79); 1,800 steps, 60 s: 30.6 / 0.84 /
  100% (held out 29.9 / 0.83). The unit tests' ellipse-and-blob generator at 64 px (256 images): 1,800 steps,
  62 s: 27.0 / 0.80 (held out 26.7 / 0.80). At equal CPU time batch 16 beat batch 32 by 1.4 dB on the phantoms;
  wider high-resolution layers, resize-conv upsampling, SiLU, D = 16 and lr 4e-3 did not pay per second.
  Threads: with a second thread torch spin-waits whenever another process holds the other core (200 steps: 78 s
  with two threads against 6 s with one, on a loaded machine), so pass ``num_threads=1`` on shared machines.
- **Files.** ``model.safetensors`` (weights and codebook buffers, no pickle) and ``vq_config.json``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "vq_config.json"
FORMAT = "medtune-vq/1"
RECON_LOSSES = ("mse", "l1")


@dataclass(frozen=True)
class VQConfig:
    """Shape of the tokenizer. Plain values; validated on construction."""

    image_size: int = field(default=64, metadata={"help": "Images are image_size x image_size pixels."})
    channels: int = field(default=1, metadata={"help": "1 (grey) or 3 (RGB)."})
    downsample: int = field(default=8, metadata={"help": "Downsampling factor f (a power of two): grid = size / f."})
    codebook_size: int = field(default=256, metadata={"help": "Number of codes K (new LM tokens)."})
    code_dim: int = field(default=32, metadata={"help": "Dimension D of each code vector."})
    hidden: int = field(default=64, metadata={"help": "Conv width at the latent grid (halved per level above)."})
    beta: float = field(default=0.25, metadata={"help": "Commitment loss weight."})
    ema_decay: float = field(default=0.99, metadata={"help": "EMA decay of the codebook statistics."})
    res_blocks: int = field(default=2, metadata={"help": "Residual blocks at the latent grid, in each half."})
    restart_every: int = field(
        default=20, metadata={"help": "Re-seed codes unused for this many training steps (0: never)."}
    )
    recon_loss: str = field(default="mse", metadata={"help": "Reconstruction loss: 'mse' or 'l1'."})

    def __post_init__(self) -> None:
        f = self.downsample
        if self.channels not in (1, 3):
            raise ValueError(f"VQConfig.channels must be 1 or 3, got {self.channels}")
        if f < 2 or f & (f - 1):
            raise ValueError(f"VQConfig.downsample must be a power of two >= 2, got {f}")
        if self.image_size < f or self.image_size % f:
            raise ValueError(f"VQConfig.image_size ({self.image_size}) must be a multiple of downsample ({f})")
        for name in ("codebook_size", "code_dim", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"VQConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.res_blocks < 0 or self.restart_every < 0:
            raise ValueError("VQConfig.res_blocks and VQConfig.restart_every must be >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"VQConfig.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.recon_loss not in RECON_LOSSES:
            raise ValueError(f"VQConfig.recon_loss must be one of {RECON_LOSSES}, got {self.recon_loss!r}")

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.downsample
        return side, side

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VQConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown VQConfig keys {unknown}; known: {sorted(known)}")
        return cls(**data)


class _ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


def _widths(config: VQConfig) -> list[int]:
    """Conv width per level, from full resolution (level 0) to the latent grid (level log2 f)."""
    levels = int(math.log2(config.downsample))
    return [max(16, config.hidden >> (levels - i)) for i in range(levels + 1)]


def _encoder(config: VQConfig) -> nn.Sequential:
    w = _widths(config)
    layers: list[nn.Module] = [nn.Conv2d(config.channels, w[0], 3, padding=1)]
    for i in range(len(w) - 1):
        layers += [nn.ReLU(), nn.Conv2d(w[i], w[i + 1], 4, stride=2, padding=1)]
    layers += [_ResBlock(w[-1]) for _ in range(config.res_blocks)]
    layers += [nn.ReLU(), nn.Conv2d(w[-1], config.code_dim, 1)]
    return nn.Sequential(*layers)


def _decoder(config: VQConfig) -> nn.Sequential:
    w = _widths(config)
    layers: list[nn.Module] = [nn.Conv2d(config.code_dim, w[-1], 3, padding=1)]
    layers += [_ResBlock(w[-1]) for _ in range(config.res_blocks)]
    for i in range(len(w) - 1, 0, -1):
        layers += [nn.ReLU(), nn.ConvTranspose2d(w[i], w[i - 1], 4, stride=2, padding=1)]
    layers += [nn.ReLU(), nn.Conv2d(w[0], config.channels, 3, padding=1)]
    return nn.Sequential(*layers)


class EMAQuantizer(nn.Module):
    """Nearest-code quantiser with an EMA-updated codebook and dead-code restarts (see the module docstring).

    All state is in buffers, so ``state_dict`` (and safetensors) carries it. Statistics change only in training
    mode, inside ``forward``; ``quantize`` never changes anything.
    """

    def __init__(self, size: int, dim: int, *, beta: float, decay: float, restart_every: int) -> None:
        super().__init__()
        self.size, self.dim, self.beta, self.decay, self.restart_every = size, dim, beta, decay, restart_every
        self.eps = 1e-5
        self.register_buffer("codebook", torch.randn(size, dim) * 0.1)
        self.register_buffer("ema_count", torch.ones(size))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("window_usage", torch.zeros(size))  # assignments since the last restart check
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training steps seen; 0 = not seeded
        self.codebook: Tensor
        self.ema_count: Tensor
        self.ema_sum: Tensor
        self.window_usage: Tensor
        self.steps: Tensor

    def distances(self, flat: Tensor) -> Tensor:
        """Squared Euclidean distances (N, K) between vectors (N, D) and the codes."""
        e = self.codebook
        return (flat * flat).sum(1, keepdim=True) - 2.0 * flat @ e.t() + (e * e).sum(1)[None, :]

    def quantize(self, flat: Tensor) -> Tensor:
        """Nearest code id for each vector of (N, D); changes no state."""
        return self.distances(flat).argmin(dim=1)

    def forward(self, flat: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(N, D) encoder outputs -> straight-through quantised vectors (N, D), commitment loss, code ids (N,)."""
        if self.training and int(self.steps) == 0:
            self._seed(flat.detach(), torch.ones(flat.shape[0]), torch.arange(self.size), generator)
        dist = self.distances(flat.detach())
        min_dist, idx = dist.min(dim=1)
        q = self.codebook[idx]
        loss = self.beta * F.mse_loss(flat, q)
        if self.training:
            self._update(flat.detach(), idx, min_dist, generator)
        return flat + (q - flat).detach(), loss, idx

    @torch.no_grad()
    def _update(self, flat: Tensor, idx: Tensor, min_dist: Tensor, generator: torch.Generator | None) -> None:
        onehot = F.one_hot(idx, self.size).to(flat.dtype)  # (N, K)
        counts = onehot.sum(0)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (n + self.size * self.eps) * n  # Laplace: no division by 0
        self.codebook.copy_(self.ema_sum / smoothed[:, None])
        self.window_usage.add_(counts)
        self.steps.add_(1)
        if self.restart_every and int(self.steps) % self.restart_every == 0:
            dead = torch.nonzero(self.window_usage == 0).flatten()
            if dead.numel():
                self._seed(flat, min_dist.clamp_min(0), dead, generator)
            self.window_usage.zero_()

    @torch.no_grad()
    def _seed(self, flat: Tensor, weight: Tensor, codes: Tensor, generator: torch.Generator | None) -> None:
        """Set ``codes`` to encoder outputs drawn with probability proportional to ``weight``."""
        weight = weight.detach().cpu()  # drawn on the CPU: the generator is a CPU one
        if float(weight.sum()) <= 0:
            weight = torch.ones_like(weight)
        pick = torch.multinomial(weight, codes.numel(), replacement=codes.numel() > flat.shape[0], generator=generator)
        pick, codes = pick.to(flat.device), codes.to(flat.device)
        self.codebook[codes] = flat[pick]
        self.ema_count[codes] = 1.0
        self.ema_sum[codes] = flat[pick]


class VQTokenizer(nn.Module):
    """Images in [0, 1] <-> code ids on a (image_size / f)**2 grid. See the module docstring."""

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = config
        self.grid: tuple[int, int] = config.grid
        self.num_codes_per_image: int = self.grid[0] * self.grid[1]
        self.encoder = _encoder(config)
        self.quantizer = EMAQuantizer(
            config.codebook_size,
            config.code_dim,
            beta=config.beta,
            decay=config.ema_decay,
            restart_every=config.restart_every,
        )
        self.decoder = _decoder(config)

    # -- shapes -------------------------------------------------------------------------------------------
    def _check_images(self, images: Tensor) -> Tensor:
        c, s = self.config.channels, self.config.image_size
        if not isinstance(images, Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != (c, s, s):
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"expected images of shape (B, {c}, {s}, {s}) in [0, 1], got {shape}")
        return images.to(torch.float32)

    def _latent(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> encoder outputs flattened row-major to (B * h * w, D)."""
        z = self.encoder(self._check_images(images) - 0.5)
        return z.permute(0, 2, 3, 1).reshape(-1, self.config.code_dim)

    def _render(self, vectors: Tensor, batch: int) -> Tensor:
        """(B * h * w, D) code vectors -> images (B, C, H, W), clamped to [0, 1] with a straight-through gradient."""
        h, w = self.grid
        z = vectors.reshape(batch, h, w, self.config.code_dim).permute(0, 3, 1, 2)
        x = self.decoder(z) + 0.5
        return x + (x.clamp(0.0, 1.0) - x).detach()

    # -- public API -------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """(B, C, H, W) in [0, 1] -> (B, h * w) code ids (int64), row-major over the grid."""
        idx = self.quantizer.quantize(self._latent(images))
        return idx.reshape(images.shape[0], self.num_codes_per_image)

    @torch.no_grad()
    def decode(self, codes: Tensor | Iterable[Iterable[int]]) -> Tensor:
        """(B, h * w) code ids -> (B, C, H, W) images in [0, 1]. Also takes one image's (h * w,) ids or a
        row-major (B, h, w) grid. Anything but exactly the grid's count of ids per image, or an id outside the
        codebook, raises ValueError."""
        ids = torch.as_tensor(codes) if not isinstance(codes, Tensor) else codes
        n, (h, w), k = self.num_codes_per_image, self.grid, self.config.codebook_size
        if ids.ndim == 1:  # one image's codes, as the LM emits them
            ids = ids[None]
        if ids.ndim == 3:  # (B, h, w): already laid out on the grid
            if tuple(ids.shape[1:]) != (h, w):
                raise ValueError(f"expected {n} codes ({h}x{w} grid), got a {ids.shape[1]}x{ids.shape[2]} grid")
            ids = ids.reshape(ids.shape[0], n)
        if ids.ndim != 2:
            raise ValueError(f"expected code ids of shape (B, {n}) or (B, {h}, {w}), got shape {tuple(ids.shape)}")
        if ids.shape[1] != n:
            raise ValueError(f"expected {n} codes ({h}x{w} grid), got {ids.shape[1]}")
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"code ids must be integers, got dtype {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= k):
            raise ValueError(f"code ids must lie in [0, {k}), got values in [{int(ids.min())}, {int(ids.max())}]")
        ids = ids.to(device=self.quantizer.codebook.device, dtype=torch.long)
        return self._render(self.quantizer.codebook[ids.reshape(-1)], ids.shape[0])

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Images -> (reconstruction in [0, 1], commitment loss, code ids (B, h * w)). In training mode this also
        updates the codebook (EMA, restarts drawn with ``generator``)."""
        flat = self._latent(images)
        q, vq_loss, idx = self.quantizer(flat, generator)
        return self._render(q, images.shape[0]), vq_loss, idx.reshape(images.shape[0], self.num_codes_per_image)

    # -- files -----------------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Write ``model.safetensors`` and ``vq_config.json`` into ``folder`` (created; files replaced atomically)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        _atomic_write(folder / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
        text = json.dumps({"format": FORMAT, "config": asdict(self.config)}, indent=2, sort_keys=True) + "\n"
        _atomic_write(folder / CONFIG_FILE, lambda p: p.write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls, folder: Path) -> VQTokenizer:
        """Read a folder written by :meth:`save`; a missing or corrupt folder or file raises an error naming it.
        The model comes back in eval mode."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"VQ tokenizer folder {folder} does not exist (train one with train_vq and save)")
        cfg_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for path in (cfg_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"VQ tokenizer folder {folder} has no {path.name}")
        try:
            raw = json.loads(cfg_path.read_text(encoding="utf-8"))
            if not isinstance(raw, dict) or raw.get("format") != FORMAT or not isinstance(raw.get("config"), dict):
                raise ValueError(f"expected {{'format': {FORMAT!r}, 'config': {{...}}}}")
            config = VQConfig.from_dict(raw["config"])
        except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"{cfg_path} is not a valid VQ tokenizer config: {e}") from None
        try:
            state = load_file(str(weights_path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ValueError(f"{weights_path} is corrupt or not a safetensors file: {e}") from None
        model = cls(config)
        expected = model.state_dict()
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        bad = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
        if missing or extra or bad:
            raise ValueError(
                f"{weights_path} does not match {cfg_path.name}: missing {missing}, unexpected {extra}, "
                f"wrong shape {bad}"
            )
        model.load_state_dict(state)
        return model.eval()


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# -- training ------------------------------------------------------------------------------------------------
def _as_images(images: Tensor | np.ndarray | Iterable[Any], config: VQConfig) -> Tensor:
    """Stack whatever was given into float32 (N, C, H, W) in [0, 1]; uint8 input is divided by 255."""
    if isinstance(images, Tensor | np.ndarray):
        parts = [torch.as_tensor(images)]
    else:
        parts = [torch.as_tensor(np.asarray(x)) if not isinstance(x, Tensor) else x for x in images]
    if not parts:
        raise ValueError("train_vq: no images given")
    c, s = config.channels, config.image_size
    out = []
    for t in parts:
        t = t.detach().cpu()
        t = t.to(torch.float32) / 255.0 if t.dtype == torch.uint8 else t.to(torch.float32)
        if t.ndim == 2 and c == 1:
            t = t[None, None]
        elif t.ndim == 3:
            t = t[None] if t.shape[0] == c and tuple(t.shape[1:]) == (s, s) else t[:, None]
        if t.ndim != 4 or tuple(t.shape[1:]) != (c, s, s):
            raise ValueError(f"train_vq: expected images of shape (N, {c}, {s}, {s}), got {tuple(t.shape)}")
        out.append(t)
    data = torch.cat(out)
    if float(data.min()) < 0.0 or float(data.max()) > 1.0:
        raise ValueError(f"train_vq: pixel values must lie in [0, 1], got [{float(data.min())}, {float(data.max())}]")
    return data.contiguous()


def _lr_factor(step: int, steps: int) -> float:
    """5% linear warm-up, then cosine decay to 10% of the peak."""
    warm = max(1, steps // 20)
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress))


def train_vq(
    images: Tensor | np.ndarray | Iterable[Any],
    config: VQConfig,
    *,
    steps: int,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
    num_threads: int | None = None,
) -> tuple[VQTokenizer, dict[str, float]]:
    """Train a tokenizer from scratch on ``images`` ((N, C, H, W) or an iterable of images or batches, floats in
    [0, 1] or uint8). ``progress(step, steps, loss)`` is called after every step. Returns the model (eval mode)
    and :func:`evaluate_vq` on the training images plus ``train_seconds`` and ``final_loss``. The same seed gives
    the same model on CPU (for one thread count). ``num_threads`` sets torch's CPU threads for the call only
    (1 is the fastest for these small convs when other work shares the cores; see the module docstring)."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"train_vq: steps and batch_size must be >= 1, got {steps} and {batch_size}")
    data = _as_images(images, config)
    threads_before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _train(data, config, steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=progress)
    finally:
        torch.set_num_threads(threads_before)


def _train(
    data: Tensor,
    config: VQConfig,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: Callable[[int, int, float], None] | None,
) -> tuple[VQTokenizer, dict[str, float]]:
    """The training loop of :func:`train_vq`, on validated (N, C, H, W) float images."""
    n, bs = data.shape[0], min(batch_size, data.shape[0])
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG state stays as it was
        torch.manual_seed(seed)
        model = VQTokenizer(config)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, steps))
    recon_loss = F.mse_loss if config.recon_loss == "mse" else F.l1_loss
    model.train()
    order, pos, loss_value = torch.randperm(n, generator=gen), 0, math.nan
    start = time.perf_counter()
    for step in range(1, steps + 1):
        if pos + bs > n:
            order, pos = torch.randperm(n, generator=gen), 0
        batch = data[order[pos : pos + bs]]
        pos += bs
        recon, vq_loss, _ = model(batch, generator=gen)
        loss = recon_loss(recon, batch) + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_value = float(loss.detach())
        if progress is not None:
            progress(step, steps, loss_value)
    seconds = time.perf_counter() - start
    model.eval()
    metrics = evaluate_vq(model, data)
    metrics.update(train_seconds=seconds, final_loss=loss_value)
    return model, metrics


@torch.no_grad()
def evaluate_vq(model: VQTokenizer, images: Tensor, *, batch_size: int = 128) -> dict[str, float]:
    """Reconstruction through the codes (encode -> decode): mean ``recon_mse``, ``psnr`` (dB, per-image mean),
    ``ssim``; ``codebook_usage`` (fraction of codes used at least once) and ``perplexity`` (exp of the entropy of
    code frequencies; K at uniform use)."""
    from components.evaluation.image_metrics import psnr_per_image, ssim_per_image

    data = _as_images(images, model.config)
    mse, psnrs, ssims = [], [], []
    counts = torch.zeros(model.config.codebook_size)
    for chunk in data.split(batch_size):
        codes = model.encode(chunk)
        recon = model.decode(codes)
        counts += torch.bincount(codes.flatten(), minlength=model.config.codebook_size).float()
        mse.append(((recon - chunk) ** 2).flatten(1).mean(1))
        psnrs.append(psnr_per_image(recon, chunk, max_db=100.0))
        ssims.append(ssim_per_image(recon, chunk))
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {
        "recon_mse": float(torch.cat(mse).mean()),
        "psnr": float(torch.cat(psnrs).mean()),
        "ssim": float(torch.cat(ssims).mean()),
        "codebook_usage": float((counts > 0).float().mean()),
        "perplexity": float(entropy.exp()),
    }


# -- data --------------------------------------------------------------------------------------------------
def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"records file {path} does not exist (is {path.parent} a built VL-Health folder?)")
    out = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {no}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}, line {no}: expected a JSON object")
        out.append(obj)
    return out


def load_dataset_images(dataset_dir: Path, records: list[dict[str, Any]] | None = None, *, channels: int = 1) -> Tensor:
    """Every distinct image (``image`` and ``target_image``, by path, in first-seen order) that ``records``
    reference, read from a built VL-Health folder as float32 (N, channels, H, W) in [0, 1]. ``records`` defaults to
    all of ``dataset_dir/records.jsonl``; pass a filtered list (e.g. the train split) to hold images out."""
    from PIL import Image, UnidentifiedImageError

    from components.data.records import RECORDS_FILE

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    if records is None:
        records = _read_records(root / RECORDS_FILE)
    paths: dict[str, None] = {}
    for rec in records:
        for key in ("image", "target_image"):
            if rec.get(key):
                paths.setdefault(str(rec[key]), None)
    if not paths:
        raise ValueError(f"no images referenced by the records of {root}")
    arrays: list[np.ndarray] = []
    base = root.resolve()
    for rel in paths:
        path = (root / rel).resolve()
        if not path.is_relative_to(base):
            raise ValueError(f"image path {rel!r} leaves the dataset folder {root}")
        try:
            with Image.open(path) as img:
                arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
        except FileNotFoundError:
            raise FileNotFoundError(f"image {rel} referenced by the records does not exist in {root}") from None
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise ValueError(f"image {path} is corrupt or not an image ({e})") from None
        if arrays and arr.shape != arrays[0].shape:
            raise ValueError(f"image {rel} is {arr.shape[:2]}, the first image {arrays[0].shape[:2]}: sizes differ")
        arrays.append(arr)
    stacked = np.stack(arrays)
    stacked = stacked[:, None] if channels == 1 else stacked.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(stacked)).to(torch.float32) / 255.0


def main(argv: list[str] | None = None) -> None:
    """Train a tokenizer on the train-split images of a VL-Health folder and save it (see the module docstring)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m components.models.vq", description=main.__doc__)
    ap.add_argument("dataset_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--downsample", type=int, default=8)
    ap.add_argument("--codebook-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared machine)")
    args = ap.parse_args(argv)
    from components.data.records import RECORDS_FILE

    records = [r for r in _read_records(args.dataset_dir / RECORDS_FILE) if r.get("split", "train") == "train"]
    images = load_dataset_images(args.dataset_dir, records)
    config = VQConfig(image_size=images.shape[-1], downsample=args.downsample, codebook_size=args.codebook_size)
    model, metrics = train_vq(images, config, steps=args.steps, seed=args.seed, num_threads=args.threads)
    model.save(args.out_dir)
    print(json.dumps({"images": images.shape[0], **metrics}, indent=2))


if __name__ == "__main__":
    main()
