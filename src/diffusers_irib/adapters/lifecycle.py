"""Adding, installing and removing adapter sets on one UNet/VAE.

A set is one peft adapter named after its role on the UNet (and one on the VAE when it has a VAE
part). With ``conv_in`` the UNet adapter's ``conv_in`` LoRA is full-rank with a bias
(:mod:`.conv_in`), so the set is still nothing but peft LoRA.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import torch
from torch import nn

from .checkpointing import set_layer_state
from .config import INIT_VALUES, AdapterSetConfig, check_flag, check_role_name
from .conv_in import CONV_IN, conv_in_lora_options, patch_extractor
from .registry import (
    AdapterSetRecord,
    invalidate_structure,
    named_tuner_layers,
    peft_config,
    records,
    require_role,
    tuner_layers,
    unwrap_model,
)
from .switching import fused_adapter_set, set_adapter_set, unfuse_adapter_set
from .targets import (
    base_architecture,
    check_targets_exist,
    osediff_unet_target_modules,
    osediff_vae_target_modules,
    unique_in_order,
)

__all__ = ["add_adapter_set", "delete_adapter_set", "install_adapter_set", "lora_config", "unload_adapter_sets"]


def base_conv_in(unet: nn.Module) -> nn.Conv2d:
    """The UNet's conv_in as a plain conv (through a peft wrapper)."""
    conv = unet.conv_in
    conv = conv.get_base_layer() if hasattr(conv, "get_base_layer") else conv
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"unet.conv_in must be an nn.Conv2d, got {type(conv).__name__}")
    return conv


def lora_config(
    rank: int, alpha: float, targets: Sequence[str], init: Any, conv_in_shape: Optional[Sequence[int]] = None
):
    """peft's LoraConfig of one model's part of a set (``conv_in_shape``: conv_in gets a full-rank LoRA)."""
    from peft import LoraConfig

    extra = {}
    if conv_in_shape is not None:
        extra = conv_in_lora_options(conv_in_shape)
        init = False  # peft allows lora_bias only with True/False init; gaussian is drawn by hand
    return LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=init, lora_dropout=0.0, **extra
    )


def _inject(model: nn.Module, role: str, add: Callable[[], None], targets: Sequence[str], which: str) -> None:
    """Run ``add`` (which injects ``role``) and check that exactly ``targets`` got the adapter."""
    with warnings.catch_warnings():
        # Several adapters on one model is the design, not an accident; lora_bias on bias-free
        # layers is handled by _lora_bias_only_on_conv_in.
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        warnings.filterwarnings("ignore", message="`lora_bias=True` was passed but the targeted layer")
        add()
    invalidate_structure(model)
    injected = {name for name, layer in named_tuner_layers(model) if role in layer.lora_A}
    if injected != set(targets):
        extra, missing = sorted(injected - set(targets)), sorted(set(targets) - injected)
        _delete_from_model(model, role)
        raise ValueError(
            f"{which} LoRA for {role!r} did not land on its targets (extra: {extra[:5]}, missing: {missing[:5]})"
        )


def _delete_from_model(model: Optional[nn.Module], role: str) -> None:
    if model is None or role not in peft_config(model):
        return
    with warnings.catch_warnings():
        # peft warns when the deleted adapter was active; callers already switched away from it.
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        model.delete_adapters(role)
    if not peft_config(model):
        model.unload_lora()  # no adapter left: remove the peft wrappers, base modules come back
    invalidate_structure(model)


def _lora_bias_only_on_conv_in(unet: nn.Module, role: str) -> None:
    """peft's ``lora_bias`` is one flag per adapter; only conv_in's bias is part of the set. The other
    layers keep a zero, frozen LoRA bias (saved, so plain diffusers loads the file exactly) but are
    marked bias-free, so peft can merge them (it refuses to merge a LoRA bias into a bias-free layer)."""
    conv_in = getattr(unet, CONV_IN, None)
    for layer in tuner_layers(unet):
        if layer is not conv_in and layer.lora_bias.get(role, False):
            layer.lora_bias[role] = False


