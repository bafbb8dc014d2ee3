"""Bookkeeping of the adapter sets on one UNet/VAE: which sets exist, their configs, trainability.

The sets live on the UNet (``unet._irib_adapter_sets``); the VAE only holds peft adapters under
the same names. Everything here sees through wrappers (``torch.compile``'s ``_orig_mod``, DDP's
``module``), so accelerate-prepared or compiled models can be passed as they are.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional

from torch import nn

from .config import AdapterSetConfig

__all__ = [
    "AdapterSetRecord",
    "named_tuner_layers",
    "peft_config",
    "records",
    "require_role",
    "structure",
    "tuner_layers",
    "unwrap_model",
]

_RECORDS_ATTR = "_irib_adapter_sets"
_STRUCTURE_ATTR = "_irib_structure"
_GENERATION_ATTR = "_irib_generation"


def _base_tuner_layer() -> type:
    # Imported lazily so `import diffusers_irib` stays cheap; peft is a hard dependency.
    from peft.tuners.tuners_utils import BaseTunerLayer

    return BaseTunerLayer


def unwrap_model(model: Optional[nn.Module], name: str = "model") -> Optional[nn.Module]:
    """The module that holds the parameters, through ``torch.compile``, DDP and DataParallel wrappers.

    accelerate's ``prepare`` returns one of those (or the model itself), so ``accelerator.prepare(unet)``
    can be passed wherever a UNet is expected.
    """
    seen = set()
    while model is not None and id(model) not in seen:
        seen.add(id(model))
        if not isinstance(model, nn.Module):
            raise TypeError(f"{name} must be a torch.nn.Module (a UNet or VAE), got {type(model).__name__}")
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if inner is None and isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner
    return model


@dataclass
class AdapterSetRecord:
    """A set on a UNet: its config and whether its parameters are trained (re-asserted on every switch)."""

    config: AdapterSetConfig
    trainable: bool


def records(unet: nn.Module) -> dict[str, AdapterSetRecord]:
    """The UNet's sets by role, in the order they were added (a live dict)."""
    found = unet.__dict__.get(_RECORDS_ATTR)
    if found is None:
        found = {}
        unet.__dict__[_RECORDS_ATTR] = found
    return found


def require_role(unet: nn.Module, role: str) -> AdapterSetRecord:
    if role not in records(unet):
        loaded = list(records(unet))
        raise ValueError(
            f"adapter set {role!r} is not loaded on this UNet (loaded: {loaded or 'none'}); "
            "add it with add_adapter_set or load it with load_adapter_set"
        )
    return records(unet)[role]


def copy_config(unet: nn.Module, role: str) -> AdapterSetConfig:
    return copy.deepcopy(require_role(unet, role).config)


def peft_config(model: Optional[nn.Module]) -> dict:
    if model is None or not getattr(model, "_hf_peft_config_loaded", False):
        return {}
    return getattr(model, "peft_config", None) or {}


@dataclass
class _Structure:
    """What switching touches, found by one walk over the model (the SD2.1 UNet has thousands of
    modules: walking them on every switch cost tens of milliseconds)."""

    key: tuple
    tuner_layers: list
    checkpointable: list


def invalidate_structure(model: Optional[nn.Module]) -> None:
    """Call after anything that adds or removes peft layers or parameters."""
    if model is not None:
        model.__dict__[_GENERATION_ATTR] = model.__dict__.get(_GENERATION_ATTR, 0) + 1


def structure(model: nn.Module) -> _Structure:
    # peft's config names are part of the key, so add_adapter / unload_lora called directly on the
    # model (outside this package) also invalidates the cache.
    key = (model.__dict__.get(_GENERATION_ATTR, 0), tuple(peft_config(model)))
    cached = model.__dict__.get(_STRUCTURE_ATTR)
    if cached is not None and cached.key == key:
        return cached
    base_tuner_layer = _base_tuner_layer()
    modules = list(model.modules())
    found = _Structure(
        key=key,
        tuner_layers=[m for m in modules if isinstance(m, base_tuner_layer)],
        checkpointable=[m for m in modules if hasattr(m, "gradient_checkpointing")],
    )
    model.__dict__[_STRUCTURE_ATTR] = found
    return found


def tuner_layers(model: Optional[nn.Module]) -> list:
    return [] if model is None else list(structure(model).tuner_layers)


def named_tuner_layers(model: Optional[nn.Module]) -> list[tuple[str, Any]]:
    if model is None:
        return []
    base_tuner_layer = _base_tuner_layer()
    return [(n, m) for n, m in model.named_modules() if isinstance(m, base_tuner_layer)]
