"""``irib-demo``: degrade the bundled photo to ELQ, restore it, and write one labelled grid.

    irib-demo            # SD2.1-base + projector + restorer (weights needed)
    irib-demo --tiny     # the same path on a randomly initialised tiny pipeline ("untrained")

The grid (HQ | ELQ | LQ proxy | restored, with PSNR/SSIM) goes to irib-demo-output/irib_demo_grid.png;
an existing grid is only replaced with --overwrite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .common import (
    add_common_arguments,
    int_in,
    make_parser,
    path_arg,
    resolve_device,
    resolve_dtype,
    run_guarded,
    seed_value,
)
from .files import PlannedFile, check_output_dir, check_plan, save_image
from .images import bundled_image_path, center_crop_resize, load_image, pil_to_tensor, tensor_to_pil
from .pipeline_args import (
    add_model_arguments,
    add_restore_arguments,
    build_extractor,
    check_restore_arguments,
    load_pipeline,
    restore_kwargs,
)

PROG = "irib-demo"
GRID_NAME = "irib_demo_grid.png"
LABEL_HEIGHT = 34
MIN_SIZE, MAX_SIZE = 16, 4096
TINY_TITLE = "UNTRAINED tiny pipeline (random weights): shows the code path, not restoration quality"


def labelled_grid(panels: list[tuple[str, object]], title: str | None = None) -> Image.Image:
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


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, __doc__)
    parser.add_argument(
        "--tiny", action="store_true", help="Run on a randomly initialised tiny pipeline (no weights needed)."
    )
    parser.add_argument(
        "-o",
        "--output",
        "--output-dir",
        dest="output",
        type=path_arg,
        default="irib-demo-output",
        help="Output folder (default irib-demo-output).",
    )
    parser.add_argument(
        "--size",
        type=int_in(MIN_SIZE, MAX_SIZE),
        default=None,
        help=f"Crop size, {MIN_SIZE} to {MAX_SIZE} (default 512; 128 with --tiny).",
    )
    parser.add_argument(
        "--degradation-seed", type=seed_value, default=0, help="Seed of the ELQ degradation (default 0)."
    )
    add_model_arguments(parser)
    add_restore_arguments(parser)
    add_common_arguments(parser)
    return parser


def make_elq(size: int, seed: int):
    """The bundled HQ photo and its ELQ version, both (1, 3, size, size) in [0, 1]."""
    import torch

    from ..degradations import DegradationConfig, RealESRGANDegradation

    hq = pil_to_tensor(center_crop_resize(load_image(bundled_image_path()), size))[None]
    elq = RealESRGANDegradation(DegradationConfig.extreme())(hq, generator=torch.Generator().manual_seed(seed))
    return hq, elq


def make_pipeline(args: argparse.Namespace, device, dtype):
    """The tiny random pipeline (with --tiny, in the --dtype asked for) or the real one."""
    if not args.tiny:
        return load_pipeline(args, device, dtype)
    from ..tiny import make_tiny_pipeline

    return make_tiny_pipeline(with_adapter_sets=True).to(device, dtype)


def measured_panels(hq, elq, out) -> list[tuple[str, object]]:
    """HQ, ELQ, LQ proxy and restored, each labelled with its PSNR/SSIM against the HQ photo."""
    from ..metrics import psnr, ssim

    panels = [("HQ (reference)", hq[0])]
    print(f"{'panel':<12} {'PSNR dB':>8} {'SSIM':>7}")
    for name, image in (
        ("ELQ input", elq[0]),
        ("LQ proxy", out.lq_images.float().cpu()[0]),
        ("restored", out.images.float().cpu()[0]),
    ):
        p, s = psnr(image, hq[0]), ssim(image, hq[0])
        print(f"{name:<12} {p:8.2f} {s:7.4f}")
        panels.append((f"{name}\nPSNR {p:.2f} dB  SSIM {s:.3f}", image))
    return panels


def run(args: argparse.Namespace) -> int:
    check_restore_arguments(args)
    size = args.size or (128 if args.tiny else 512)
    path = Path(args.output) / GRID_NAME
    check_output_dir(Path(args.output))
    check_plan([PlannedFile(path, "demo grid")], [bundled_image_path()], args.overwrite)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    hq, elq = make_elq(size, args.degradation_seed)
    pipe = make_pipeline(args, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    extractor = build_extractor(args, device)
    out = pipe(elq, **restore_kwargs(args, extractor))
    title = TINY_TITLE if args.tiny else None
    save_image(labelled_grid(measured_panels(hq, elq, out), title), path, args.overwrite)
    print(f"prompts per round: {[r[0] for r in out.prompts]}")
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(PROG, args.debug, lambda: run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
