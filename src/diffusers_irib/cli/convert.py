"""``irib-convert-osediff``: OSEDiff's released ``osediff.pkl`` -> a ``restorer`` adapter set.

The checkpoint is read with ``torch.load(weights_only=True)``: tensors, lists, dicts and numbers
only, never arbitrary pickled objects. OSEDiff trains the UNet's conv_in fully; the set stores that
as its change from the base model's conv_in, which is read from the base's UNet weights (a local
folder or the Hugging Face cache). The result loads with ``pipe.load_adapter_set(DIR)``, and with
plain diffusers' ``load_lora_weights``.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from ..utils.arguments import add_common_arguments, make_parser, path_arg
from ..utils.errors import CLIError, first_line, run_guarded
from ..utils.model_sources import DEFAULT_BASE_MODEL
from ..utils.output_files import PlannedFile, check_output_dir, check_plan

PROG = "irib-convert-osediff"
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, __doc__)
    parser.add_argument("osediff_pkl", metavar="OSEDIFF_PKL", type=path_arg, help="OSEDiff's osediff.pkl.")
    parser.add_argument(
        "output_dir", metavar="OUTPUT_DIR", type=path_arg, help="Folder for the adapter set (created)."
    )
    parser.add_argument(
        "--base",
        default=DEFAULT_BASE_MODEL,
        help="Base model (folder or Hub id) whose conv_in the set is relative to.",
    )
    parser.add_argument("--role", default="restorer", help="Role name recorded in the set (default restorer).")
    parser.add_argument(
        "--check-against-base",
        action="store_true",
        help="Load the base UNet/VAE (local folder or cache) and check every LoRA target and shape.",
    )
    add_common_arguments(parser)
    return parser


def check_checkpoint(path: str) -> None:
    if os.path.isdir(path):
        raise CLIError(f"checkpoint {path!r} is a folder, not a file: give the path of OSEDiff's osediff.pkl")
    if not os.path.isfile(path):
        raise CLIError(f"checkpoint {path!r} does not exist")
    if not os.access(path, os.R_OK):
        raise CLIError(f"checkpoint {path!r} is not readable (permission denied)")
    if os.path.getsize(path) == 0:
        raise CLIError(f"checkpoint {path!r} is an empty file")


def planned_files(output_dir: Path) -> list[PlannedFile]:
    """The files of an adapter set folder (the library keeps any other entry of the folder)."""
    from ..adapters import ADAPTER_SET_CONFIG_NAME, LORA_WEIGHT_NAME, MODEL_CARD_NAME

    names = (LORA_WEIGHT_NAME, ADAPTER_SET_CONFIG_NAME, MODEL_CARD_NAME)
    return [PlannedFile(output_dir / name, f"adapter set file {name}") for name in names]


def checkpoint_error(path: str, err: BaseException) -> CLIError:
    """A checkpoint the library refused (its message names the file and why), or any other failure."""
    from ..adapters import CheckpointReadError

    if isinstance(err, CheckpointReadError):
        return CLIError(str(err))
    return CLIError(f"cannot convert {path!r}: {first_line(err)}", code=1)


def load_base(base: str):
    """The base UNet and VAE, for --check-against-base."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ..hub_utils import offline_kwargs

    hub = offline_kwargs()  # an unreachable Hub: the cache at once, not after ~23 s of retries
    try:
        return UNet2DConditionModel.from_pretrained(base, subfolder="unet", **hub), AutoencoderKL.from_pretrained(
            base, subfolder="vae", **hub
        )
    except (OSError, ValueError, RuntimeError) as err:
        raise CLIError(
            f"cannot load the base model --base {base!r} for --check-against-base: {first_line(err)}", code=1
        ) from err


def convert(args: argparse.Namespace, unet, vae):
    from ..adapters import convert_osediff_checkpoint
    from ..hub_utils import offline_kwargs

    try:
        return convert_osediff_checkpoint(
            args.osediff_pkl,
            args.output_dir,
            unet,
            vae,
            base_model_name_or_path=args.base,
            role=args.role,
            **offline_kwargs(),  # an unreachable Hub: the cache at once, not after ~23 s of retries
        )
    except OSError as err:
        if is_write_error(err, args.osediff_pkl):
            raise CLIError(
                f"cannot write the adapter set to {args.output_dir!r}: {err.strerror or err}", code=1
            ) from err
        raise checkpoint_error(args.osediff_pkl, err) from err
    except (ValueError, RuntimeError) as err:
        raise checkpoint_error(args.osediff_pkl, err) from err


def is_write_error(err: OSError, checkpoint: str) -> bool:
    """A full or read-only disk, or any file other than the checkpoint: the writing failed."""
    if err.errno in WRITE_ERRNOS:
        return True
    return bool(err.filename) and os.path.abspath(os.fsdecode(err.filename)) != os.path.abspath(checkpoint)


def run(args: argparse.Namespace) -> int:
    check_checkpoint(args.osediff_pkl)
    output = Path(args.output_dir)
    check_output_dir(output)
    check_plan(planned_files(output), [Path(args.osediff_pkl)], args.overwrite)
    unet, vae = load_base(args.base) if args.check_against_base else (None, None)
    config = convert(args, unet, vae)
    print(
        f"wrote the {config.role!r} adapter set to {args.output_dir}: rank {config.rank} (UNet), "
        f"{len(config.unet_target_modules)} UNet and {len(config.vae_target_modules)} VAE targets, own conv_in: {config.has_conv_in}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(PROG, args.debug, lambda: run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
