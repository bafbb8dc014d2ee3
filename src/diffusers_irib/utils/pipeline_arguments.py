"""The pipeline options ``irib-restore``, ``irib-demo``, ``irib-web`` and ``irib-evaluate`` share: models (or ``--tiny``),
prompts, tiling, seed.

Every option is checked right after parsing (ranges in the argument types, combinations in
:func:`check_restore_arguments`), so a mistake is reported before minutes of model loading.
"""

from __future__ import annotations

import argparse
import os

from ..color_fixes import COLOR_FIXES as LIBRARY_COLOR_FIXES
from ..defaults import DEFAULT_LFO_STEPS
from .arguments import DTYPE_NAMES, int_in, seed_value
from .errors import CLIError, first_line
from .model_sources import DEFAULT_BASE_MODEL, DEFAULT_PROJECTOR, DEFAULT_RESTORER, ModelSpec, missing_models_message

EXTRACTORS = ("none", "clip", "caption", "ram")
COLOR_FIXES = (*LIBRARY_COLOR_FIXES, "none")  # the library's colour fixes, and none
MAX_LFO_STEPS = 10
MIN_TILE, MAX_TILE = 64, 8192  # pixels; tiles are multiples of 8 (the SD VAE's factor)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base", default=DEFAULT_BASE_MODEL, help=f"SD2.1-base folder or Hub id (default {DEFAULT_BASE_MODEL})."
    )
    parser.add_argument("--projector", default=DEFAULT_PROJECTOR, help="Projector adapter set: folder or Hub id.")
    parser.add_argument("--restorer", default=DEFAULT_RESTORER, help="Restorer adapter set: folder or Hub id.")
    parser.add_argument(
        "--dtype", choices=DTYPE_NAMES, default=None, help="Default: fp16 on CUDA, fp32 on CPU (fp16 needs a GPU)."
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu).")


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lfo-steps",
        type=int_in(0, MAX_LFO_STEPS),
        default=DEFAULT_LFO_STEPS,
        help=f"Look Forward Once refinements, 0 to {MAX_LFO_STEPS} (default {DEFAULT_LFO_STEPS}: the paper's best, "
        "Table 1 'LFO x2'; without --prompt or --extractor the rounds repeat the first).",
    )
    parser.add_argument("--prompt", default=None, help="Use this prompt in every round instead of an extractor.")
    parser.add_argument("--extractor", choices=EXTRACTORS, default="none", help="Prompt extractor (default none).")
    parser.add_argument("--extractor-model", default=None, help="CLIP/captioner id or path, or the RAM checkpoint.")
    parser.add_argument("--dape-checkpoint", default=None, help="DAPE checkpoint for --extractor ram.")
    parser.add_argument("--color-fix", choices=COLOR_FIXES, default="adain", help="Colour correction (default adain).")
    parser.add_argument(
        "--tile-size",
        type=int_in(MIN_TILE, MAX_TILE, multiple_of=8),
        default=None,
        help=f"Restore large images in overlapping tiles of this many pixels ({MIN_TILE} to {MAX_TILE}, a multiple of 8); "
        "less memory, e.g. 512 (default: no tiling).",
    )
    parser.add_argument(
        "--tile-overlap",
        type=int_in(0, MAX_TILE),
        default=None,
        help="Overlap of neighbouring tiles in pixels, less than --tile-size (default: a third of it).",
    )
    parser.add_argument(
        "--seed", type=seed_value, default=None, help="Sample the VAE posterior with this seed (default: its mean)."
    )


def check_restore_arguments(args: argparse.Namespace) -> None:
    """Combinations the argument types cannot see; an option that would be ignored is an error."""
    if args.tile_overlap is not None:
        if args.tile_size is None:
            raise CLIError("--tile-overlap needs --tile-size (without tiles there is nothing to overlap)")
        if args.tile_overlap >= args.tile_size:
            raise CLIError(f"--tile-overlap must be less than --tile-size ({args.tile_size}), got {args.tile_overlap}")
    if args.prompt is not None and args.extractor != "none":
        raise CLIError(
            f"--prompt replaces the extractor's prompts: give --prompt or --extractor {args.extractor}, not both"
        )
    if args.extractor_model is not None and args.extractor == "none":
        raise CLIError("--extractor-model needs --extractor clip, caption or ram")
    if args.dape_checkpoint is not None and args.extractor != "ram":
        raise CLIError("--dape-checkpoint is only used with --extractor ram")
    if args.extractor == "ram":
        check_ram_files(args)