def install_adapter_set(
    unet: nn.Module,
    vae: Optional[nn.Module],
    config: AdapterSetConfig,
    trainable: bool,
    add_unet: Callable[[], None],
    add_vae: Optional[Callable[[], None]],
    after: Optional[Callable[[], None]] = None,
) -> None:
    """Inject a set into both models (all or nothing), register it and activate it.

    ``add_unet``/``add_vae`` inject the peft adapter named ``config.role``; ``after`` fills or
    initialises the factors. Base weights of a model's first adapter get frozen (as peft does).
    """
    role = config.role
    trainable = check_flag("trainable", trainable)
    previous = [
        (layer, list(layer.active_adapters), bool(layer.disable_adapters))
        for model in (unet, vae)
        for layer in tuner_layers(model)
    ]
    first = {id(m): not tuner_layers(m) for m in (unet, vae) if m is not None}
    done = []
    try:
        _inject(unet, role, add_unet, config.unet_target_modules, "unet")
        done.append(unet)
        if add_vae is not None:
            _inject(vae, role, add_vae, config.vae_target_modules, "vae")
            done.append(vae)
        if after is not None:
            with torch.no_grad():
                after()
        if config.has_conv_in:
            _lora_bias_only_on_conv_in(unet, role)
    except BaseException:
        for model in done:
            _delete_from_model(model, role)
        for layer, names, disabled in previous:  # peft's injection switched the active adapter
            set_layer_state(layer, names, disabled)
        raise
    for model in (unet, vae):
        if model is not None and first[id(model)]:
            for name, p in model.named_parameters():
                if not any(part.startswith("lora_") for part in name.split(".")):
                    p.requires_grad_(False)
    records(unet)[role] = AdapterSetRecord(config=config, trainable=trainable)
    set_adapter_set(unet, vae, role)


def _initialise_factors(model: nn.Module, role: str, init: str, conv_in_layer: Optional[nn.Module]) -> None:
    """B = 0 everywhere (a fresh set is the identity on the base); A gaussian N(0, 1/r) as peft's
    "gaussian" init, or peft's own default; conv_in's A is the exact patch extractor."""
    for layer in tuner_layers(model):
        if role not in layer.lora_A:
            continue
        a, b = layer.lora_A[role], layer.lora_B[role]
        if layer is conv_in_layer:
            a.weight.copy_(patch_extractor(layer.get_base_layer().weight.shape, a.weight.dtype, a.weight.device))
        elif init == "gaussian":
            a.weight.normal_(0.0, 1.0 / layer.r[role])
        b.weight.zero_()
        if b.bias is not None:
            b.bias.zero_()


