"""Kernel formulas against independent closed forms (numpy / scipy), and the mixed sampler."""

import math

import numpy as np
import pytest
import torch
from scipy import special

from diffusers_irib.degradations import KERNEL_TYPES
from diffusers_irib.degradations import kernels as K


def rotated_quadratic(k, sx, sy, theta):
    """(x'/sx)^2 + (y'/sy)^2 with (x', y') the offsets rotated by -theta: an independent form of
    c^T Sigma^-1 c for Sigma = R(theta) diag(sx^2, sy^2) R(theta)^T."""
    r = np.arange(k) - k // 2
    y, x = np.meshgrid(r, r, indexing="ij")
    xr = x * math.cos(theta) + y * math.sin(theta)
    yr = -x * math.sin(theta) + y * math.cos(theta)
    return (xr / sx) ** 2 + (yr / sy) ** 2


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_isotropic_gaussian_matches_closed_form():
    k, sigma = 21, 2.3
    r = np.arange(k) - k // 2
    expected = np.exp(-(r[None] ** 2 + r[:, None] ** 2) / (2 * sigma**2))
    expected /= expected.sum()
    got = K.isotropic_gaussian_kernel(k, t(sigma))[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("theta", [0.0, 0.4, -1.2, math.pi / 2])
def test_anisotropic_gaussian_matches_rotated_closed_form(theta):
    k, sx, sy = 15, 3.0, 0.8
    expected = np.exp(-0.5 * rotated_quadratic(k, sx, sy, theta))
    expected /= expected.sum()
    got = K.anisotropic_gaussian_kernel(k, t(sx), t(sy), t(theta))[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-14)


def test_rotation_by_quarter_turn_swaps_axes():
    a = K.anisotropic_gaussian_kernel(11, t(2.5), t(0.7), t(math.pi / 2))[0]
    b = K.anisotropic_gaussian_kernel(11, t(0.7), t(2.5), t(0.0))[0]
    torch.testing.assert_close(a, b)
    # the long axis of an unrotated kernel with sigma_x > sigma_y lies along x (the last axis)
    c = K.anisotropic_gaussian_kernel(11, t(2.5), t(0.7), t(0.0))[0]
    assert c[5, 5 + 3] > c[5 + 3, 5] * 10


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.7])
def test_generalized_gaussian_matches_closed_form(beta):
    k, sx, sy, theta = 13, 2.0, 1.1, 0.7
    expected = np.exp(-0.5 * rotated_quadratic(k, sx, sy, theta) ** beta)
    expected /= expected.sum()
    got = K.generalized_gaussian_kernel(k, t(sx), t(sy), t(theta), t(beta))[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-14)


def test_generalized_gaussian_with_beta_one_is_the_gaussian():
    args = (t(2.0), t(1.1), t(0.7))
    torch.testing.assert_close(
        K.generalized_gaussian_kernel(13, *args, t(1.0)), K.anisotropic_gaussian_kernel(13, *args)
    )


@pytest.mark.parametrize("beta", [1.0, 1.5, 2.0])
def test_plateau_matches_closed_form(beta):
    k, sx, sy, theta = 17, 1.5, 2.5, -0.3
    expected = 1.0 / (1.0 + rotated_quadratic(k, sx, sy, theta) ** beta)
    expected /= expected.sum()
    got = K.plateau_kernel(k, t(sx), t(sy), t(theta), t(beta))[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("k,cutoff", [(7, math.pi / 3), (13, 0.9 * math.pi), (21, math.pi / 5)])
def test_sinc_kernel_matches_bessel_definition(k, cutoff):
    r = np.arange(k) - k // 2
    radius = np.sqrt(r[None] ** 2 + r[:, None] ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = cutoff * special.j1(cutoff * radius) / (2 * np.pi * radius)
    expected[k // 2, k // 2] = cutoff**2 / (4 * np.pi)
    expected /= expected.sum()
    got = K.circular_lowpass_kernel(k, t(cutoff))[0].numpy()
    # torch's J1 is accurate to ~1e-6 relative, hence the tolerance
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8)
    assert got.min() < 0  # the negative lobes that cause ringing


def test_kernels_are_batched_per_sample():
    sigma = t(0.5, 1.0, 3.0)
    batch = K.isotropic_gaussian_kernel(9, sigma)
    for i in range(3):
        torch.testing.assert_close(batch[i], K.isotropic_gaussian_kernel(9, sigma[i : i + 1])[0])
    torch.testing.assert_close(batch.sum(dim=(-2, -1)), torch.ones(3, dtype=torch.float64))


def test_even_kernel_size_is_rejected():
    with pytest.raises(ValueError, match="kernel_size"):
        K.isotropic_gaussian_kernel(8, t(1.0))


def test_beta_is_drawn_half_below_and_half_above_one():
    g = torch.Generator().manual_seed(0)
    beta = K.sample_beta(20000, (0.5, 4.0), g)
    assert beta.min() >= 0.5 and beta.max() <= 4.0
    below = (beta < 1).double().mean().item()
    assert abs(below - 0.5) < 0.02
    # uniform within each half: the mean of the upper half is (1 + 4) / 2
    assert abs(beta[beta >= 1].mean().item() - 2.5) < 0.05
    # a range with min 1 (plateau [1, 2]) puts half of its draws exactly at 1, as Real-ESRGAN does
    plateau = K.sample_beta(4000, (1.0, 2.0), g)
    assert abs((plateau == 1.0).double().mean().item() - 0.5) < 0.03


def test_mixed_kernel_sampler_follows_probabilities_and_sizes():
    g = torch.Generator().manual_seed(1)
    n = 3000
    sizes = K.sample_odd_kernel_sizes(n, (7, 21), g)
    assert set(sizes) == set(range(7, 22, 2))
    probs = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    kernels, families = K.random_mixed_kernels(
        sizes,
        KERNEL_TYPES,
        probs,
        (0.2, 3.0),
        (-math.pi, math.pi),
        (0.5, 4.0),
        (1.0, 2.0),
        0.1,
        pad_to=21,
        generator=g,
    )
    assert kernels.shape == (n, 21, 21)
    torch.testing.assert_close(kernels.sum(dim=(-2, -1)), torch.ones(n, dtype=torch.float64))
    sinc_share = families.count("sinc") / n
    assert abs(sinc_share - 0.1) < 0.02
    for family, p in zip(KERNEL_TYPES, probs):
        share = families.count(family) / n
        assert abs(share - 0.9 * p) < 0.025, (family, share)
    # every kernel is zero outside its own taps
    for kernel, size in list(zip(kernels, sizes))[:200]:
        cut = (21 - size) // 2
        if cut:
            assert kernel[:cut].abs().sum() == 0 and kernel[:, -cut:].abs().sum() == 0
