"""``irib-restore``: restore damaged photos in a batch with IRIBRestorationPipeline.

    irib-restore -i photos/ -o restored/ --projector PROJECTOR --restorer RESTORER
    irib-restore a.png 'scans/*.jpg' -o out --ext auto --tile-size 512 --save-prompts
    irib-restore a.png --tiny            # a random tiny pipeline, no weights: the code path only (UNTRAINED)

Inputs are files, folders (their images) or glob patterns, as in Real-ESRGAN's and OSEDiff's
scripts. Every output path is checked before the models load: an existing file is only replaced
with --overwrite, an input never. One image that fails (unreadable, out of memory) is reported and
the batch goes on; the exit status is 1 if any image failed.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from ..utils.arguments import (
    add_common_arguments,
    float_in,
    make_parser,
    path_arg,
    resolve_device,
    resolve_dtype,
    safe_name,
)
from ..utils.errors import EXPECTED_ERRORS, CLIError, WriteError, describe_failure, run_guarded
from ..utils.image_files import load_image, tensor_to_pil, upright_size
from ..utils.output_files import (
    IMAGE_FORMATS,
    PlannedFile,
    add_input_arguments,
    check_output_dir,
    check_plan,
    expand_inputs,
    save_image,
    save_json,
)
from ..utils.pipeline_arguments import (
    TINY_WARNING,
    add_model_arguments,
    add_restore_arguments,
    add_tiny_argument,
    build_extractor,
    check_restore_arguments,
    load_pipeline,
    restore_kwargs,
    tiny_pipeline,
)

PROG = "irib-restore"
EXTENSIONS = ("png", "jpg", "webp", "auto")
MAX_UPSCALE = 16.0
MAX_SIDE = 8192  # pixels a side of the upscaled image
OOM_HINT = (
    "out of memory; try --tile-size 512 (smaller tiles need less memory), a smaller --upscale, or fewer --lfo-steps"
)
UPSCALE_HELP = (
    f"Bicubic pre-upscale factor in (0, {MAX_UPSCALE:g}] (default 1; the result may be at most {MAX_SIDE} px a side). "
    "The projector and restorer work at the input's resolution, so this sets the output size. The default is 1, "
    "not OSEDiff's 4, because IRIB's ELQ inputs (as irib-degrade writes them) are already at output size; "
    "use 4 for small LQ photos as OSEDiff does."
)


@dataclass
class Job:
    """One input image and the files it will produce (None: not written)."""

    source: Path
    restored: Path
    lq_proxy: Path | None
    prompts: Path | None


# --------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, __doc__)
    add_input_arguments(parser)
    parser.add_argument(
        "-o",
        "--output",
        "--output-dir",
        dest="output",
        type=path_arg,
        default="irib-restore-output",
        help="Output folder (default irib-restore-output).",
    )
    parser.add_argument(
        "--suffix",
        type=safe_name,
        default="restored",
        help="Output names are <name>_<suffix>.<ext> (default restored).",
    )
    parser.add_argument(
        "--ext", choices=EXTENSIONS, default="png", help="Output format; auto keeps the input's (default png)."
    )
    parser.add_argument("--upscale", type=float_in(0.0, MAX_UPSCALE), default=1.0, help=UPSCALE_HELP)
    parser.add_argument(
        "--save-prompts", action="store_true", help="Write every round's prompts to <name>_prompts.json."
    )
    parser.add_argument("--no-lq-proxy", action="store_true", help="Do not write <name>_lq_proxy.<ext>.")
    add_tiny_argument(parser)
    add_model_arguments(parser)
    add_restore_arguments(parser)
    add_common_arguments(parser)
    return parser


# --------------------------------------------------------------------------- planning
def output_ext(source: Path, ext: str) -> str:
    if ext != "auto":
        return "." + ext
    suffix = source.suffix.lower()
    return suffix if suffix in IMAGE_FORMATS else ".png"


def plan_job(source: Path, args: argparse.Namespace) -> Job:
    out, stem, ext = Path(args.output), source.stem, output_ext(source, args.ext)
    name = f"{stem}_{args.suffix}{ext}" if args.suffix else f"{stem}{ext}"
    return Job(
        source=source,
        restored=out / name,
        lq_proxy=None if args.no_lq_proxy else out / f"{stem}_lq_proxy{ext}",
        prompts=out / f"{stem}_prompts.json" if args.save_prompts else None,
    )


def planned_files(jobs: list[Job]) -> list[PlannedFile]:
    files = []
    for job in jobs:
        files.append(PlannedFile(job.restored, f"restored image of {str(job.source)!r}"))
        if job.lq_proxy is not None:
            files.append(PlannedFile(job.lq_proxy, f"LQ proxy of {str(job.source)!r}"))
        if job.prompts is not None:
            files.append(PlannedFile(job.prompts, f"prompts of {str(job.source)!r}"))
    return files


def plan(args: argparse.Namespace) -> list[Job]:
    """Every input and output path, checked as a whole before any model is loaded."""
    specs = [*args.images, *args.input]
    if not specs:
        raise CLIError("give at least one input image (IMAGE or -i/--input FILE|FOLDER|GLOB)")
    check_output_dir(Path(args.output))
    jobs = [plan_job(source, args) for source in expand_inputs(specs)]
    check_plan(planned_files(jobs), [job.source for job in jobs], args.overwrite)
    return jobs


def check_size(job: Job, upscale: float) -> None:
    """Refuse (from the header alone) an image whose upscaled size would be unreasonable."""
    width, height = upright_size(job.source)
    out_w, out_h = round(width * upscale), round(height * upscale)
    if max(out_w, out_h) > MAX_SIDE:
        raise ValueError(
            f"{str(job.source)!r} is {width}x{height} px; --upscale {upscale:g} would make it {out_w}x{out_h}, "
            f"more than {MAX_SIDE} px a side: lower --upscale"
        )


def preflight(jobs: list[Job], upscale: float, debug: bool) -> tuple[list[Job], list[Job]]:
    """Read every header now: unreadable or oversized images are reported before models load."""
    ready, failed = [], []
    for job in jobs:
        try:
            check_size(job, upscale)
            ready.append(job)
        except ValueError as err:
            if debug:
                raise
            report(job, str(err))
            failed.append(job)
    return ready, failed


# --------------------------------------------------------------------------- restoring
def report(job: Job, message: str) -> None:
    from tqdm.auto import tqdm

    where = "" if str(job.source) in message else f" {str(job.source)!r}"  # most messages name the file
    tqdm.write(f"{PROG}: skipped{where}: {message}", file=sys.stderr)


def restore_one(pipe, job: Job, args: argparse.Namespace, extractor) -> list[str]:
    """Restore one image, write its files, and return the prompt of every round."""
    image = load_image(job.source)
    out = pipe(image, upscale=args.upscale, **restore_kwargs(args, extractor))
    prompts = out.prompts[0]  # the one image's prompts, by round
    save_image(tensor_to_pil(out.images[0]), job.restored, args.overwrite)
    if job.lq_proxy is not None:
        save_image(tensor_to_pil(out.lq_images[0]), job.lq_proxy, args.overwrite)
    if job.prompts is not None:
        record = {
            "input": str(job.source),
            "restored": str(job.restored),
            "projector_prompts": prompts[:-1],
            "restorer_prompt": prompts[-1],
        }
        save_json(record, job.prompts, args.overwrite, indent=2)
    return prompts


def restore_all(pipe, jobs: list[Job], args: argparse.Namespace, extractor) -> list[Job]:
    """Restore every image, going on after one fails; returns the ones that failed."""
    from tqdm.auto import tqdm

    failed = []
    for job in tqdm(jobs, desc="restoring", unit="image"):
        try:
            prompts = restore_one(pipe, job, args, extractor)
        except WriteError:
            raise  # a full disk or a lost folder: the next image would fail the same way
        except EXPECTED_ERRORS as err:
            if args.debug:
                raise
            report(job, describe_failure(err, OOM_HINT))
            failed.append(job)
            continue
        tqdm.write(f"{job.source.name}: prompts per round {prompts}")
    return failed


def summary(total: int, failed: list[Job], output: str) -> str:
    line = f"restored {total - len(failed)} of {total} image(s) into {output}"
    if failed:
        names = ", ".join(repr(str(job.source)) for job in failed[:5]) + (" ..." if len(failed) > 5 else "")
        line += f"; {len(failed)} failed: {names}"
    return line


# --------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> int:
    check_restore_arguments(args)
    jobs = plan(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    ready, failed = preflight(jobs, args.upscale, args.debug)
    if ready:
        if args.tiny:
            print(f"{PROG}: {TINY_WARNING}", file=sys.stderr)
        pipe = tiny_pipeline(device, dtype) if args.tiny else load_pipeline(args, device, dtype)
        pipe.set_progress_bar_config(disable=True)
        extractor = build_extractor(args, device)
        failed += restore_all(pipe, ready, args, extractor)
    print(summary(len(jobs), failed, args.output))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(PROG, args.debug, lambda: run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
