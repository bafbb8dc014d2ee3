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
