"""Reading users' image files: upright (EXIF orientation), RGB, with errors that name the file."""

from __future__ import annotations

import os
import warnings
from importlib import resources
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

DEMO_IMAGE = "astronaut.png"
# EXIF orientations 5 to 8 turn the picture by 90 degrees: width and height swap.
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def bundled_image_path(name: str = DEMO_IMAGE) -> Path:
    """Path of a photo shipped with the package (``assets/``)."""
    return Path(str(resources.files("diffusers_irib") / "assets" / name))


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open (header only) with an error naming the file; PIL's size limit stops decompression bombs."""
    name = str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except FileNotFoundError:
        raise ValueError(f"cannot read image {name!r}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"cannot read image {name!r}: it is a directory") from None
    except Image.DecompressionBombError as err:
        raise ValueError(f"cannot read image {name!r}: refused as a possible decompression bomb ({err})") from None
    except UnidentifiedImageError:
        raise ValueError(
            f"cannot read image {name!r}: not a readable image (unknown format, or a damaged file)"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read image {name!r}: not a readable image ({err})") from None


def upright_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) as displayed, read from the header only: cheap checks before loading models."""
    with open_image(path) as image:
        width, height = image.size
        try:
            orientation = image.getexif().get(0x0112, 1)
        except Exception:  # a broken EXIF block: the pixels may still be fine
            orientation = 1
    return (height, width) if orientation in SWAPPING_ORIENTATIONS else (width, height)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode as 8-bit RGB, turned upright as the EXIF orientation says (as photo viewers show it)."""
    from ..image_processing import to_rgb

    with open_image(path) as image:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image.load()
                upright = ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, ValueError) as err:
            raise ValueError(f"cannot read image {str(path)!r}: not a readable image ({err})") from None
        try:
            return to_rgb(upright)
        except ValueError as err:  # gray values outside any range the mode can mean
            raise ValueError(f"cannot read image {str(path)!r}: {str(err).removeprefix('image: ')}") from None


def center_crop_resize(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bicubic), then crop the centre square."""
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def pil_to_tensor(image: Image.Image):
    """(3, H, W) float tensor in [0, 1]."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def tensor_to_pil(image) -> Image.Image:
    """A (3, H, W) tensor in [0, 1] (any dtype or device) as an 8-bit RGB image."""
    import torch

    array = (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)
