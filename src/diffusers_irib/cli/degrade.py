"""``irib-degrade``: make LQ / ELQ versions of photos with the Real-ESRGAN degradation presets.

    irib-degrade --demo                          # the bundled photo
    irib-degrade -i photos/ -o degraded/ --preset elq --preset my_preset.json

Each image is centre-cropped and resized to SIZE, then written as <name>_hq.png and, for each
preset, <name>_<preset>.png and <name>_<preset>_params.json (config, seed and the replayable
parameters). Every output path is checked first: existing files are only replaced with
--overwrite, an input never.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..utils.arguments import (
    add_common_arguments,
    int_in,
    is_safe_name,
    make_parser,
    path_arg,
    resolve_device,
    seed_value,
)
from ..utils.errors import CLIError, run_guarded
from ..utils.image_files import bundled_image_path, center_crop_resize, load_image, pil_to_tensor, tensor_to_pil
from ..utils.output_files import (
    PlannedFile,
    add_input_arguments,
    check_output_dir,
    check_plan,
    expand_inputs,
    save_image,
    save_json,
)

PROG = "irib-degrade"
BUILTIN_PRESETS = ("lq", "elq")
MIN_SIZE, MAX_SIZE = 8, 8192


@dataclass
class Preset:
    """A degradation config and where it came from (named in messages)."""

    name: str
    config: object  # DegradationConfig
    spec: str


# --------------------------------------------------------------------------- arguments
def degrade_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, __doc__)
    add_input_arguments(parser)
    parser.add_argument(
        "--demo", action="store_true", help="Degrade the bundled photo (NASA astronaut, public domain)."
    )
    parser.add_argument(
        "--preset",
        action="append",
        metavar="lq|elq|CONFIG.json",
        help="Degradation preset or JSON config; repeat for several. Default: lq and elq.",
    )
    parser.add_argument("--seed", type=seed_value, default=0, help="Random seed, 0 to 2**63 - 1 (default 0).")
    parser.add_argument(
        "-o",
        "--output",
        "--output-dir",
        dest="output",
        type=path_arg,
        default=None,
        help="Output folder (default irib-degrade-output; irib-demo-output with --demo).",
    )
    parser.add_argument(
        "--size",
        type=int_in(MIN_SIZE, MAX_SIZE),
        default=512,
        help=f"Centre-crop / resize inputs to SIZE x SIZE, {MIN_SIZE} to {MAX_SIZE} (default 512).",
    )
    parser.add_argument("--no-resize-back", action="store_true", help="Keep the LQ at SIZE / scale instead of SIZE.")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu).")
    parser.add_argument(
        "--batch-size",
        type=int_in(1, 4096),
        default=16,
        help="Images degraded at once (default 16); the files do not depend on it, only the memory does.",
    )
    add_common_arguments(parser)
    return parser


# --------------------------------------------------------------------------- presets
def resolve_preset(spec: str) -> Preset:
    """A preset name (``lq``, ``elq``) or the path of a JSON config file."""
    from ..degradations import DegradationConfig

    if spec.endswith(".json") or os.path.sep in spec or (os.path.altsep and os.path.altsep in spec):
        config = load_config_file(spec)
    else:
        try:
            config = DegradationConfig.from_preset(spec)
        except ValueError as err:
            raise CLIError(f"--preset {spec!r}: {err}") from None
    if not is_safe_name(config.preset_name):
        raise CLIError(
            f"degradation config {spec!r} has preset_name {config.preset_name!r}: the name becomes part of the output "
            "file names, so it must be a plain name of letters, digits, '_', '-' and '.' (no '/' or '..')"
        )
    return Preset(config.preset_name, config, spec)


def load_config_file(spec: str):
    """Read a JSON degradation config, with errors that name the file and the field."""
    from ..degradations import DegradationConfig

    if os.path.isdir(spec):
        raise CLIError(f"degradation config {spec!r} is a folder, not a JSON file")
    if not os.path.isfile(spec):
        raise CLIError(f"degradation config file {spec!r} does not exist")
    try:
        with open(spec, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise CLIError(f"degradation config {spec!r} is not readable JSON: {err}") from None
    try:
        check_sequence_fields(data, DegradationConfig)
        return DegradationConfig.from_dict(data)
    except (ValueError, TypeError) as err:
        raise CLIError(f"degradation config {spec!r}: {err}") from None


def check_sequence_fields(data, config_class) -> None:
    """A scalar where a (min, max) range or a list belongs is named here, field by field."""
    import dataclasses

    if not isinstance(data, dict):
        return  # from_dict says what is wrong
    for field in dataclasses.fields(config_class):
        default = field.default if field.default is not dataclasses.MISSING else None
        if isinstance(default, tuple) and field.name in data and not isinstance(data[field.name], list):
            example = json.dumps(list(default))
            raise ValueError(f"{field.name} must be a JSON list such as {example}, got {json.dumps(data[field.name])}")


def check_size_fits(size: int, presets: list[Preset]) -> None:
    """Every preset downscales by its ``scale``: a smaller crop would leave less than a pixel."""
    for preset in presets:
        if size < preset.config.scale:
            raise CLIError(
                f"--size {size} is smaller than the final downscale of preset {preset.name!r} "
                f"({preset.config.scale}): use --size {preset.config.scale} or more"
            )


# --------------------------------------------------------------------------- planning
def hq_path(output: Path, stem: str) -> Path:
    return output / f"{stem}_hq.png"


def preset_paths(output: Path, stem: str, preset_name: str) -> tuple[Path, Path]:
    """The degraded image and its parameters: the plan and the writing both name files here."""
    return output / f"{stem}_{preset_name}.png", output / f"{stem}_{preset_name}_params.json"


def planned_files(paths: list[Path], presets: list[Preset], output: Path) -> list[PlannedFile]:
    files = []
    for path in paths:
        source = repr(str(path))
        files.append(PlannedFile(hq_path(output, path.stem), f"HQ crop of {source}"))
        for preset in presets:
            image, params = preset_paths(output, path.stem, preset.name)
            files.append(PlannedFile(image, f"{preset.name!r} image of {source} (--preset {preset.spec})"))
            files.append(PlannedFile(params, f"{preset.name!r} parameters of {source}"))
    return files


def input_paths(args: argparse.Namespace) -> list[Path]:
    specs = [*args.images, *args.input]
    paths = expand_inputs(specs) if specs else []
    if args.demo:
        paths.append(bundled_image_path())
    if not paths:
        raise CLIError("give at least one IMAGE (or -i/--input FILE|FOLDER|GLOB), or --demo")
    return paths


# --------------------------------------------------------------------------- degrading
def to_batch(images: list, device):
    import torch

    return torch.stack([pil_to_tensor(im) for im in images]).to(device)


def sample_all(count: int, presets: list[Preset], args: argparse.Namespace, device) -> dict:
    """Every image's parameters for every preset, drawn up front from one seeded generator, so that
    the files do not depend on how the images are split into batches."""
    import torch

    from ..degradations import RealESRGANDegradation

    generator = torch.Generator().manual_seed(args.seed)
    sampled = {}
    for preset in presets:
        degrade = RealESRGANDegradation(preset.config)
        sampled[preset.name] = (
            degrade,
            degrade.sample(count, args.size, args.size, generator=generator, device=device),
        )
    return sampled


def degrade_batch(hq, indices: list[int], sampled: dict, args: argparse.Namespace) -> dict:
    """Every preset on one batch of images (their indices in the whole run)."""
    results = {}
    for name, (degrade, params) in sampled.items():
        mine = params.select(indices)
        results[name] = (degrade(hq, mine, resize_back=not args.no_resize_back), mine, degrade.config)
    return results


def write_outputs(paths: list[Path], images, hq, results: dict, args: argparse.Namespace, output: Path) -> int:
    """Write every file and print one line per image; returns how many files were written."""
    from ..metrics import psnr

    written = 0
    for i, path in enumerate(paths):
        stem = path.stem
        save_image(images[i], hq_path(output, stem), args.overwrite)
        line = [f"{stem}:"]
        for name, (degraded, params, config) in results.items():
            image_path, params_path = preset_paths(output, stem, name)
            save_image(tensor_to_pil(degraded[i]), image_path, args.overwrite)
            record = {"config": config.to_dict(), "seed": args.seed, "params": params.select([i]).to_dict()}
            save_json(record, params_path, args.overwrite)
            if degraded.shape[-2:] == hq.shape[-2:]:
                line.append(f"{name} PSNR {psnr(degraded[i], hq[i]):.2f} dB")
            else:
                line.append(f"{name} {degraded.shape[-1]}x{degraded.shape[-2]}")
        written += 1 + 2 * len(results)
        print("  ".join(line))
    return written


def read_inputs(paths: list[Path], size: int) -> list:
    """Every image, cropped to SIZE; one unreadable file stops the run before anything is written."""
    try:
        return [center_crop_resize(load_image(p), size) for p in paths]
    except ValueError as err:
        raise CLIError(str(err)) from None


def run(args: argparse.Namespace) -> int:
    paths = input_paths(args)
    presets = [resolve_preset(spec) for spec in (args.preset or BUILTIN_PRESETS)]
    check_size_fits(args.size, presets)
    output = Path(args.output or ("irib-demo-output" if args.demo else "irib-degrade-output"))
    check_output_dir(output)
    check_plan(planned_files(paths, presets, output), paths, args.overwrite)
    device = resolve_device(args.device)
    images = read_inputs(paths, args.size)  # 8-bit crops: every file is read before any is written
    sampled = sample_all(len(paths), presets, args, device)
    written = 0
    batch_size = args.batch_size
    if args.no_resize_back and any(getattr(p.config, "scale_range", None) for p in presets):
        batch_size = 1  # a final scale drawn per image gives each image its own size (the files are the same)
    for start in range(0, len(paths), batch_size):  # float tensors for one batch at a time
        indices = list(range(start, min(start + batch_size, len(paths))))
        hq = to_batch([images[i] for i in indices], device)
        results = degrade_batch(hq, indices, sampled, args)
        written += write_outputs([paths[i] for i in indices], [images[i] for i in indices], hq, results, args, output)
    print(f"wrote {written} files to {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = degrade_parser().parse_args(argv)
    return run_guarded(PROG, args.debug, lambda: run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
