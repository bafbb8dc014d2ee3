"""PSNR and SSIM against scikit-image's implementations (independent code)."""

import math

import numpy as np
import pytest
import torch
from photos import photo
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from diffusers_irib.metrics import psnr, ssim


@pytest.fixture(scope="module")
def pair():
    clean = photo("astronaut", 64)
    noisy = (clean + 0.08 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    return clean, noisy


def test_psnr_matches_scikit_image(pair):
    clean, noisy = pair
    expected = peak_signal_noise_ratio(clean.numpy(), noisy.numpy(), data_range=1.0)
    assert psnr(noisy, clean) == pytest.approx(expected, abs=1e-6)  # skimage subtracts in float32
    assert psnr(clean, clean) == float("inf")


def test_ssim_matches_scikit_image_gaussian_ssim(pair):
    clean, noisy = pair
    expected = structural_similarity(
        clean.permute(1, 2, 0).numpy().astype(np.float64),
        noisy.permute(1, 2, 0).numpy().astype(np.float64),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=2,
    )
    assert ssim(noisy, clean) == pytest.approx(expected, abs=1e-6)
    assert ssim(clean, clean) == pytest.approx(1.0)


def luma_numpy(rgb01: np.ndarray) -> np.ndarray:
    """BT.601 Y written out independently (H, W, 3) in [0, 1] -> (H, W) in [16/255, 235/255]."""
    r, g, b = rgb01[..., 0], rgb01[..., 1], rgb01[..., 2]
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def test_y_convention_matches_scikit_image_on_the_written_out_luma(pair):
    clean, noisy = pair
    y_clean = luma_numpy(clean.permute(1, 2, 0).double().numpy())
    y_noisy = luma_numpy(noisy.permute(1, 2, 0).double().numpy())
    assert psnr(noisy, clean, convention="y") == pytest.approx(
        peak_signal_noise_ratio(y_clean, y_noisy, data_range=1.0), abs=1e-9
    )
    expected = structural_similarity(
        np.round(y_clean * 255), np.round(y_noisy * 255), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=255.0,
    )  # fmt: skip
    assert ssim(noisy, clean, convention="y") == pytest.approx(expected, abs=1e-9)
    assert psnr(noisy, clean, convention="y") != pytest.approx(psnr(noisy, clean), abs=0.1)  # they differ


def test_hand_computed_values():
    black, white = torch.zeros(3, 16, 16), torch.ones(3, 16, 16)
    # RGB: mse 1 -> 0 dB. Y: black -> 16/255, white -> 235/255, mse (219/255)^2.
    assert psnr(black, white) == pytest.approx(0.0)
    assert psnr(black, white, convention="y") == pytest.approx(-20 * math.log10(219 / 255))
    gray = torch.full((3, 16, 16), 0.5)
    assert psnr(gray + 0.1, gray) == pytest.approx(20.0)  # mse 0.01
    # A pure-red offset changes Y by 65.481/255 per unit of R.
    red = gray.clone()
    red[0] += 0.1
    assert psnr(red, gray, convention="y") == pytest.approx(-20 * math.log10(0.1 * 65.481 / 255))
    # SSIM of constant images: only the luminance term, (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1).
    c1 = 0.01**2
    assert ssim(gray + 0.1, gray) == pytest.approx((2 * 0.6 * 0.5 + c1) / (0.36 + 0.25 + c1))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="convention"):
        psnr(torch.zeros(3, 16, 16), torch.zeros(3, 16, 16), convention="ycbcr")
    with pytest.raises(ValueError, match="one shape"):
        ssim(torch.zeros(3, 16, 16), torch.zeros(3, 16, 17))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))
