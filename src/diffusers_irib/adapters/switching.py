"""Switching adapter sets by peft adapter name, and keeping every set's trainability what it declared.

peft's ``set_adapter``/``enable_adapters`` rewrite ``requires_grad`` (the active adapter becomes
trainable, the others frozen), and a user may call them (or diffusers' ``set_adapters``) directly.
So every switch here ends by re-asserting each set's declared trainability (trainable sets stay
trainable, frozen sets stay frozen), and always sets the UNet *and* the VAE, so one set's UNet LoRA
never runs with another set's VAE LoRA. A set fused into the base weights pins the models to it
until it is unfused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Optional

from torch import nn

from .checkpointing import make_checkpointing_adapter_aware, set_layer_state
from .config import AdapterSetConfig, check_flag
from .registry import copy_config, peft_config, records, require_role, structure, tuner_layers, unwrap_model

__all__ = [
    "adapter_set_parameters",
    "fuse_adapter_set",
    "fused_adapter_set",
    "get_active_adapter_set",
    "get_adapter_set_config",
    "list_adapter_sets",
    "reassert_trainability",
    "set_adapter_set",
    "set_adapter_set_trainable",
    "unfuse_adapter_set",
    "use_adapter_set",
]

_PARAMS_CACHE_ATTR = "_irib_set_parameters"


def _models(unet: nn.Module, vae: Optional[nn.Module]) -> tuple[nn.Module, Optional[nn.Module]]:
    return unwrap_model(unet, "unet"), unwrap_model(vae, "vae")


def list_adapter_sets(unet: nn.Module) -> list[str]:
    """Roles of the adapter sets on this UNet, in the order they were added."""
    return list(records(unwrap_model(unet, "unet")))


def get_adapter_set_config(unet: nn.Module, role: str) -> AdapterSetConfig:
    """A copy of the set's config (changing it changes nothing on the model)."""
    return copy_config(unwrap_model(unet, "unet"), role)


def _set_parameters(unet: nn.Module, vae: Optional[nn.Module], role: str) -> tuple[list, list]:
    """(parameters that follow the set's trainability, parameters that always stay frozen).

    A set with its own conv_in uses peft's ``lora_bias``, which gives every LoRA of the set a bias;
    only conv_in's is part of the model OSEDiff trains, the others stay zero and frozen.
    """
    key = (structure(unet).key, structure(vae).key if vae is not None else None)
    cached = unet.__dict__.get(_PARAMS_CACHE_ATTR)
    if cached is None or cached[0] != key:
        cached = (key, {})
        unet.__dict__[_PARAMS_CACHE_ATTR] = cached
    if role not in cached[1]:
        conv_in = getattr(unet, "conv_in", None)
        follow, frozen = [], []
        for model in (unet, vae):
            for layer in tuner_layers(model):
                for layer_name in layer.adapter_layer_names:
                    container = getattr(layer, layer_name)
                    if role not in container:
                        continue
                    item = container[role]
                    named = [("", item)] if isinstance(item, nn.Parameter) else item.named_parameters()
                    for name, p in named:
                        is_extra_bias = layer_name == "lora_B" and name == "bias" and layer is not conv_in
                        (frozen if is_extra_bias else follow).append(p)
        cached[1][role] = (follow, frozen)
    return cached[1][role]


def adapter_set_parameters(
    unet: nn.Module, vae: Optional[nn.Module], role: str, trainable_only: bool = False
) -> list[Any]:
    """The set's peft parameters on the UNet and the VAE (``trainable_only``: those an optimiser trains)."""
    unet, vae = _models(unet, vae)
    require_role(unet, role)
    follow, frozen = _set_parameters(unet, vae, role)
    return list(follow) if trainable_only else list(follow) + list(frozen)


def reassert_trainability(unet: nn.Module, vae: Optional[nn.Module]) -> None:
    """Give every set's parameters the trainability the set declares; base weights are not touched."""
    unet, vae = _models(unet, vae)
    for role, record in records(unet).items():
        follow, frozen = _set_parameters(unet, vae, role)
        for p in follow:
            if p.requires_grad != record.trainable:
                p.requires_grad_(record.trainable)
        for p in frozen:
            if p.requires_grad:
                p.requires_grad_(False)


def set_adapter_set_trainable(unet: nn.Module, vae: Optional[nn.Module], role: str, trainable: bool) -> None:
    """Declare whether ``role`` is trained; every later switch keeps it that way."""
    trainable = check_flag("trainable", trainable)
    unet, vae = _models(unet, vae)
    record = require_role(unet, role)
    if trainable and fused_adapter_set(unet, vae) == role:
        raise ValueError(f"adapter set {role!r} is fused into the base weights: unfuse it before training it")
    record.trainable = trainable
    reassert_trainability(unet, vae)


def _layer_role(layers: list, model_name: str) -> Optional[str]:
    """The one adapter the layers run, None when they run none; ValueError for any mix."""
    active = {tuple(layer.active_adapters) for layer in layers if not layer.disable_adapters}
    if not active:
        return None
    if len(active) != 1 or len(next(iter(active))) != 1:
        raise ValueError(
            f"the {model_name} runs several adapters at once ({sorted(active)}): its adapter state was changed "
            "outside diffusers_irib (peft's set_adapter or diffusers' set_adapters); switch with "
            "set_adapter_set / use_adapter_set (or the pipeline's use_adapter_set) to get one consistent set"
        )
    return next(iter(active))[0]