def check_ram_files(args: argparse.Namespace) -> None:
    if not args.extractor_model:
        raise CLIError("--extractor ram needs --extractor-model PATH to the RAM checkpoint (ram_swin_large_14m.pth)")
    for flag, path in (("--extractor-model", args.extractor_model), ("--dape-checkpoint", args.dape_checkpoint)):
        if path is not None and not os.path.isfile(path):
            raise CLIError(f"{flag} {path!r}: no such file (the RAM/DAPE checkpoint must be a local file)")


TINY_WARNING = "UNTRAINED tiny pipeline (random weights): the outputs show the code path, not restoration quality"


def add_tiny_argument(parser: argparse.ArgumentParser) -> None:
    """``--tiny``, as irib-demo, irib-restore and irib-web share it (a missing model's message names it)."""
    parser.set_defaults(tiny_command=f"{parser.prog} --tiny")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="Use a randomly initialised tiny pipeline instead of the models (no weights needed; UNTRAINED output).",
    )


def tiny_pipeline(device, dtype):
    """The random tiny pipeline with projector and restorer sets, on ``device`` in ``dtype``."""
    from ..tiny import make_tiny_pipeline

    pipe = make_tiny_pipeline(with_adapter_sets=True).to(device)
    return pipe if pipe.dtype == dtype else pipe.to(dtype=dtype)  # built in float32


def load_pipeline(args: argparse.Namespace, device, dtype):
    """Check every model first (listing all that are missing, and the command's ``--tiny`` that runs
    without them), then load the pipeline."""
    specs = [
        ModelSpec("base", args.base),
        ModelSpec("projector", args.projector),
        ModelSpec("restorer", args.restorer),
    ]
    message = missing_models_message(specs, tiny_command=getattr(args, "tiny_command", "irib-demo --tiny"))
    if message:
        raise CLIError(message, code=1)
    from ..pipeline_irib import IRIBRestorationPipeline

    try:
        pipe = IRIBRestorationPipeline.from_pretrained(
            args.base, projector=args.projector, restorer=args.restorer, dtype=dtype
        )
    except (ValueError, OSError, RuntimeError, TypeError) as err:
        raise CLIError(f"cannot load the models (--base {args.base!r}): {first_line(err)}", code=1) from err
    return pipe.to(device)


def build_extractor(args: argparse.Namespace, device):
    """The prompt extractor the flags ask for (None: the empty prompt)."""
    if args.extractor == "none":
        return None
    from .. import prompts

    try:
        if args.extractor == "clip":
            return prompts.CLIPTagger.from_pretrained(
                args.extractor_model or prompts.DEFAULT_CLIP_MODEL, device=device
            )
        if args.extractor == "caption":
            return prompts.CaptionPrompt.from_pretrained(
                args.extractor_model or prompts.DEFAULT_CAPTION_MODEL, device=device
            )
        return prompts.RAMTagger(args.extractor_model, dape_path=args.dape_checkpoint, device=device)
    except ImportError as err:
        raise CLIError(f"--extractor {args.extractor} cannot be used here: {first_line(err)}", code=1) from err
    except (ValueError, OSError, RuntimeError) as err:
        raise CLIError(f"cannot load the --extractor {args.extractor} model: {first_line(err)}", code=1) from err


def make_generator(seed: int | None):
    """A fresh generator per image, so an image's result does not depend on its place in a batch."""
    import torch

    return None if seed is None else torch.Generator().manual_seed(seed)


def restore_kwargs(args: argparse.Namespace, extractor) -> dict:
    """The pipeline call's keyword arguments, from the parsed options."""
    return dict(
        prompt=args.prompt,
        lfo_steps=args.lfo_steps,
        prompt_extractor=extractor,
        color_fix=None if args.color_fix == "none" else args.color_fix,
        tile_size=args.tile_size,
        tile_overlap=args.tile_overlap,
        generator=make_generator(args.seed),
        output_type="pt",
    )
