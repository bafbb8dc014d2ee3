"""irib-make-testset: the paper's test sets, HQ crops and their degraded versions, reproducibly.

    irib-make-testset DIV2K_train_HR/ div2k-elq --preset elq --seed 0 --size 512 [--also-lq]

Every image is resized (short side) and centre-cropped to SIZE x SIZE, the protocol of the paper for
the DIV2K (800) and DIV8K (1,500) train sets, then degraded with a seed derived from --seed and its
file name, so adding or removing an image never changes the others. Writes OUT/hq/<name>.png,
OUT/<preset>/<name>.png (and OUT/lq/<name>.png with --also-lq) and OUT/degradations.json with every
image's seed and degradation parameters and each preset with its version. The degradation runs on
the CPU in float32: the same command gives byte-identical files on any run. Unreadable files are
reported and skipped; existing outputs are only replaced with --overwrite.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from ..utils.arguments import add_common_arguments, int_in, make_parser, path_arg, seed_value
from ..utils.errors import CLIError, run_guarded
from ..utils.image_files import center_crop_resize, load_image, pil_to_tensor, tensor_to_pil
from ..utils.output_files import PlannedFile, check_output_dir, check_plan, expand_inputs, save_image, save_json
from .degrade import Preset, resolve_preset

PROG = "irib-make-testset"
RECORD_NAME = "degradations.json"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, __doc__)
    parser.add_argument("source", metavar="SRC", type=path_arg, help="A folder of images or a glob pattern.")
    parser.add_argument("output", metavar="OUT", type=path_arg, help="The test-set folder to write.")
    parser.add_argument("--preset", default="elq", metavar="elq|lq|CONFIG.json", help="Degradation (default elq).")
    parser.add_argument("--also-lq", action="store_true", help="Also write the LQ version (preset lq) of every image.")
    parser.add_argument("--seed", type=seed_value, default=0, help="Base seed, 0 to 2**63 - 1 (default 0).")
    parser.add_argument("--size", type=int_in(16, 8192), default=512, help="Crop size in pixels (default 512).")
    add_common_arguments(parser)
    return parser


def image_seed(seed: int, name: str) -> int:
    """The seed of one image: a hash of the base seed and its file name (not its position in the list)."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def planned(paths: list[Path], presets: list[Preset], output: Path) -> list[PlannedFile]:
    files = [PlannedFile(output / RECORD_NAME, "record of the degradations")]
    for path in paths:
        files.append(PlannedFile(output / "hq" / f"{path.stem}.png", f"HQ crop of {path}"))
        files += [PlannedFile(output / p.name / f"{path.stem}.png", f"{p.name} image of {path}") for p in presets]
    return files


def make_one(path: Path, presets: list[Preset], args: argparse.Namespace, output: Path) -> dict:
    """Crop and degrade one image, write its PNGs, and return its record."""
    import torch

    from ..degradations import RealESRGANDegradation

    hq_image = center_crop_resize(load_image(path), args.size)
    hq = pil_to_tensor(hq_image)[None]
    seed = image_seed(args.seed, path.name)
    generator = torch.Generator().manual_seed(seed)  # one generator, presets in a fixed order
    record = {"source": path.name, "seed": seed, "degradations": {}}
    outputs = [(output / "hq" / f"{path.stem}.png", hq_image)]
    for preset in presets:
        degrade = RealESRGANDegradation(preset.config)
        params = degrade.sample(1, args.size, args.size, generator=generator)
        outputs.append((output / preset.name / f"{path.stem}.png", tensor_to_pil(degrade(hq, params)[0])))
        record["degradations"][preset.name] = params.to_dict()
    for target, image in outputs:
        save_image(image, target, args.overwrite)
    return record


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    presets = [resolve_preset(args.preset)] + ([resolve_preset("lq")] if args.also_lq else [])
    if len({p.name for p in presets}) != len(presets) or any(p.name == "hq" for p in presets):
        raise CLIError(f"the presets {[p.name for p in presets]} would write into one folder; use distinct names")
    paths = sorted(expand_inputs([args.source]), key=lambda p: p.name)
    if not paths:
        raise CLIError(f"no images found in {args.source!r}")
    stems = [p.stem for p in paths]  # outputs are named by stem: photo.png and photo.jpg would collide
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise CLIError(f"several inputs share the name(s) {clashes}: their seeds and outputs would collide")
    output = Path(args.output)
    check_output_dir(output)
    check_plan(planned(paths, presets, output), paths, args.overwrite)

    images, skipped = {}, {}
    for path in tqdm(paths, desc="test set", unit="image"):
        try:
            images[path.stem] = make_one(path, presets, args, output)
        except ValueError as err:  # unreadable: reported, skipped, counted
            skipped[path.name] = str(err)
            tqdm.write(f"skipped {path.name}: {err}")
    record = {
        "size": args.size,
        "seed": args.seed,
        "presets": {p.name: p.config.to_dict() for p in presets},
        "images": images,
        "skipped": skipped,
    }
    save_json(record, output / RECORD_NAME, args.overwrite, indent=1)
    print(
        f"wrote {len(images)} image(s) to {output} ({', '.join(['hq'] + [p.name for p in presets])}); "
        f"skipped {len(skipped)} unreadable file(s)"
    )
    return 0 if images else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(PROG, args.debug, lambda: run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
