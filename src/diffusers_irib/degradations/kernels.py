"""Blur kernels of the Real-ESRGAN pipeline: one formula per function, batched over samples.

Every function takes per-sample parameters as tensors of shape (B,) and returns kernels of shape
(B, k, k), normalised to sum 1, on a grid of integer offsets centred at 0. The covariance is
Sigma = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T and ``m = c^T Sigma^-1 c`` is the squared
Mahalanobis distance of the offset c from the centre.
"""

from __future__ import annotations

import math

import torch


# --------------------------------------------------------------------------- building blocks
def kernel_grid(kernel_size: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer offsets (x, y) of a k x k kernel, centred at 0; x varies along the last axis."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    r = torch.arange(kernel_size, device=device, dtype=dtype) - kernel_size // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    return xx, yy


def check_positive(name: str, values: torch.Tensor) -> None:
    """Refuse a zero, negative or non-finite parameter, naming the value: a zero sigma divides by zero
    and gave a NaN kernel, so NaN images, without a word."""
    values = torch.as_tensor(values)
    bad = ~(torch.isfinite(values) & (values > 0))
    if bool(bad.any()):
        raise ValueError(f"{name} must be a positive, finite number, got {values[bad].reshape(-1)[0].item()!r}")


def inverse_covariance(sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Sigma^-1 = R diag(1/sx^2, 1/sy^2) R^T, shape (B, 2, 2); R rotates by theta."""
    check_positive("sigma_x", sigma_x)
    check_positive("sigma_y", sigma_y)
    if not bool(torch.isfinite(torch.as_tensor(theta)).all()):
        raise ValueError(f"theta must be finite, got {theta!r}")
    cos, sin = torch.cos(theta), torch.sin(theta)
    a, b = 1.0 / sigma_x**2, 1.0 / sigma_y**2
    xx = a * cos**2 + b * sin**2
    yy = a * sin**2 + b * cos**2
    xy = (a - b) * cos * sin
    return torch.stack([torch.stack([xx, xy], -1), torch.stack([xy, yy], -1)], -2)


def mahalanobis_sq(
    kernel_size: int, sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor
) -> torch.Tensor:
    """c^T Sigma^-1 c on the kernel grid, shape (B, k, k)."""
    xx, yy = kernel_grid(kernel_size, sigma_x.device, sigma_x.dtype)
    inv = inverse_covariance(sigma_x, sigma_y, theta)[:, :, :, None, None]
    return inv[:, 0, 0] * xx**2 + 2 * inv[:, 0, 1] * xx * yy + inv[:, 1, 1] * yy**2


def normalize_kernel(kernel: torch.Tensor) -> torch.Tensor:
    return kernel / kernel.sum(dim=(-2, -1), keepdim=True)


# --------------------------------------------------------------------------- kernel formulas
def anisotropic_gaussian_kernel(
    kernel_size: int, sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor
) -> torch.Tensor:
    """exp(-0.5 m), normalised."""
    return normalize_kernel(torch.exp(-0.5 * mahalanobis_sq(kernel_size, sigma_x, sigma_y, theta)))


def isotropic_gaussian_kernel(kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """exp(-(x^2 + y^2) / (2 sigma^2)), normalised."""
    return anisotropic_gaussian_kernel(kernel_size, sigma, sigma, torch.zeros_like(sigma))


def generalized_gaussian_kernel(
    kernel_size: int, sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor, beta: torch.Tensor
) -> torch.Tensor:
    """exp(-0.5 m^beta), normalised; beta = 1 is the Gaussian, large beta tends to a flat disc."""
    check_positive("beta", beta)
    m = mahalanobis_sq(kernel_size, sigma_x, sigma_y, theta)
    return normalize_kernel(torch.exp(-0.5 * m.pow(beta[:, None, None])))


def plateau_kernel(
    kernel_size: int, sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor, beta: torch.Tensor
) -> torch.Tensor:
    """1 / (1 + m^beta), normalised: a flat top with heavy tails."""
    check_positive("beta", beta)
    m = mahalanobis_sq(kernel_size, sigma_x, sigma_y, theta)
    return normalize_kernel(1.0 / (1.0 + m.pow(beta[:, None, None])))


def circular_lowpass_kernel(kernel_size: int, cutoff: torch.Tensor) -> torch.Tensor:
    """The ideal circular low-pass filter (2-D sinc / Airy pattern), normalised.

    h(r) = cutoff * J1(cutoff * r) / (2 pi r), with the limit cutoff^2 / (4 pi) at r = 0. It has
    negative lobes, which is what produces ringing and overshoot artefacts.
    """
    check_positive("cutoff", cutoff)
    xx, yy = kernel_grid(kernel_size, cutoff.device, cutoff.dtype)
    r = torch.sqrt(xx**2 + yy**2)
    w = cutoff[:, None, None]
    safe_r = torch.where(r > 0, r, torch.ones_like(r))
    values = w * torch.special.bessel_j1(w * safe_r) / (2 * math.pi * safe_r)
    values = torch.where(r > 0, values, w**2 / (4 * math.pi))
    return normalize_kernel(values)


def pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad (B, k, k) kernels to (B, size, size), keeping them centred."""
    pad = (size - kernel.shape[-1]) // 2
    if pad < 0 or (size - kernel.shape[-1]) % 2:
        raise ValueError(f"Cannot centre a {kernel.shape[-1]}-tap kernel in {size} taps")
    return torch.nn.functional.pad(kernel, (pad, pad, pad, pad))


def delta_kernel(batch_size: int, size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The identity filter: 1 at the centre, 0 elsewhere."""
    kernel = torch.zeros(batch_size, size, size, device=device, dtype=dtype)
    kernel[:, size // 2, size // 2] = 1.0
    return kernel


# --------------------------------------------------------------------------- samplers
def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def sample_beta(n: int, beta_range: tuple[float, float], generator: torch.Generator | None = None) -> torch.Tensor:
    """Shape parameters drawn as Real-ESRGAN does: half from [min, 1], half from [1, max]."""
    lo, hi = beta_range
    below = torch.rand(n, generator=generator) < 0.5
    low_part = _uniform(n, min(lo, 1.0), 1.0, generator)
    high_part = _uniform(n, 1.0, max(hi, 1.0), generator)
    return torch.where(below, low_part, high_part).clamp(lo, hi)


def sample_odd_kernel_sizes(
    n: int, size_range: tuple[int, int], generator: torch.Generator | None = None
) -> list[int]:
    """Kernel sizes drawn uniformly from the odd integers in [min, max]."""
    lo, hi = size_range
    choices = torch.randint(0, (hi - lo) // 2 + 1, (n,), generator=generator)
    return [lo + 2 * int(c) for c in choices]


def sample_sinc_cutoffs(
    kernel_sizes: list[int], generator: torch.Generator | None = None, final: bool = False
) -> torch.Tensor:
    """Cutoffs as Real-ESRGAN draws them: U[pi/3, pi] for kernels < 13 taps (and the final
    filter), else U[pi/5, pi]."""
    lows = torch.tensor([math.pi / 3 if final or k < 13 else math.pi / 5 for k in kernel_sizes], dtype=torch.float64)
    return lows + (math.pi - lows) * torch.rand(len(kernel_sizes), generator=generator, dtype=torch.float64)


def random_mixed_kernels(
    kernel_sizes: list[int],
    kernel_list: tuple[str, ...],
    kernel_prob: tuple[float, ...],
    sigma_range: tuple[float, float],
    rotation_range: tuple[float, float],
    betag_range: tuple[float, float],
    betap_range: tuple[float, float],
    sinc_prob: float,
    pad_to: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """Draw one blur kernel per sample, zero-padded to ``pad_to`` taps.

    Returns the (B, pad_to, pad_to) float64 kernels and the family name of each sample ("sinc" or
    one of :data:`KERNEL_TYPES`). All random numbers are drawn for every sample, so the stream
    consumed does not depend on the choices made.
    """
    n = len(kernel_sizes)
    use_sinc = torch.rand(n, generator=generator) < sinc_prob
    cutoff = sample_sinc_cutoffs(kernel_sizes, generator)
    family_index = torch.multinomial(
        torch.tensor(kernel_prob, dtype=torch.float64), n, replacement=True, generator=generator
    )
    sigma_x = _uniform(n, *sigma_range, generator)
    sigma_y = _uniform(n, *sigma_range, generator)
    theta = _uniform(n, *rotation_range, generator)
    beta_g = sample_beta(n, betag_range, generator)
    beta_p = sample_beta(n, betap_range, generator)

    kernels, families = [], []
    for i, size in enumerate(kernel_sizes):
        one = slice(i, i + 1)
        if use_sinc[i]:
            family = "sinc"
            kernel = circular_lowpass_kernel(size, cutoff[one])
        else:
            family = kernel_list[int(family_index[i])]
            isotropic = family.endswith("_iso") or family == "iso"
            sy = sigma_x[one] if isotropic else sigma_y[one]
            th = torch.zeros_like(theta[one]) if isotropic else theta[one]
            if family in ("iso", "aniso"):
                kernel = anisotropic_gaussian_kernel(size, sigma_x[one], sy, th)
            elif family.startswith("generalized"):
                kernel = generalized_gaussian_kernel(size, sigma_x[one], sy, th, beta_g[one])
            else:
                kernel = plateau_kernel(size, sigma_x[one], sy, th, beta_p[one])
        kernels.append(pad_kernel(kernel, pad_to))
        families.append(family)
    return torch.cat(kernels), families
