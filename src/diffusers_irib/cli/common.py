"""Helpers shared by the console entry points: image files, atomic writes, output folders."""

from __future__ import annotations

import json
import os
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..image_processing import to_rgb

DEMO_IMAGE = "astronaut.png"


def bundled_image_path(name: str = DEMO_IMAGE) -> Path:
    """Path of a photo shipped with the package (``assets/``)."""
    return Path(str(resources.files("diffusers_irib") / "assets" / name))


# --------------------------------------------------------------------------- image files
def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB, with an error that names the file when it cannot be read."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except FileNotFoundError:
        raise ValueError(f"cannot read image {str(path)!r}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"cannot read image {str(path)!r}: it is a directory") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read image {str(path)!r}: not a readable image ({err})") from None


def center_crop_resize(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bicubic), then crop the centre square."""
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    array = (image.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, so no half-written file is left."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_png(image: Image.Image, path: Path) -> None:
    _atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def save_json(data: dict, path: Path) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)

    _atomic_write(path, write)


def prepare_output_dir(path: str | os.PathLike) -> Path:
    """Create the folder if needed and check it can be written, before any work is done."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create output directory {str(path)!r}: {err.strerror or err}") from None
    if not path.is_dir():
        raise ValueError(f"output path {str(path)!r} exists and is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"output directory {str(path)!r} is not writable")
    return path
