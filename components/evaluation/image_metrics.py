"""SSIM and PSNR of generated images against their targets (METHODS.md §1, "Generation path": "Metrics: SSIM,
PSNR against targets").

Both take two images of the same shape with values in ``[0, data_range]`` (default ``[0, 1]``), as torch tensors
or numpy arrays::

    from components.evaluation.image_metrics import psnr, ssim, ssim_per_image
    ssim(generated, target)            # one float: the mean over the batch
    psnr(generated, target)            # dB; inf for identical images (see ``max_db``)
    ssim_per_image(generated, target)  # a float64 tensor (B,), e.g. for per-source breakdowns

Shapes: ``(H, W)`` is one grey image, ``(C, H, W)`` one image with C channels, ``(B, C, H, W)`` a batch. A batch of
grey images must carry its channel axis, ``(B, 1, H, W)``: ``(B, H, W)`` reads as one B-channel image.

SSIM is the standard Gaussian-window form (Wang et al., 2004): an 11x11 window with sigma 1.5, K1 = 0.01,
K2 = 0.03, population (not sample) covariances, the SSIM map averaged over the positions where the whole window
lies inside the image, and over channels. That is exactly what
``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=1.0)`` computes (scikit-image pads with reflection and then crops the 5-pixel border, so the padding
never reaches the averaged values); the unit tests hold the two to 1e-10. Computed in float64.

PSNR is ``10 log10(data_range**2 / MSE)`` per image, MSE over all pixels and channels (as
``skimage.metrics.peak_signal_noise_ratio``); a batch's PSNR is the mean of its per-image values (the usual
convention in image-generation papers, not the PSNR of the pooled MSE). Identical images give ``inf``, as in
scikit-image; pass ``max_db`` (for example 100) to cap each image's value so that one perfect image does not make
a batch mean infinite.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03

ImageLike = Tensor | np.ndarray


def _as_batch(a: ImageLike, b: ImageLike, name: str) -> tuple[Tensor, Tensor]:
    """Both images as float64 (B, C, H, W) tensors; a shape mismatch or a bad rank raises ValueError."""
    ta = torch.as_tensor(np.asarray(a) if not isinstance(a, Tensor) else a).detach().cpu()
    tb = torch.as_tensor(np.asarray(b) if not isinstance(b, Tensor) else b).detach().cpu()
    if ta.shape != tb.shape:
        raise ValueError(f"{name}: the images must have the same shape, got {tuple(ta.shape)} and {tuple(tb.shape)}")
    if ta.ndim not in (2, 3, 4):
        raise ValueError(f"{name}: expected (H, W), (C, H, W) or (B, C, H, W), got shape {tuple(ta.shape)}")
    while ta.ndim < 4:
        ta, tb = ta.unsqueeze(0), tb.unsqueeze(0)
    if ta.numel() == 0:
        raise ValueError(f"{name}: empty images, shape {tuple(ta.shape)}")
    return ta.to(torch.float64), tb.to(torch.float64)


def _gaussian_kernel(dtype: torch.dtype) -> Tensor:
    # scipy.ndimage.gaussian_filter's kernel for sigma 1.5, truncate 3.5: radius int(3.5 * 1.5 + 0.5) = 5.
    x = torch.arange(WINDOW, dtype=dtype) - WINDOW // 2
    g = torch.exp(-0.5 * (x / SIGMA) ** 2)
    return g / g.sum()


def _filter(x: Tensor, g: Tensor) -> Tensor:
    """Separable Gaussian filter over H and W of a (N, 1, H, W) tensor, 'valid' positions only."""
    x = F.conv2d(x, g.view(1, 1, WINDOW, 1))
    return F.conv2d(x, g.view(1, 1, 1, WINDOW))


def ssim_per_image(a: ImageLike, b: ImageLike, *, data_range: float = 1.0) -> Tensor:
    """SSIM of each image of a batch, float64 of shape (B,) (a single image gives shape (1,))."""
    x, y = _as_batch(a, b, "ssim")
    bsz, ch, h, w = x.shape
    if h < WINDOW or w < WINDOW:
        raise ValueError(f"ssim: images must be at least {WINDOW}x{WINDOW} pixels (the Gaussian window), got {h}x{w}")
    g = _gaussian_kernel(x.dtype)
    x, y = x.reshape(bsz * ch, 1, h, w), y.reshape(bsz * ch, 1, h, w)
    mu_x, mu_y = _filter(x, g), _filter(y, g)
    var_x = _filter(x * x, g) - mu_x * mu_x
    var_y = _filter(y * y, g) - mu_y * mu_y
    cov = _filter(x * y, g) - mu_x * mu_y
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return smap.reshape(bsz, -1).mean(dim=1)


def ssim(a: ImageLike, b: ImageLike, *, data_range: float = 1.0) -> float:
    """Mean SSIM over a batch (or the SSIM of one image); 1.0 for identical images."""
    return float(ssim_per_image(a, b, data_range=data_range).mean())


def psnr_per_image(a: ImageLike, b: ImageLike, *, data_range: float = 1.0, max_db: float | None = None) -> Tensor:
    """PSNR in dB of each image of a batch, float64 of shape (B,); ``inf`` where an image matches exactly, unless
    ``max_db`` caps it."""
    x, y = _as_batch(a, b, "psnr")
    mse = ((x - y) ** 2).reshape(x.shape[0], -1).mean(dim=1)
    out = 10.0 * torch.log10(data_range**2 / mse)  # mse == 0 gives +inf (torch divides without warning)
    return out.clamp(max=max_db) if max_db is not None else out


def psnr(a: ImageLike, b: ImageLike, *, data_range: float = 1.0, max_db: float | None = None) -> float:
    """Mean PSNR in dB over a batch (or the PSNR of one image); ``inf`` for identical images unless ``max_db``."""
    return float(psnr_per_image(a, b, data_range=data_range, max_db=max_db).mean())
