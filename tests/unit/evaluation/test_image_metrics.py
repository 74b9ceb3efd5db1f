"""SSIM and PSNR agree with scikit-image to float precision; edge cases give the documented values and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from components.evaluation.image_metrics import psnr, psnr_per_image, ssim, ssim_per_image


def sk_ssim(a: np.ndarray, b: np.ndarray, channel_axis: int | None = None) -> float:
    return float(
        structural_similarity(
            a,
            b,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=channel_axis,
        )
    )


def pair(shape: tuple[int, ...], noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth-ish image and a noisy copy, both in [0, 1]."""
    rng = np.random.default_rng(seed)
    a = rng.random(shape)
    a = (a + np.roll(a, 1, -1) + np.roll(a, 1, -2)) / 3  # some spatial correlation, so SSIM is not trivial
    b = np.clip(a + rng.normal(0.0, noise, shape), 0.0, 1.0)
    return a, b


@pytest.mark.parametrize(("shape", "noise"), [((64, 64), 0.05), ((64, 64), 0.3), ((23, 41), 0.1), ((11, 11), 0.1)])
def test_grey_ssim_and_psnr_match_skimage(shape: tuple[int, int], noise: float) -> None:
    a, b = pair(shape, noise)
    assert ssim(a, b) == pytest.approx(sk_ssim(a, b), abs=1e-10)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-9)


def test_colour_ssim_averages_channels_like_skimage() -> None:
    a, b = pair((3, 40, 48), 0.1, seed=1)
    assert ssim(a, b) == pytest.approx(sk_ssim(a, b, channel_axis=0), abs=1e-10)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-9)


def test_batch_gives_per_image_values_and_their_mean() -> None:
    pairs = [pair((1, 32, 32), noise, seed=i) for i, noise in enumerate((0.02, 0.1, 0.4))]
    a = torch.tensor(np.stack([p[0] for p in pairs]), dtype=torch.float32)
    b = torch.tensor(np.stack([p[1] for p in pairs]), dtype=torch.float32)
    per_ssim, per_psnr = ssim_per_image(a, b), psnr_per_image(a, b)
    assert per_ssim.shape == per_psnr.shape == (3,)
    for i in range(3):
        ai, bi = a[i, 0].double().numpy(), b[i, 0].double().numpy()
        assert float(per_ssim[i]) == pytest.approx(sk_ssim(ai, bi), abs=1e-10)
        assert float(per_psnr[i]) == pytest.approx(peak_signal_noise_ratio(ai, bi, data_range=1.0), abs=1e-9)
    assert per_ssim[0] > per_ssim[1] > per_ssim[2]  # more noise, lower similarity
    assert ssim(a, b) == pytest.approx(float(per_ssim.mean()), abs=1e-12)
    assert psnr(a, b) == pytest.approx(float(per_psnr.mean()), abs=1e-12)


def test_identical_images_give_ssim_one_and_psnr_inf_or_the_cap() -> None:
    a, _ = pair((2, 1, 16, 16), 0.0)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert psnr(a, a) == math.inf
    assert psnr(a, a, max_db=100.0) == 100.0


def test_known_psnr_value_and_data_range() -> None:
    a = np.zeros((16, 16))
    b = np.full((16, 16), 0.1)  # MSE 0.01 -> 20 dB at range 1
    assert psnr(a, b) == pytest.approx(20.0, abs=1e-9)
    assert psnr(a * 255, b * 255, data_range=255.0) == pytest.approx(20.0, abs=1e-9)
    assert ssim(a * 255, b * 255, data_range=255.0) == pytest.approx(ssim(a, b), abs=1e-12)


@pytest.mark.parametrize("fn", [ssim, psnr])
def test_shape_mismatch_is_a_clear_error(fn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=r"same shape, got \(64, 64\) and \(64, 63\)"):
        fn(np.zeros((64, 64)), np.zeros((64, 63)))


def test_bad_rank_and_tiny_images_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"expected \(H, W\), \(C, H, W\) or \(B, C, H, W\)"):
        psnr(np.zeros(8), np.zeros(8))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((10, 32)), np.zeros((10, 32)))
