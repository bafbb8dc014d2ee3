"""Colour fixes: give a restored image the colours of its input (AdaIN or wavelet, as OSEDiff).

The names in :data:`COLOR_FIXES` are what ``--color-fix`` and the web page offer (plus ``none``), so
this module imports torch only when a fix runs: a command's ``--help`` must not wait for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def adain_color_fix(image: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Give ``image`` the per-channel mean and standard deviation of ``reference`` (B, 3, H, W)."""
    mean_i, std_i = image.mean(dim=(-2, -1), keepdim=True), (image.var(dim=(-2, -1), keepdim=True) + eps).sqrt()
    mean_r, std_r = (
        reference.mean(dim=(-2, -1), keepdim=True),
        (reference.var(dim=(-2, -1), keepdim=True) + eps).sqrt(),
    )
    return ((image - mean_i) / std_i * std_r + mean_r).clamp(0, 1)


def wavelet_low_frequency(image: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """The coarsest band of an a-trous wavelet decomposition (3x3 binomial kernel, dilation 2^i)."""
    import torch
    import torch.nn.functional as F

    kernel = (
        torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=image.dtype, device=image.device) / 16
    )
    kernel = kernel.expand(image.shape[1], 1, 3, 3)
    low = image
    for level in range(levels):
        d = 2**level
        low = F.conv2d(F.pad(low, (d, d, d, d), mode="replicate"), kernel, groups=image.shape[1], dilation=d)
    return low


def wavelet_color_fix(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Low frequencies (colour, shading) of ``reference`` with the high frequencies of ``image``."""
    return (image - wavelet_low_frequency(image) + wavelet_low_frequency(reference)).clamp(0, 1)


COLOR_FIXES = {"adain": adain_color_fix, "wavelet": wavelet_color_fix}
