"""Model cards (``README.md``) for adapter-set folders, so a saved set is a ready Hub repo.

The text comes from the ``model_card.md`` template (the repository's top-level file, shipped as
package data); the metadata header is what the Hub and ``huggingface_hub.ModelCard.load`` read:
``base_model``, ``library_name``, ``pipeline_tag``, ``license`` and ``tags``. The training script
adds its training details through ``training``.
"""

from __future__ import annotations

import importlib.resources
import re
import string
from typing import Optional

from huggingface_hub import ModelCard, ModelCardData

from ..hub_utils import hub_model_id
from .config import AdapterSetConfig

__all__ = ["DEFAULT_LICENSE", "LOCAL_BASE_MODEL_TEXT", "adapter_set_model_card", "model_card_template"]

#: Stable Diffusion 2.1's licence (CreativeML Open RAIL++-M), which LoRA weights on it inherit.
DEFAULT_LICENSE = "openrail++"
_LICENSE_TEXT = {"openrail++": "the CreativeML Open RAIL++-M licence"}
_BASE_TAGS = ["lora", "image-restoration", "super-resolution", "irib", "diffusers"]
#: What a card says of a base that is no Hub model (a local folder, or built in memory).
LOCAL_BASE_MODEL_TEXT = "a local base model"
#: Stands for that base in the card's code examples.
LOCAL_BASE_MODEL_PLACEHOLDER = "PATH_OF_THE_BASE_MODEL"

_USAGE = {
    "projector": (
        'pipe.load_adapter_set("REPO_OR_PATH_OF_A_RESTORER", role="restorer")  # e.g. a converted OSEDiff\n'
        "out = pipe(image, lfo_steps=2)  # ELQ -> projector -> LQ proxy -> restorer -> HQ"
    ),
    "restorer": "out = pipe(image, use_projector=False)  # the restorer alone, LQ -> HQ",
}


def model_card_template() -> str:
    """The packaged copy of the repository's ``model_card.md``."""
    return importlib.resources.files("diffusers_irib").joinpath("templates/model_card.md").read_text(encoding="utf-8")


def _degradation_text(preset) -> str:
    if preset is None:
        return "not recorded"
    if isinstance(preset, str):
        return f"`{preset}`"
    name, version = preset.get("preset_name", "custom"), preset.get("preset_version")
    return (
        f"`{name}`"
        + (f" (version {version})" if version is not None else "")
        + ", full config in `adapter_set_config.json`"
    )


def adapter_set_model_card(
    config: AdapterSetConfig,
    repo_id: Optional[str] = None,
    *,
    training: Optional[str] = None,
    description: Optional[str] = None,
    license: str = DEFAULT_LICENSE,
    extra_tags: Optional[list[str]] = None,
    datasets: Optional[list[str]] = None,
    usage: Optional[str] = None,
) -> ModelCard:
    """The ``README.md`` of an adapter-set folder or Hub repo.

    ``repo_id`` is where the set will be published (the load examples use it; "PATH_OR_REPO_ID"
    when unknown). ``training`` is a markdown section with training details; ``datasets`` are the
    Hub ids of the training data (the card's ``datasets`` metadata); ``usage`` replaces the
    role's default usage lines of the example.

    The ``base_model`` metadata and the link are written only when the set's base is a Hub model id
    (``namespace/name``, not a path that exists here); a local folder or a base built in memory is
    "a local base model", with neither link nor metadata.
    """
    base_model = hub_model_id(config.base_model_name_or_path)
    repo = repo_id or "PATH_OR_REPO_ID"
    vae_lora = "none"
    if config.vae_target_modules:
        vae_lora = (
            f"rank {config.effective_vae_rank}, alpha {config.effective_vae_alpha:g}, "
            f"{len(config.vae_target_modules)} target modules"
        )
    conv_in = "no"
    if config.has_conv_in:
        conv_in = "yes, stored exactly as a full-rank LoRA with a bias on `conv_in` (a plain peft LoRA)"
    values = {
        "title": f"IRIB {config.role} adapter set for Stable Diffusion 2.1-base",
        "description": description or "",
        "role": config.role,
        "base_model_text": f"[`{base_model}`](https://huggingface.co/{base_model})"
        if base_model
        else LOCAL_BASE_MODEL_TEXT,
        "base_model_ref": base_model or LOCAL_BASE_MODEL_PLACEHOLDER,
        "repo_id": repo,
        "rank": config.rank,
        "alpha": f"{config.alpha:g}",
        "scale": f"{config.alpha / config.rank:g}",
        "unet_targets": len(config.unet_target_modules),
        "vae_lora": vae_lora,
        "conv_in": conv_in,
        "degradation": _degradation_text(config.degradation_preset),
        "format_version": config.format_version,
        "usage": usage or _USAGE.get(config.role, f'with pipe.use_adapter_set("{config.role}"):\n    ...'),
        "training": training or "",
        "license_text": _LICENSE_TEXT.get(license, f"`{license}`"),
    }
    text = re.sub(r"\n{3,}", "\n\n", string.Template(model_card_template()).substitute(values))
    data = ModelCardData(
        base_model=base_model,
        library_name="diffusers",
        pipeline_tag="image-to-image",
        license=license,
        tags=[*_BASE_TAGS, config.role, *(extra_tags or [])],
        datasets=list(datasets) if datasets else None,
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text.strip()}\n")
