"""The image operations of the degradation pipeline: blur, resize, noise, quantisation.

All take (B, C, H, W) float images and per-sample parameters, run on any device, and let gradients
through: where the true derivative is zero (rounding, clamping) a straight-through estimator passes
the gradient on unchanged, so the pipeline can serve as the degrade-back operator D(z).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Kernels larger than this are applied through the FFT, which costs the same for any size.
FFT_MIN_KERNEL_SIZE = 13


# --------------------------------------------------------------------------- straight-through
def _straight_through(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` forward, identity backward. Adds exactly 0 to ``value``, so the result is bit-identical with
    and without autograd; without a graph to build, ``value`` is returned as it is."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return value
    return value.detach() + (x - x.detach())


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward."""
    return _straight_through(x, torch.round(x.detach()))


def ste_clamp(x: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """clamp(x) forward, identity backward (saturated pixels keep their gradient)."""
    return _straight_through(x, x.detach().clamp(low, high))


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to 256 levels, as an 8-bit image file would."""
    return ste_round(ste_clamp(x) * 255.0) / 255.0


# --------------------------------------------------------------------------- blur
def _pad_for_kernel(images: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Reflect padding by k // 2; replicate where the image is too small to reflect.

    Real-ESRGAN's filter2D crashes when an extreme downscale leaves an image with fewer than
    k // 2 + 1 rows; replicating the border is the closest well-defined extension.
    """
    pad = kernel_size // 2
    mode = "reflect" if pad < min(images.shape[-2:]) else "replicate"
    return F.pad(images, (pad, pad, pad, pad), mode=mode)


def filter2d(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Filter each sample with its own kernel (cross-correlation, as ``F.conv2d``).

    images: (B, C, H, W); kernels: (B, k, k) or (k, k) with odd k. Large kernels go through the
    FFT (linear correlation of the padded image, so no wrap-around reaches the kept region).
    """
    if kernels.dim() == 2:
        kernels = kernels.expand(images.shape[0], -1, -1)
    b, c, h, w = images.shape
    k = kernels.shape[-1]
    kernels = kernels.to(device=images.device, dtype=images.dtype)
    padded = _pad_for_kernel(images.contiguous(), k)
    if k < FFT_MIN_KERNEL_SIZE:
        weight = kernels.repeat_interleave(c, dim=0)[:, None]  # (B*C, 1, k, k)
        out = F.conv2d(padded.reshape(1, b * c, *padded.shape[-2:]), weight, groups=b * c)
        return out.reshape(b, c, h, w)
    size = padded.shape[-2:]
    spectrum = torch.fft.rfft2(padded, s=size)
    kernel_spectrum = torch.fft.rfft2(kernels[:, None], s=size)
    out = torch.fft.irfft2(spectrum * kernel_spectrum.conj(), s=size)
    return out[..., :h, :w].contiguous()


# --------------------------------------------------------------------------- resize
def resize(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize to ``size`` = (height, width) with area, bilinear or bicubic interpolation.

    No antialiasing, as in Real-ESRGAN: bilinear/bicubic downscales alias on purpose.
    """
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if mode == "area":
        return F.interpolate(images, size=size, mode="area")
    return F.interpolate(images, size=size, mode=mode, align_corners=False)


# --------------------------------------------------------------------------- noise
def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


def gaussian_noise(shape: tuple[int, int, int], sigma: torch.Tensor, gray: bool, seed: int, device, dtype) -> torch.Tensor:
    """Zero-mean Gaussian noise for one sample (C, H, W); ``sigma`` on the 0..1 scale.

    Gray noise is one plane shared by the channels. Each sample has its own field (Real-ESRGAN
    shares one gray field across the batch).
    """
    c, h, w = shape
    field = torch.randn((1 if gray else c, h, w), generator=_generator(seed, device), device=device, dtype=dtype)
    return field.expand(c, h, w) * sigma


def count_levels(images: torch.Tensor) -> torch.Tensor:
    """Number of distinct 8-bit levels per sample, without a host sync (a 256-bin histogram)."""
    b = images.shape[0]
    levels = (images.detach().clamp(0, 1) * 255.0).round().long().reshape(b, -1)
    hist = torch.zeros(b, 256, device=images.device, dtype=torch.long)
    hist.scatter_add_(1, levels, torch.ones_like(levels))
    return (hist > 0).sum(dim=1)


def rgb_to_gray(images: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma, keeping a channel axis of size 1."""
    weights = images.new_tensor([0.299, 0.587, 0.114])[:, None, None]
    return (images * weights).sum(dim=-3, keepdim=True)


@torch.no_grad()
def poisson_noise(image: torch.Tensor, scale: torch.Tensor, gray: bool, seed: int) -> torch.Tensor:
    """Signal-dependent shot noise for one sample (C, H, W), Real-ESRGAN's formula.

    The 8-bit image is treated as photon counts with ``vals = 2^ceil(log2(#levels))`` levels:
    noise = (Poisson(img * vals) / vals - img) * scale. Computed without gradient: added to the
    image it acts as a constant, so the gradient passes through unchanged.
    """
    source = rgb_to_gray(image) if gray else image
    source = (source.clamp(0, 1) * 255.0).round() / 255.0
    vals = torch.exp2(torch.ceil(torch.log2(count_levels(source[None]).to(source.dtype))))
    generator = _generator(seed, image.device)
    counts = torch.poisson(source * vals, generator=generator)
    noise = (counts / vals - source) * scale
    return noise.expand_as(image)


def add_noise(
    images: torch.Tensor,
    use_gaussian: list[bool],
    gaussian_sigma: torch.Tensor,
    poisson_scale: torch.Tensor,
    gray: list[bool],
    seeds: list[int],
) -> torch.Tensor:
    """Add per-sample Gaussian or Poisson noise (reproducible from the seeds), then clip to [0, 1]."""
    noise = []
    for i, image in enumerate(images):
        if use_gaussian[i]:
            noise.append(gaussian_noise(image.shape, gaussian_sigma[i], gray[i], seeds[i], image.device, image.dtype))
        else:
            noise.append(poisson_noise(image, poisson_scale[i], gray[i], seeds[i]))
    return ste_clamp(images + torch.stack(noise))
