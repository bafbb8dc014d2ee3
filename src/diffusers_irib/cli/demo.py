"""``irib-demo``: degrade the bundled photo to ELQ, restore it, and write one labelled grid.

    irib-demo            # SD2.1-base + projector + restorer (weights needed)
    irib-demo --tiny     # the same path on a randomly initialised tiny pipeline ("untrained")
"""

from __future__ import annotations

import argparse
import sys

import torch
from PIL import Image, ImageDraw, ImageFont

from ..degradations import DegradationConfig, RealESRGANDegradation
from ..metrics import psnr, ssim
from .common import (
    bundled_image_path,
    center_crop_resize,
    load_image,
    pil_to_tensor,
    prepare_output_dir,
    save_png,
    tensor_to_pil,
)
from .restore import (
    add_model_arguments,
    add_restore_arguments,
    build_extractor,
    load_pipeline,
    resolve_device_dtype,
    restore_kwargs,
)

GRID_NAME = "irib_demo_grid.png"
LABEL_HEIGHT = 34


def labelled_grid(panels: list[tuple[str, torch.Tensor]], title: str | None = None) -> Image.Image:
    """Panels side by side, each with its label underneath; an optional title bar on top."""
    images = [tensor_to_pil(t) for _, t in panels]
    w, h = images[0].size
    top = LABEL_HEIGHT if title else 0
    grid = Image.new("RGB", (w * len(images), h + LABEL_HEIGHT + top), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    if title:
        draw.text((6, 6), title, fill=(180, 0, 0), font=font)
    for i, ((label, _), image) in enumerate(zip(panels, images)):
        grid.paste(image, (i * w, top))
        for j, line in enumerate(label.split("\n")):
            draw.text((i * w + 6, top + h + 4 + 14 * j), line, fill="black", font=font)
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="irib-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="Run on a randomly initialised tiny pipeline (no weights needed).")
    parser.add_argument("--output-dir", default="irib-demo-output")
    parser.add_argument("--size", type=int, default=None, help="Crop size (default 512; 128 with --tiny).")
    parser.add_argument("--degradation-seed", type=int, default=0, help="Seed of the ELQ degradation (default 0).")
    add_model_arguments(parser)
    add_restore_arguments(parser)
    args = parser.parse_args(argv)
    size = args.size or (128 if args.tiny else 512)
    try:
        output_dir = prepare_output_dir(args.output_dir)
        device, dtype = resolve_device_dtype(args)
    except (ValueError, RuntimeError) as err:
        parser.error(str(err))

    # 1. The HQ photo and its ELQ version (fixed seed)
    hq = pil_to_tensor(center_crop_resize(load_image(bundled_image_path()), size))[None]
    elq = RealESRGANDegradation(DegradationConfig.extreme())(hq, generator=torch.Generator().manual_seed(args.degradation_seed))

    # 2. The pipeline
    if args.tiny:
        from ..tiny import make_tiny_pipeline

        pipe = make_tiny_pipeline(with_adapter_sets=True).to(device)
    else:
        pipe = load_pipeline(args, device, dtype)
    try:
        extractor = build_extractor(args, device)
    except (ValueError, ImportError, FileNotFoundError, OSError) as err:
        parser.error(str(err))

    # 3. Restore and measure every panel against the HQ photo
    out = pipe(elq, **restore_kwargs(args, extractor))
    restored, lq = out.images.float(), out.lq_images.float()
    panels = [("HQ (reference)", hq[0])]
    print(f"{'panel':<12} {'PSNR dB':>8} {'SSIM':>7}")
    for name, image in (("ELQ input", elq[0]), ("LQ proxy", lq[0]), ("restored", restored[0])):
        p, s = psnr(image, hq[0]), ssim(image, hq[0])
        print(f"{name:<12} {p:8.2f} {s:7.4f}")
        panels.append((f"{name}\nPSNR {p:.2f} dB  SSIM {s:.3f}", image))
    title = "UNTRAINED tiny pipeline (random weights): shows the code path, not restoration quality" if args.tiny else None
    path = output_dir / GRID_NAME
    save_png(labelled_grid(panels, title), path)
    print(f"prompts per round: {[r[0] for r in out.prompts]}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
