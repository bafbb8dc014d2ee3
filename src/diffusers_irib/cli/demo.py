"""``irib-demo``: degrade the bundled photo to ELQ, restore it, and write one labelled grid.

    irib-demo            # SD2.1-base + projector + restorer (weights needed)
    irib-demo --tiny     # the same path on a randomly initialised tiny pipeline ("untrained")

The grid (ELQ input | LQ proxy | restored | HQ, labelled, with the PSNR/SSIM of each panel against
the HQ photo; the layout of every grid of the package) goes to irib-demo-output/irib_demo_grid.png;
an existing grid is only replaced with --overwrite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..grids import GRID_COLUMNS, comparison_grid
from ..utils.arguments import (
    add_common_arguments,
    int_in,
    make_parser,
    path_arg,
    resolve_device,
    resolve_dtype,
    seed_value,
)
from ..utils.errors import run_guarded
from ..utils.image_files import bundled_image_path, center_crop_resize, load_image, pil_to_tensor
from ..utils.output_files import PlannedFile, check_output_dir, check_plan, save_image
from ..utils.pipeline_arguments import (
    add_model_arguments,
    add_restore_arguments,
    add_tiny_argument,
    build_extractor,
    check_restore_arguments,
    load_pipeline,
    restore_kwargs,
    tiny_pipeline,
)

PROG = "irib-demo"
GRID_NAME = "irib_demo_grid.png"
MIN_SIZE, MAX_SIZE = 16, 4096
TINY_TITLE = "UNTRAINED tiny pipeline (random weights): shows the code path, not restoration quality"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, __doc__)
    add_tiny_argument(parser)
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
    return tiny_pipeline(device, dtype) if args.tiny else load_pipeline(args, device, dtype)


def measured_panels(hq, elq, out) -> tuple[list, list[str]]:
    """ELQ, LQ proxy, restored and HQ (the grid's columns), with captions: the PSNR/SSIM of each
    against the HQ photo."""
    from ..metrics import psnr, ssim

    panels, captions = [], []
    print(f"{'panel':<12} {'PSNR dB':>8} {'SSIM':>7}")
    for name, image in (
        ("ELQ input", elq[0]),
        ("LQ proxy", out.lq_images.float().cpu()[0]),
        ("restored", out.images.float().cpu()[0]),
    ):
        p, s = psnr(image, hq[0]), ssim(image, hq[0])
        print(f"{name:<12} {p:8.2f} {s:7.4f}")
        panels.append(image)
        captions.append(f"PSNR {p:.2f} dB\nSSIM {s:.3f}")
    return panels + [hq[0]], captions + ["the reference"]


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
    panels, captions = measured_panels(hq, elq, out)
    grid = comparison_grid([panels], GRID_COLUMNS, [captions], title=TINY_TITLE if args.tiny else None)
    save_image(grid, path, args.overwrite)
    print(f"prompts per round: {out.prompts[0]}")
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(PROG, args.debug, lambda: run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