def get_active_adapter_set(unet: nn.Module, vae: Optional[nn.Module] = None) -> Optional[str]:
    """The role the UNet (and, if given, the VAE) runs, or None for the bare base model.

    Raises ValueError when the models are not in one set's state, e.g. after a direct peft call
    left the UNet under one set and the VAE under another.
    """
    unet, vae = _models(unet, vae)
    role = _layer_role(tuner_layers(unet), "UNet")
    if vae is not None:
        vae_role = _layer_role(tuner_layers(vae), "VAE")
        expected = role if role in peft_config(vae) else None
        if vae_role != expected:
            raise ValueError(
                f"the UNet runs adapter set {role!r} but the VAE runs {vae_role!r}: the adapter state was changed "
                "outside diffusers_irib; switch with set_adapter_set / use_adapter_set to make it consistent"
            )
    return role


def fused_adapter_set(unet: nn.Module, vae: Optional[nn.Module] = None) -> Optional[str]:
    """The role fused into the base weights (``fuse_adapter_set`` or diffusers' ``fuse_lora``), or None."""
    unet, vae = _models(unet, vae)
    fused = {name for model in (unet, vae) for layer in tuner_layers(model) for name in layer.merged_adapters}
    if len(fused) > 1:
        raise ValueError(
            f"adapter sets {sorted(fused)} are all fused into the base weights; unfuse them with unfuse_adapter_set"
        )
    return next(iter(fused), None)


def set_adapter_set(unet: nn.Module, vae: Optional[nn.Module], role: Optional[str]) -> None:
    """Activate ``role`` on the UNet and the VAE (``None``: no adapter, the frozen SD prior).

    The VAE runs without adapters when the set has no VAE part (e.g. the regularizer). Afterwards
    every set's parameters have the trainability the set declares. Prefer :func:`use_adapter_set`,
    which also switches back.
    """
    unet, vae = _models(unet, vae)
    if role is not None:
        require_role(unet, role)
    fused = fused_adapter_set(unet, vae)
    if fused is not None and role != fused:
        raise ValueError(
            f"adapter set {fused!r} is fused into the base weights, so the models cannot run "
            f"{'the bare base' if role is None else repr(role)}; call unfuse_adapter_set first"
        )
    make_checkpointing_adapter_aware(unet, vae)
    for model in (unet, vae):
        if model is None:
            continue
        for layer in tuner_layers(model):
            if role is not None and role in layer.lora_A:
                set_layer_state(layer, [role], False)
            else:
                set_layer_state(layer, layer.active_adapters, True)
    reassert_trainability(unet, vae)


@contextlib.contextmanager
def use_adapter_set(unet: nn.Module, vae: Optional[nn.Module], role: Optional[str]) -> Iterator[None]:
    """Run the body under adapter set ``role`` (``None``: no adapter), then switch back.

    On exit, even when the body raises, the previously active adapters are restored and every
    set's trainability is re-asserted. Safe inside one autograd graph: with gradient
    checkpointing on, the recompute replays the adapters that were active in forward.
    """
    unet, vae = _models(unet, vae)
    if role is not None:
        require_role(unet, role)
    previous = [
        (layer, list(layer.active_adapters), bool(layer.disable_adapters))
        for model in (unet, vae)
        for layer in tuner_layers(model)
    ]
    try:
        set_adapter_set(unet, vae, role)
        yield
    finally:
        for layer, names, disabled in previous:
            set_layer_state(layer, names, disabled)
        reassert_trainability(unet, vae)


def fuse_adapter_set(unet: nn.Module, vae: Optional[nn.Module], role: str) -> None:
    """Merge a frozen set into the base weights (OSEDiff's ``--merge_and_unload_lora`` speed-up).

    The output is the same as running the set unfused, up to float rounding. While it is fused the
    models run only that set: switching to another set (or none) raises until
    :func:`unfuse_adapter_set`. Trainable sets are refused (a merged LoRA receives no gradient).
    """
    unet, vae = _models(unet, vae)
    record = require_role(unet, role)
    if record.trainable:
        raise ValueError(
            f"adapter set {role!r} is trainable: a fused LoRA receives no gradient. Freeze it first with "
            "set_adapter_set_trainable(unet, vae, role, False)"
        )
    fused = fused_adapter_set(unet, vae)
    if fused == role:
        return
    if fused is not None:
        raise ValueError(f"adapter set {fused!r} is already fused; unfuse it before fusing {role!r}")
    set_adapter_set(unet, vae, role)
    for model in (unet, vae):
        for layer in tuner_layers(model):
            if role in layer.lora_A:
                layer.merge(safe_merge=True, adapter_names=[role])


def unfuse_adapter_set(unet: nn.Module, vae: Optional[nn.Module]) -> None:
    """Take a fused set back out of the base weights (a no-op when nothing is fused)."""
    unet, vae = _models(unet, vae)
    for model in (unet, vae):
        for layer in tuner_layers(model):
            while layer.merged:
                layer.unmerge()
