"""``irib-convert-osediff``: OSEDiff's released ``osediff.pkl`` -> a ``restorer`` adapter set.

The checkpoint is read with ``torch.load(weights_only=True)``: tensors, lists, dicts and numbers
only, never arbitrary pickled objects. OSEDiff trains the UNet's conv_in fully; the set stores that
as its change from the base model's conv_in, which is read from the base's UNet weights (a local
folder or the Hugging Face cache). The result loads with ``pipe.load_adapter_set(DIR)``, and with
plain diffusers' ``load_lora_weights``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys

from huggingface_hub.errors import HFValidationError

from ..adapters import DEFAULT_BASE_MODEL, convert_osediff_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="irib-convert-osediff", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("osediff_pkl", metavar="OSEDIFF_PKL", help="OSEDiff's osediff.pkl.")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="Folder for the adapter set (created).")
    parser.add_argument(
        "--base", default=DEFAULT_BASE_MODEL, help="Base model (folder or Hub id) whose conv_in the set is relative to."
    )
    parser.add_argument("--role", default="restorer", help="Role name recorded in the set (default restorer).")
    parser.add_argument(
        "--check-against-base",
        action="store_true",
        help="Load the base UNet/VAE (local folder or cache) and check every LoRA target and shape.",
    )
    args = parser.parse_args(argv)
    if not os.path.isfile(args.osediff_pkl):
        parser.error(f"checkpoint {args.osediff_pkl!r} does not exist")
    if os.path.isdir(args.output_dir) and os.listdir(args.output_dir):
        parser.error(f"output folder {args.output_dir!r} is not empty; refusing to overwrite")
    unet = vae = None
    if args.check_against_base:
        from diffusers import AutoencoderKL, UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(args.base, subfolder="unet")
        vae = AutoencoderKL.from_pretrained(args.base, subfolder="vae")
    try:
        config = convert_osediff_checkpoint(args.osediff_pkl, args.output_dir, unet, vae, base_model_name_or_path=args.base, role=args.role)
    except (ValueError, OSError, RuntimeError, EOFError, pickle.UnpicklingError, HFValidationError) as err:
        parser.error(f"cannot convert {args.osediff_pkl!r}: {err}")
    print(
        f"wrote the {config.role!r} adapter set to {args.output_dir}: rank {config.rank} (UNet), "
        f"{len(config.unet_target_modules)} UNet and {len(config.vae_target_modules)} VAE targets, own conv_in: {config.has_conv_in}"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
