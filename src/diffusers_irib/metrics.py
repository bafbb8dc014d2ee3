"""Full-reference fidelity metrics on images in [0, 1]: PSNR and SSIM.

SSIM follows Wang et al. (2004) as most restoration papers report it: an 11 x 11 Gaussian window
with sigma 1.5, K1 = 0.01, K2 = 0.03, population (not sample) statistics, averaged over channels
and pixels (equal to scikit-image's ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)`` with ``channel_axis``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB; inf for identical images."""
    mse = torch.mean((image.double() - reference.double()) ** 2).item()
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def _gaussian_kernel(sigma: float = 1.5, radius: int = 5) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(image: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean SSIM of (3, H, W) or (B, 3, H, W) images in [0, 1] (pixels closer than the window
    radius to the border are left out, as scikit-image does)."""
    x, y = image.double(), reference.double()
    if x.dim() == 3:
        x, y = x[None], y[None]
    c = x.shape[1]
    kernel = _gaussian_kernel().to(x.device).expand(c, 1, 11, 11)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean().item()
