"""Getting user images in and out of the pipeline: conversion, padding, colour fix, tiling windows.

Users hand in small damaged photos in every format (PIL in any mode, 8/16-bit or float numpy,
tensors); everything becomes (3, H, W) float tensors in [0, 1] here, with errors that name the
problem instead of failing deep inside torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F

from .color_fixes import COLOR_FIXES, adain_color_fix, wavelet_color_fix, wavelet_low_frequency  # noqa: F401 (their public home)

ImageInput = Any  # PIL.Image.Image | np.ndarray | torch.Tensor | list of those

OUTPUT_TYPES = ("pil", "np", "pt")


# --------------------------------------------------------------------------- input conversion
#: The white level of a mode-I or mode-F gray image, from its largest value: floats in [0, 1], 8-bit
#: data or 16-bit data (what a 16-bit PNG or TIFF holds once converted to I or F).
GRAY_WHITE_LEVELS = (1.0, 255.0, 65535.0)


def gray_white_level(image: PIL.Image.Image, array: np.ndarray) -> float:
    """I;16 images are 16-bit by definition; I and F carry no range, so the smallest of
    :data:`GRAY_WHITE_LEVELS` that holds every value is taken (F: 1, 255 or 65535; I: 255 or 65535).
    Values no such range holds (negative, above 65535, NaN) are refused rather than clipped."""
    if image.mode.startswith("I;16"):
        return 65535.0
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    levels = GRAY_WHITE_LEVELS if image.mode == "F" else GRAY_WHITE_LEVELS[1:]
    if not (np.isfinite(array).all() and low >= 0 and high <= levels[-1]):
        raise ValueError(
            f"image: a mode-{image.mode} image must hold values in [0, 65535] ([0, 1], 8-bit or 16-bit data), "
            f"got [{low:g}, {high:g}]; scale it to [0, 1] and pass a float array instead"
        )
    return next(level for level in levels if high <= level)


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Any PIL mode to 8-bit RGB: 16-bit and 32-bit gray are scaled by their white level
    (:func:`gray_white_level`), alpha goes on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = gray_white_level(image, array)
        image = PIL.Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def _numpy_to_tensor(array: np.ndarray) -> torch.Tensor:
    if array.dtype == np.uint8:
        scaled = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        scaled = array.astype(np.float32) / 65535.0
    elif np.issubdtype(array.dtype, np.floating):
        scaled = array.astype(np.float32)
    else:
        raise TypeError(f"image: numpy arrays must be uint8, uint16 or float in [0, 1], got dtype {array.dtype}")
    if scaled.ndim == 2:
        scaled = scaled[:, :, None]
    if scaled.ndim != 3 or scaled.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"image: numpy arrays must be H x W or H x W x C with C in (1, 3, 4), got shape {array.shape}"
        )
    if scaled.shape[2] == 4:  # alpha on white, as for PIL
        rgb, alpha = scaled[:, :, :3], scaled[:, :, 3:]
        scaled = rgb * alpha + (1.0 - alpha)
    tensor = torch.from_numpy(np.ascontiguousarray(scaled)).permute(2, 0, 1)
    return tensor.expand(3, -1, -1) if tensor.shape[0] == 1 else tensor


def _torch_to_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    elif not tensor.is_floating_point():
        raise TypeError(f"image: tensors must be float in [0, 1] or uint8, got dtype {tensor.dtype}")
    if tensor.dim() == 3:
        tensor = tensor[None]
    if tensor.dim() != 4 or tensor.shape[1] not in (1, 3):
        raise ValueError(f"image: tensors must be 3 x H x W or B x 3 x H x W, got shape {tuple(tensor.shape)}")
    tensor = tensor.detach().float()
    if tensor.shape[1] == 1:
        tensor = tensor.expand(-1, 3, -1, -1)
    return list(tensor.unbind(0))


def _one_to_tensors(image: Any) -> list[torch.Tensor]:
    if isinstance(image, PIL.Image.Image):  # EXIF orientation applied: a phone photo is not restored sideways
        return [_numpy_to_tensor(np.asarray(to_rgb(PIL.ImageOps.exif_transpose(image))))]
    if isinstance(image, np.ndarray):
        return [_numpy_to_tensor(image)]
    if isinstance(image, torch.Tensor):
        return _torch_to_tensors(image)
    raise TypeError(
        f"image must be a PIL image, a numpy array, a torch tensor or a list of them, got {type(image).__name__}"
    )


def to_tensors(image: ImageInput) -> list[torch.Tensor]:
    """Convert any supported input to a list of (3, H, W) float32 CPU tensors in [0, 1]."""
    items = image if isinstance(image, (list, tuple)) else [image]
    if len(items) == 0:
        raise ValueError("image: got an empty list; pass at least one image")
    tensors = [t for item in items for t in _one_to_tensors(item)]
    if not tensors:
        raise ValueError("image: got an empty batch; pass at least one image")
    for i, t in enumerate(tensors):
        if t.shape[-1] == 0 or t.shape[-2] == 0:
            raise ValueError(f"image {i} has zero size: {tuple(t.shape[-2:])}")
        if not torch.isfinite(t).all():
            raise ValueError(f"image {i} contains NaN or infinite values")
        low, high = float(t.min()), float(t.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(f"image {i} must have values in [0, 1], got [{low:.3g}, {high:.3g}]")
    return tensors


def upscale_image(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Bicubic upscale of a (B, 3, H, W) image (OSEDiff restores at the pre-upsampled size)."""
    if factor == 1.0:
        return image
    h, w = image.shape[-2:]
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    return F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=factor < 1).clamp(0, 1)


def pad_to_multiple(image: torch.Tensor, multiple: int = 8) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad bottom/right to a multiple (the VAE needs multiples of 8); returns the original size."""
    h, w = image.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h or pad_w:
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        image = F.pad(image, (0, pad_w, 0, pad_h), mode=mode)
    return image, (h, w)


# --------------------------------------------------------------------------- tiling
def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering ``length``; the last tile is aligned to the border."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def gaussian_window(height: int, width: int, sigma: float = 0.1, device=None, dtype=torch.float32) -> torch.Tensor:
    """A separable Gaussian bump over a tile (sigma relative to the tile size, OSEDiff's 0.1).

    Narrow enough that a tile's border, where the UNet saw padding instead of neighbours, weighs
    almost nothing wherever another tile overlaps it; never exactly 0, so every pixel is covered.
    """

    def axis(n: int) -> torch.Tensor:
        x = (torch.arange(n, device=device, dtype=torch.float64) + 0.5) / n - 0.5
        return torch.exp(-0.5 * (x / sigma) ** 2)

    return (axis(height)[:, None] * axis(width)[None, :]).to(dtype)


# --------------------------------------------------------------------------- output
def postprocess(images: torch.Tensor, output_type: str = "pil"):
    """(B, 3, H, W) in [0, 1] to a list of PIL images, an (B, H, W, 3) numpy array, or the tensor."""
    images = images.detach().float().clamp(0, 1).cpu()
    if output_type == "pt":
        return images
    array = images.permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return array
    if output_type == "pil":
        return [PIL.Image.fromarray((a * 255.0).round().astype(np.uint8)) for a in array]
    raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
