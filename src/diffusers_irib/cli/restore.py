"""``irib-restore``: restore damaged photos with IRIBRestorationPipeline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..adapters import DEFAULT_BASE_MODEL
from ..image_processing import COLOR_FIXES, to_tensors
from .common import load_image, prepare_output_dir, save_png, tensor_to_pil
from .models import (
    DEFAULT_PROJECTOR,
    DEFAULT_RESTORER,
    ModelSpec,
    missing_models_message,
)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
EXTRACTORS = ("none", "clip", "caption", "ram")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default=DEFAULT_BASE_MODEL, help=f"SD2.1-base folder or Hub id (default {DEFAULT_BASE_MODEL}).")
    parser.add_argument("--projector", default=DEFAULT_PROJECTOR, help="Projector adapter set: folder or Hub id.")
    parser.add_argument("--restorer", default=DEFAULT_RESTORER, help="Restorer adapter set: folder or Hub id.")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="Default: fp16 on CUDA, fp32 on CPU.")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu).")


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lfo-steps", type=int, default=2, help="Look Forward Once refinements (default 2).")
    parser.add_argument("--prompt", default=None, help="Use this prompt in every round instead of an extractor.")
    parser.add_argument("--extractor", choices=EXTRACTORS, default="none", help="Prompt extractor (default none).")
    parser.add_argument("--extractor-model", default=None, help="CLIP/captioner id or path, or the RAM checkpoint.")
    parser.add_argument("--dape-checkpoint", default=None, help="DAPE checkpoint for --extractor ram.")
    parser.add_argument("--color-fix", choices=sorted(COLOR_FIXES) + ["none"], default="adain")
    parser.add_argument("--tile-size", type=int, default=None, help="Latent tiling for large images (pixels).")
    parser.add_argument("--seed", type=int, default=None, help="Sample the VAE posterior with this seed (default: mean).")


def resolve_device_dtype(args) -> tuple[torch.device, torch.dtype]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    return device, dtype


def build_extractor(args, device: torch.device):
    """The prompt extractor the flags ask for (None: the empty prompt)."""
    from .. import prompts

    if args.extractor == "none":
        return None
    if args.extractor == "clip":
        return prompts.CLIPTagger.from_pretrained(args.extractor_model or prompts.DEFAULT_CLIP_MODEL, device=device)
    if args.extractor == "caption":
        return prompts.CaptionPrompt.from_pretrained(args.extractor_model or prompts.DEFAULT_CAPTION_MODEL, device=device)
    if not args.extractor_model:
        raise ValueError("--extractor ram needs --extractor-model PATH to the RAM checkpoint (ram_swin_large_14m.pth)")
    return prompts.RAMTagger(args.extractor_model, dape_path=args.dape_checkpoint, device=device)


def load_pipeline(args, device: torch.device, dtype: torch.dtype):
    """Check every model first (listing all that are missing), then load the pipeline."""
    from ..pipeline_irib import IRIBRestorationPipeline

    specs = [ModelSpec("base", args.base), ModelSpec("projector", args.projector), ModelSpec("restorer", args.restorer)]
    message = missing_models_message(specs)
    if message:
        print(message, file=sys.stderr)
        sys.exit(1)
    pipe = IRIBRestorationPipeline.from_pretrained(args.base, projector=args.projector, restorer=args.restorer, dtype=dtype)
    return pipe.to(device)


def restore_kwargs(args, extractor) -> dict:
    generator = None if args.seed is None else torch.Generator().manual_seed(args.seed)
    return dict(
        prompt=args.prompt,
        lfo_steps=args.lfo_steps,
        prompt_extractor=extractor,
        color_fix=None if args.color_fix == "none" else args.color_fix,
        tile_size=args.tile_size,
        generator=generator,
        output_type="pt",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="irib-restore", description="Restore extremely degraded photos (IRIB).")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--output-dir", required=True, help="Folder for <name>_restored.png and <name>_lq_proxy.png.")
    parser.add_argument("--upscale", type=float, default=1.0, help="Bicubic pre-upscale factor (default 1).")
    add_model_arguments(parser)
    add_restore_arguments(parser)
    args = parser.parse_args(argv)
    if args.lfo_steps < 0:
        parser.error(f"--lfo-steps must be >= 0, got {args.lfo_steps}")
    if not args.upscale > 0:
        parser.error(f"--upscale must be positive, got {args.upscale}")
    try:
        images = [load_image(p) for p in args.images]
        output_dir = prepare_output_dir(args.output_dir)
        device, dtype = resolve_device_dtype(args)
    except (ValueError, RuntimeError) as err:
        parser.error(str(err))

    pipe = load_pipeline(args, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    try:
        extractor = build_extractor(args, device)
    except (ValueError, ImportError, FileNotFoundError, OSError) as err:
        parser.error(str(err))
    kwargs = restore_kwargs(args, extractor)
    for path, image in tqdm(list(zip(args.images, images)), desc="restoring", unit="image"):
        out = pipe(to_tensors(image), upscale=args.upscale, **kwargs)
        stem = Path(path).stem
        save_png(tensor_to_pil(out.images[0]), output_dir / f"{stem}_restored.png")
        save_png(tensor_to_pil(out.lq_images[0]), output_dir / f"{stem}_lq_proxy.png")
        tqdm.write(f"{stem}: prompts per round {[round_prompts[0] for round_prompts in out.prompts]}")
    print(f"wrote {2 * len(images)} files to {output_dir}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
