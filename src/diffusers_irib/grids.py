"""One comparison grid for the demo, the training validation and the evaluation.

Every grid reads the same way, left to right along the data flow: ELQ input | LQ proxy | restored |
HQ reference (:data:`GRID_COLUMNS`), one row per image, each column labelled on top. The evaluation
fills the middle with one column per method; the training validation of ``--mode restorer`` starts
from an LQ input. Small panels are enlarged by an integer factor with nearest-neighbour sampling, so
a 64 px validation crop shows its real pixels, only bigger, and the labels stay readable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["GRID_COLUMNS", "MIN_PANEL_SIZE", "comparison_grid"]

#: The columns of every grid, in this order.
GRID_COLUMNS = ("ELQ input", "LQ proxy", "restored", "HQ (reference)")
#: Panels whose shorter side is below this are enlarged (integer factor, nearest neighbour).
MIN_PANEL_SIZE = 256
_TITLE_COLOUR = (180, 0, 0)
_MISSING_COLOUR = (200, 200, 200)
_PAD = 4


def as_pil(panel: Any) -> Image.Image:
    """A panel as 8-bit RGB: a PIL image, a (3, H, W) tensor in [0, 1] (any dtype or device), or an
    (H, W, 3) array (uint8, or float in [0, 1])."""
    if isinstance(panel, Image.Image):
        return panel.convert("RGB")
    if hasattr(panel, "detach"):  # a torch tensor, without importing torch here
        panel = panel.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    array = np.asarray(panel)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"a grid panel must be RGB (H x W x 3 or 3 x H x W), got shape {array.shape}")
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _fitting_font(texts: Sequence[str], width: int, largest: int) -> ImageFont.ImageFont:
    """The largest font, ``largest`` to 10 px, in which every line of ``texts`` fits ``width``."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = [line for text in texts for line in text.split("\n")] or [""]
    for size in range(largest, 9, -1):
        font = _font(size)
        if all(probe.textlength(line, font=font) <= width - 2 * _PAD for line in lines):
            return font
    return _font(10)


def _line_height(font: ImageFont.ImageFont) -> int:
    left, top, right, bottom = font.getbbox("Hgy")
    return bottom + 3


def comparison_grid(
    rows: Sequence[Sequence[Any]],
    labels: Sequence[str] = GRID_COLUMNS,
    captions: Optional[Sequence[Sequence[str]]] = None,
    title: Optional[str] = None,
    min_panel_size: int = MIN_PANEL_SIZE,
) -> Image.Image:
    """Images side by side, one row per image, a label above every column.

    Args:
        rows: per image, one panel per column (see :func:`as_pil`); ``None`` draws a grey "n/a" panel
            (e.g. an LQ proxy that was not kept). Every panel is resized (bicubic) to the size of the
            first one, then enlarged by the smallest integer factor (nearest neighbour) that makes its
            shorter side at least ``min_panel_size``.
        labels: the column labels, one per column (default :data:`GRID_COLUMNS`).
        captions: optional text under each panel (e.g. its PSNR), same shape as ``rows``.
        title: optional line above the labels, in red (e.g. that the weights are random).
        min_panel_size: see ``rows``; 0 keeps the panels' own size.
    """
    if not rows or not rows[0]:
        raise ValueError("a grid needs at least one row with one panel")
    columns = len(labels)
    if any(len(row) != columns for row in rows):
        raise ValueError(f"every grid row needs {columns} panels (one per label {list(labels)})")
    if captions is not None and (len(captions) != len(rows) or any(len(c) != columns for c in captions)):
        raise ValueError("captions must have the shape of rows")
    first = next((p for row in rows for p in row if p is not None), None)
    if first is None:
        raise ValueError("a grid needs at least one panel that is not None")
    w, h = as_pil(first).size
    scale = max(1, math.ceil(min_panel_size / min(w, h))) if min_panel_size else 1
    pw, ph = w * scale, h * scale

    largest = max(16, pw // 20)  # 16 px text on 256 px panels, more on large ones
    label_font = _fitting_font(labels, pw, largest)
    caption_texts = [text for row in captions or [] for text in row]
    caption_font = _fitting_font(caption_texts, pw, largest) if caption_texts else label_font
    header = _line_height(label_font) + 2 * _PAD
    caption_lines = max((text.count("\n") + 1 for text in caption_texts), default=0)
    below = caption_lines * _line_height(caption_font) + 2 * _PAD if caption_texts else 0
    title_font = _fitting_font([title], pw * columns, largest) if title else label_font
    top = (_line_height(title_font) + 2 * _PAD) if title else 0
    grid = Image.new("RGB", (pw * columns, top + header + (ph + below) * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((_PAD, _PAD), title, fill=_TITLE_COLOUR, font=title_font)
    for j, label in enumerate(labels):
        x = j * pw + (pw - draw.textlength(label, font=label_font)) / 2
        draw.text((x, top + _PAD), label, fill="black", font=label_font)
    for i, row in enumerate(rows):
        y = top + header + i * (ph + below)
        for j, panel in enumerate(row):
            if panel is None:
                tile = Image.new("RGB", (pw, ph), _MISSING_COLOUR)
                ImageDraw.Draw(tile).text((_PAD, _PAD), "n/a", fill="black", font=label_font)
            else:
                tile = as_pil(panel)
                if tile.size != (w, h):
                    tile = tile.resize((w, h), Image.BICUBIC)
                if scale > 1:
                    tile = tile.resize((pw, ph), Image.NEAREST)
            grid.paste(tile, (j * pw, y))
            if captions is not None:
                for k, line in enumerate(captions[i][j].split("\n")):
                    draw.text(
                        (j * pw + _PAD, y + ph + _PAD + k * _line_height(caption_font)),
                        line,
                        fill="black",
                        font=caption_font,
                    )
    return grid
