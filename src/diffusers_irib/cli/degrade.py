"""``irib-degrade``: make LQ / ELQ versions of photos with the Real-ESRGAN degradation presets."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from ..degradations import DegradationConfig, RealESRGANDegradation
from ..metrics import psnr
from .common import (
    bundled_image_path,
    center_crop_resize,
    load_image,
    pil_to_tensor,
    prepare_output_dir,
    save_json,
    save_png,
    tensor_to_pil,
)


# --------------------------------------------------------------------------- irib-degrade
def resolve_preset(spec: str) -> DegradationConfig:
    """A preset name (``lq``, ``elq``) or the path of a JSON config file."""
    if spec.endswith(".json") or os.path.sep in spec:
        if not os.path.isfile(spec):
            raise ValueError(f"degradation config file {spec!r} does not exist")
        return DegradationConfig.from_json_file(spec)
    return DegradationConfig.from_preset(spec)


def degrade_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="irib-degrade",
        description="Degrade photos with the Real-ESRGAN pipeline (LQ and extreme ELQ presets).",
    )
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="Image files to degrade.")
    parser.add_argument("--demo", action="store_true", help="Degrade the bundled photo (NASA astronaut, public domain).")
    parser.add_argument(
        "--preset",
        action="append",
        metavar="lq|elq|CONFIG.json",
        help="Degradation preset or JSON config; repeat for several. Default: lq and elq.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Random seed (default 0).")
    parser.add_argument("--output-dir", default=None, help="Output folder (default: irib-degrade-output).")
    parser.add_argument("--size", type=int, default=512, help="Centre-crop / resize inputs to SIZE x SIZE (default 512).")
    parser.add_argument("--no-resize-back", action="store_true", help="Keep the LQ at SIZE / scale instead of SIZE.")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu).")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = degrade_parser()
    args = parser.parse_args(argv)
    paths = list(args.images) + ([str(bundled_image_path())] if args.demo else [])
    if not paths:
        parser.error("give at least one IMAGE, or --demo")
    if args.size < 8:
        parser.error(f"--size must be at least 8, got {args.size}")
    stems = [Path(p).stem for p in paths]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        parser.error(f"several inputs share the name {duplicates}: their outputs would overwrite each other")
    try:
        configs = [resolve_preset(spec) for spec in (args.preset or ["lq", "elq"])]
        device = torch.device(args.device)
        images = [center_crop_resize(load_image(p), args.size) for p in paths]
        output_dir = prepare_output_dir(args.output_dir or ("irib-demo-output" if args.demo else "irib-degrade-output"))
    except (ValueError, RuntimeError) as err:
        parser.error(str(err))

    hq = torch.stack([pil_to_tensor(im) for im in images]).to(device)
    generator = torch.Generator().manual_seed(args.seed)
    results = {}
    for config in configs:
        degrade = RealESRGANDegradation(config)
        params = degrade.sample(len(paths), args.size, args.size, generator=generator, device=device)
        results[config.preset_name] = (degrade(hq, params, resize_back=not args.no_resize_back), params, config)

    for i, stem in enumerate(stems):
        save_png(images[i], output_dir / f"{stem}_hq.png")
        line = [f"{stem}:"]
        for name, (degraded, params, config) in results.items():
            save_png(tensor_to_pil(degraded[i]), output_dir / f"{stem}_{name}.png")
            record = {"config": config.to_dict(), "seed": args.seed, "params": params.select([i]).to_dict()}
            save_json(record, output_dir / f"{stem}_{name}_params.json")
            if degraded.shape[-2:] == hq.shape[-2:]:
                line.append(f"{name} PSNR {psnr(degraded[i], hq[i]):.2f} dB")
            else:
                line.append(f"{name} {degraded.shape[-1]}x{degraded.shape[-2]}")
        print("  ".join(line))
    print(f"wrote {len(stems) * (1 + 2 * len(results))} files to {output_dir}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
