"""Real photos for tests, from scikit-image's bundled data (public domain / CC0), no network."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from skimage import data

PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina")


def photo(name: str, size: int) -> torch.Tensor:
    """A centre-cropped, resized photo as a (3, size, size) float tensor in [0, 1]."""
    array = getattr(data, name)()
    h, w = array.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(array[top : top + side, left : left + side]).resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(crop).copy()).permute(2, 0, 1).float() / 255.0


def photo_batch(size: int, names=PHOTO_NAMES) -> torch.Tensor:
    return torch.stack([photo(n, size) for n in names])


def random_photo_crops(names, per_photo: int, size: int, seed: int, downscale: int = 4) -> torch.Tensor:
    """``per_photo`` random ``size`` crops of each photo, as (N, 3, size, size) in [0, 1].

    The photos are first downscaled ``downscale`` times, so a small crop holds part of a scene
    (edges, objects) rather than a patch of flat texture.
    """
    rng = np.random.default_rng(seed)
    crops = []
    for name in names:
        array = getattr(data, name)()
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        h, w = array.shape[0] // downscale, array.shape[1] // downscale
        array = np.asarray(Image.fromarray(array).resize((w, h), Image.BICUBIC))
        for _ in range(per_photo):
            top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
            crops.append(torch.from_numpy(array[top : top + size, left : left + size].copy()).permute(2, 0, 1))
    return torch.stack(crops).float() / 255.0
