"""PSNR and SSIM against scikit-image's implementations (independent code)."""

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