def add_adapter_set(
    unet: nn.Module,
    vae: Optional[nn.Module],
    role: str,
    rank: int = 4,
    alpha: Optional[float] = None,
    *,
    unet_target_modules: Optional[Sequence[str]] = None,
    vae_target_modules: Optional[Sequence[str]] = None,
    init: str = "gaussian",
    conv_in: bool = False,
    trainable: bool = True,
    base_model_name_or_path: Optional[str] = None,
    degradation_preset: Optional[Union[str, dict]] = None,
) -> AdapterSetConfig:
    """Add a fresh adapter set named ``role`` (OSEDiff targets, gaussian init: B = 0) and activate it.

    ``alpha`` defaults to ``2 * rank`` (OSEDiff's scale 2 at its rank 4, alpha 8). ``conv_in=True``
    lets the set change the UNet's conv_in fully (as OSEDiff trains it), through an exact full-rank
    LoRA with a bias that starts at zero. Pass ``vae=None`` or ``vae_target_modules=[]`` for a
    UNet-only set (the regularizer). ``trainable`` is the set's declared trainability, kept through
    every switch. peft's random init draws from the global RNG (seed it with ``torch.manual_seed``).
    """
    unet, vae = unwrap_model(unet, "unet"), unwrap_model(vae, "vae")
    check_role_name(role)
    trainable, conv_in = check_flag("trainable", trainable), check_flag("conv_in", conv_in)
    if role in records(unet) or role in peft_config(unet) or role in peft_config(vae):
        raise ValueError(f"adapter set {role!r} already exists; delete it first or pick another role")
    if init not in INIT_VALUES:
        raise ValueError(f"init must be one of {list(INIT_VALUES)}, got {init!r}")
    if unet_target_modules is None:
        unet_target_modules = osediff_unet_target_modules(unet)
    if vae_target_modules is None:
        vae_target_modules = osediff_vae_target_modules(vae) if vae is not None else []
    if vae is None and vae_target_modules:
        raise ValueError("vae_target_modules were given but vae is None")
    unet_targets = unique_in_order(unet_target_modules)
    if conv_in and CONV_IN not in unet_targets:
        unet_targets.append(CONV_IN)
    config = AdapterSetConfig(
        role=role,
        base_model_name_or_path=base_model_name_or_path or _model_name(unet),  # None: unknown, never a guess
        rank=rank,
        alpha=float(2 * rank if alpha is None else alpha),
        unet_target_modules=unet_targets,
        vae_target_modules=unique_in_order(vae_target_modules),
        init=init,
        has_conv_in=bool(conv_in),
        degradation_preset=degradation_preset,
        base_architecture=base_architecture(unet, vae),
    )
    check_targets_exist(unet, config.unet_target_modules, "unet")
    if config.vae_target_modules:
        check_targets_exist(vae, config.vae_target_modules, "vae")
    peft_init = "gaussian" if init == "gaussian" else True
    conv_shape = tuple(base_conv_in(unet).weight.shape) if conv_in else None
    unet_lora = lora_config(config.rank, config.alpha, config.unet_target_modules, peft_init, conv_shape)

    def add_vae() -> None:
        vae_lora = lora_config(
            config.effective_vae_rank, config.effective_vae_alpha, config.vae_target_modules, peft_init
        )
        vae.add_adapter(vae_lora, adapter_name=role)

    def initialise() -> None:
        if conv_in:  # peft could not draw the gaussian init (lora_bias), and conv_in's A is fixed
            _initialise_factors(unet, role, init, unet.conv_in)

    install_adapter_set(
        unet,
        vae,
        config,
        trainable,
        lambda: unet.add_adapter(unet_lora, adapter_name=role),
        add_vae if config.vae_target_modules else None,
        after=initialise,
    )
    return copy.deepcopy(config)


def delete_adapter_set(unet: nn.Module, vae: Optional[nn.Module], role: str) -> None:
    """Remove a set from both models. Deleting the active set leaves no adapter active."""
    unet, vae = unwrap_model(unet, "unet"), unwrap_model(vae, "vae")
    require_role(unet, role)
    if fused_adapter_set(unet, vae) == role:
        unfuse_adapter_set(unet, vae)
    active = any(role in layer.active_adapters and not layer.disable_adapters for layer in tuner_layers(unet))
    if active:
        set_adapter_set(unet, vae, None)
    _delete_from_model(unet, role)
    _delete_from_model(vae, role)
    del records(unet)[role]


def unload_adapter_sets(unet: nn.Module, vae: Optional[nn.Module]) -> None:
    """Remove every adapter set and peft wrapper: the models are the pristine base again."""
    unet, vae = unwrap_model(unet, "unet"), unwrap_model(vae, "vae")
    unfuse_adapter_set(unet, vae)
    for model in (unet, vae):
        if model is not None and tuner_layers(model):
            model.unload_lora()
            invalidate_structure(model)
    records(unet).clear()


_HUB_CACHE_RE = re.compile(r"models--(?P<org>[^/\\]+?)--(?P<name>[^/\\]+)[/\\]snapshots[/\\]")


def _model_name(model: Optional[nn.Module]) -> Optional[str]:
    """The base model id the UNet came from: a Hub id (also recovered from a Hub cache path),
    a user's local path, or None when unknown (e.g. built from a config)."""
    cfg = getattr(model, "config", None)
    name = cfg.get("_name_or_path") if cfg is not None and hasattr(cfg, "get") else None
    if not name:
        return None
    match = _HUB_CACHE_RE.search(str(name))
    if match:
        return f"{match['org']}/{match['name']}"
    return str(name).rstrip("/\\").removesuffix("/unet").removesuffix("\\unet")
