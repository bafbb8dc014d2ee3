"""Which modules get LoRA: OSEDiff's rules, computed from the model so they hold on tiny models too."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Optional, Union

from torch import nn

__all__ = [
    "OSEDIFF_UNET_ADAPTERS",
    "base_architecture",
    "check_targets_exist",
    "lora_capable_modules",
    "osediff_unet_adapter_groups",
    "osediff_unet_target_modules",
    "osediff_vae_target_modules",
    "select_modules",
    "unique_in_order",
]

#: OSEDiff's three UNet adapters (all active at once) in its released ``osediff.pkl``.
OSEDIFF_UNET_ADAPTERS = ("default_encoder", "default_decoder", "default_others")

# OSEDiff's substring patterns over parameter names (bias and norm parameters are skipped).
_OSEDIFF_UNET_PATTERNS = (
    "to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut",
    "conv_out", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
)  # fmt: skip
_OSEDIFF_VAE_PATTERNS = (
    "conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "to_k", "to_q", "to_v", "to_out.0",
)  # fmt: skip

_UNET_ARCH_KEYS = (
    "in_channels", "out_channels", "sample_size", "block_out_channels", "layers_per_block",
    "cross_attention_dim", "attention_head_dim", "use_linear_projection", "down_block_types",
    "up_block_types",
)  # fmt: skip
_VAE_ARCH_KEYS = ("in_channels", "latent_channels", "block_out_channels", "layers_per_block", "down_block_types")


def unique_in_order(names: Iterable[str]) -> list[str]:
    """Drop repeated names, keeping the first occurrence (OSEDiff's VAE list repeats names)."""
    return list(dict.fromkeys(names))


def lora_capable_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of plain Linear/Conv2d layers, seen through peft wrappers (``x.base_layer`` -> ``x``)."""
    for name, module in model.named_modules():
        parts = name.split(".")
        if any(p.startswith("lora_") for p in parts) or not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        if parts[-1] == "base_layer":
            name = ".".join(parts[:-1])
        yield name, module


def osediff_unet_target_modules(unet: nn.Module) -> list[str]:
    """OSEDiff's UNet LoRA targets: every conv and to_q/k/v/out.0, proj_in/out, ff.net.0.proj, ff.net.2.

    OSEDiff matches substrings of parameter names and skips bias and norm parameters, so no norms;
    the time embedding (``time_embedding.linear_*``, resnets' ``time_emb_proj``) matches no pattern.
    """
    return [
        name
        for name, _ in lora_capable_modules(unet)
        if "norm" not in name and any(p in name + ".weight" for p in _OSEDIFF_UNET_PATTERNS)
    ]


def osediff_unet_adapter_groups(unet: nn.Module) -> dict[str, list[str]]:
    """OSEDiff's split of the UNet targets into its three adapters (down+conv_in / up+conv_out / rest)."""
    groups: dict[str, list[str]] = {name: [] for name in OSEDIFF_UNET_ADAPTERS}
    for name in osediff_unet_target_modules(unet):
        if "down_blocks" in name or "conv_in" in name:
            groups["default_encoder"].append(name)
        elif "up_blocks" in name or "conv_out" in name:
            groups["default_decoder"].append(name)
        else:
            groups["default_others"].append(name)
    return groups


def osediff_vae_target_modules(vae: nn.Module) -> list[str]:
    """OSEDiff's VAE LoRA targets: encoder convs, encoder mid-block attention, quant_conv (not post_quant_conv)."""
    targets = []
    for name, _ in lora_capable_modules(vae):
        if "norm" in name:
            continue
        if name.startswith("encoder.") and any(p in name + ".weight" for p in _OSEDIFF_VAE_PATTERNS):
            targets.append(name)
        elif name == "quant_conv":
            targets.append(name)
    return targets


def select_modules(model: nn.Module, target_modules: Union[str, Sequence[str]]) -> set[str]:
    """The Linear/Conv2d names peft's matching rule picks: regex full match for a str, else suffixes."""
    names = [n for n, _ in lora_capable_modules(model)]
    if isinstance(target_modules, str):
        return {n for n in names if re.fullmatch(target_modules, n)}
    targets = set(target_modules)
    return {n for n in names if n in targets or any(n.endswith("." + t) for t in targets)}


def check_targets_exist(model: nn.Module, targets: Sequence[str], which: str) -> None:
    available = dict(lora_capable_modules(model))
    missing = [t for t in targets if t not in available]
    if missing:
        raise ValueError(
            f"{len(missing)} {which} target module(s) not found (or not Linear/Conv2d) in this {which}: "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}; the adapter set was made for another base model"
        )


def base_architecture(unet: nn.Module, vae: Optional[nn.Module] = None) -> dict:
    """The config values an adapter set's shapes and meaning depend on (JSON-normalised)."""

    def pick(model: nn.Module, keys: Sequence[str]) -> dict:
        cfg = getattr(model, "config", {}) or {}
        return {k: json.loads(json.dumps(cfg[k])) for k in keys if k in cfg}

    arch = {"unet": pick(unet, _UNET_ARCH_KEYS)}
    if vae is not None:
        arch["vae"] = pick(vae, _VAE_ARCH_KEYS)
    return arch
