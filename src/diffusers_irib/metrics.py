"""Full-reference fidelity metrics on images in [0, 1]: PSNR and SSIM, in two conventions.

``convention="rgb"``: on the three RGB channels, data range 1.

``convention="y"``: on the luma Y of BT.601 YCbCr, as OSEDiff's and the IRIB paper's tables compute
it (pyiqa's ``test_y_channel=True, color_space='ycbcr'``): Y = (65.481 R + 128.553 G + 24.966 B + 16)
/ 255 for RGB in [0, 1], so Y lies in [16/255, 235/255]. PSNR takes that Y at data range 1 without
rounding; SSIM takes Y * 255 rounded to integers, at data range 255, as pyiqa does.

SSIM follows Wang et al. (2004) as most restoration papers report it: an 11 x 11 Gaussian window
with sigma 1.5, K1 = 0.01, K2 = 0.03, population (not sample) statistics, no padding (pixels
closer than 5 to the border are left out), averaged over channels and pixels. That equals
scikit-image's ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)``. Tables must say which convention they use: a number means little
without it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["CONVENTIONS", "psnr", "rgb_to_y", "ssim"]

CONVENTIONS = ("rgb", "y")
#: BT.601 luma weights (x 255) and offset of pyiqa/BasicSR's rgb2ycbcr, for RGB in [0, 1].
_Y_WEIGHTS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0


def rgb_to_y(images: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of (3, H, W) or (B, 3, H, W) RGB in [0, 1], in [16/255, 235/255], channel kept."""
    weights = torch.tensor(_Y_WEIGHTS, dtype=torch.float64, device=images.device).view(3, 1, 1)
    return ((images.double() * weights).sum(dim=-3, keepdim=True) + _Y_OFFSET) / 255.0


def _check(image: torch.Tensor, reference: torch.Tensor, convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if image.shape != reference.shape or image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(
            f"expected two RGB images of one shape, (3, H, W) or (B, 3, H, W); got {tuple(image.shape)} "
            f"and {tuple(reference.shape)}"
        )


def psnr(image: torch.Tensor, reference: torch.Tensor, convention: str = "rgb") -> float:
    """Peak signal-to-noise ratio in dB (data range 1); inf for identical images."""
    _check(image, reference, convention)
    x, y = image.double(), reference.double()
    if convention == "y":
        x, y = rgb_to_y(x), rgb_to_y(y)
    mse = torch.mean((x - y) ** 2).item()
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def _gaussian_kernel(sigma: float = 1.5, radius: int = 5) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(image: torch.Tensor, reference: torch.Tensor, convention: str = "rgb") -> float:
    """Mean SSIM of (3, H, W) or (B, 3, H, W) images in [0, 1] (see the module docstring)."""
    _check(image, reference, convention)
    x, y = image.double(), reference.double()
    data_range = 1.0
    if convention == "y":
        x, y, data_range = (rgb_to_y(x) * 255).round(), (rgb_to_y(y) * 255).round(), 255.0
    if x.dim() == 3:
        x, y = x[None], y[None]
    if min(x.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs images of at least 11 x 11 pixels (its window), got {tuple(x.shape[-2:])}")
    c = x.shape[1]
    kernel = _gaussian_kernel().to(x.device).expand(c, 1, 11, 11)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean().item()
