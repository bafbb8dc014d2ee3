"""Saving and loading adapter sets as diffusers LoRA files: a folder that is a Hub repo.

A set's folder holds ``pytorch_lora_weights.safetensors`` (``unet.*``/``vae.*`` peft-format keys,
the LoraConfigs in diffusers' ``lora_adapter_metadata`` header), ``adapter_set_config.json``
(:class:`AdapterSetConfig`) and a ``README.md`` model card. Loading checks everything against the
models first (architecture, targets, keys, ranks, shapes, alpha) so a wrong file is refused before
anything changes, then installs through diffusers' own ``load_lora_adapter``; plain diffusers can
load the same file with ``load_lora_weights`` (UNet) and ``vae.load_lora_adapter(prefix="vae")``.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import json
import logging
import math
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Optional, Union

import torch
from torch import nn

from ..file_utils import recover_interrupted_save, staged_folder
from .config import (
    ADAPTER_SET_CONFIG_NAME,
    LORA_WEIGHT_NAME,
    MODEL_CARD_NAME,
    AdapterSetConfig,
    check_flag,
    check_role_name,
)
from .conv_in import CONV_IN, CONV_IN_PATTERN, full_rank
from .lifecycle import base_conv_in, install_adapter_set, lora_config
from .model_card import adapter_set_model_card
from .registry import named_tuner_layers, peft_config, records, require_role, unwrap_model
from .targets import base_architecture, check_targets_exist, lora_capable_modules, select_modules

logger = logging.getLogger(__name__)

__all__ = [
    "detached_peft_layers",
    "load_adapter_set",
    "load_adapter_set_weights",
    "lora_metadata",
    "save_adapter_set",
    "write_adapter_set",
]

LORA_METADATA_KEY = "lora_adapter_metadata"  # the header key of diffusers' save_lora_weights
CONFIG_METADATA_KEY = "irib_adapter_set"
PARTS = ("unet", "vae")
#: A saved LoRA key: "<module>.lora_A.weight", "<module>.lora_B.bias" (peft's names without the adapter).
_PEFT_KEY = re.compile(r"(.+)\.lora_([AB])\.(weight|bias)")

# LoraConfig options our sets never use; a file that sets them is not one of ours.
_UNSUPPORTED_LORA_OPTIONS = {
    "use_dora": False,
    "modules_to_save": None,
    "layers_to_transform": None,
    "fan_in_fan_out": False,
    "use_rslora": False,
}


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


def lora_metadata(lora_config: Any, target_modules: Sequence[str]) -> dict:
    """A LoraConfig as JSON, with the explicit target list (peft compacts long lists to suffixes)."""
    meta = _json_safe(lora_config.to_dict())
    meta["target_modules"] = sorted(target_modules)
    return meta


def write_adapter_set(
    save_directory: Union[str, os.PathLike],
    state_dict: dict[str, torch.Tensor],
    config: AdapterSetConfig,
    metadata: dict[str, dict],
    weight_name: str = LORA_WEIGHT_NAME,
    model_card: bool = True,
) -> str:
    """Write the three files of a set folder from prefixed tensors and per-part LoraConfig dicts."""
    save_directory = os.fspath(save_directory)
    flat = {f"{part}.{k}": v for part, cfg in metadata.items() for k, v in cfg.items()}
    header = {
        "format": "pt",
        LORA_METADATA_KEY: json.dumps(flat, indent=2, sort_keys=True),
        CONFIG_METADATA_KEY: config.to_json_string(),
    }
    # Clone so tensors that share storage (views) never trip safetensors' aliasing check.
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in state_dict.items()}
    check_finite(tensors, f"adapter set {config.role!r}")
    # All files are written, then moved in together: a failure (full disk, unwritable folder) leaves
    # the previous set whole, never new weights beside an old config.
    with staged_folder(save_directory) as staging:
        _save_safetensors(tensors, os.path.join(staging, weight_name), header)
        config.to_json_file(os.path.join(staging, ADAPTER_SET_CONFIG_NAME))
        if model_card:
            adapter_set_model_card(config).save(os.path.join(staging, MODEL_CARD_NAME))
    return save_directory


_IO_ERROR_CODE = re.compile(r"IoError\(Os \{ code: (\d+)")


def _save_safetensors(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    """safetensors' ``save_file``, with a failed write (a full disk, a read-only folder) raised as the
    OSError it is: safetensors reports it as ``SafetensorError("... IoError(Os { code: 28 ...")``."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, path, metadata=metadata)
    except SafetensorError as err:
        found = _IO_ERROR_CODE.search(str(err))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), path) from err


def check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Refuse NaN/Inf weights, naming the first bad tensor: they would make every output NaN."""
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise ValueError(f"{what}: tensor {key!r} holds {bad} NaN/Inf value(s) of {value.numel()}")


def _checked_save_config(
    recorded: AdapterSetConfig, config: Optional[AdapterSetConfig], role: str
) -> AdapterSetConfig:
    if config is None:
        return copy.deepcopy(recorded)
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
    return config


def save_adapter_set(
    unet: nn.Module,
    vae: Optional[nn.Module],
    role: str,
    save_directory: Union[str, os.PathLike],
    config: Optional[AdapterSetConfig] = None,
    *,
    weight_name: str = LORA_WEIGHT_NAME,
    model_card: bool = True,
) -> str:
    """Write ``role`` to ``save_directory``: LoRA weights, ``adapter_set_config.json`` and a model card.

    A given ``config`` (e.g. with the degradation preset a projector was trained on) must agree
    with the set on the model.
    """
    from peft.utils import get_peft_model_state_dict

    unet, vae = unwrap_model(unet, "unet"), unwrap_model(vae, "vae")
    config = _checked_save_config(require_role(unet, role).config, config, role)
    if not config.base_architecture:
        config.base_architecture = base_architecture(unet, vae)
    if config.vae_target_modules and role not in peft_config(vae):
        raise ValueError(f"adapter set {role!r} has a VAE LoRA: pass the vae to save it")
    state_dict, metadata = {}, {}
    for part, model, targets in (("unet", unet, config.unet_target_modules), ("vae", vae, config.vae_target_modules)):
        if model is None or role not in peft_config(model):
            continue
        with warnings.catch_warnings():
            # peft 0.21 takes the 1-D lora_B biases of lora_bias for unsaved ZeRO-3 shards; they are whole.
            warnings.filterwarnings("ignore", message=".*LoRA tensor\\(s\\) have invalid shape")
            part_state = get_peft_model_state_dict(model, adapter_name=role)
        state_dict.update({f"{part}.{k}": v for k, v in part_state.items()})
        metadata[part] = lora_metadata(peft_config(model)[role], targets)
    return write_adapter_set(save_directory, state_dict, config, metadata, weight_name, model_card)


@contextlib.contextmanager
def detached_peft_layers(*models: Optional[nn.Module]) -> Iterator[None]:
    """Put every peft layer's base layer back in its parent for the body, then the peft layers again.

    ``model.state_dict()`` inside is the pristine base (what ``save_pretrained`` must write: with
    peft layers attached it writes wrapped keys that reload as random weights), and no parameter
    object is replaced, so optimisers holding the adapters' parameters keep training them.
    """
    models = [unwrap_model(m) for m in models if m is not None]
    fused = {name for m in models for _, layer in named_tuner_layers(m) for name in layer.merged_adapters}
    if fused:
        raise ValueError(
            f"adapter set(s) {sorted(fused)} are fused into the base weights; unfuse them before saving the base"
        )
    swapped = []
    try:
        for model in models:
            for name, layer in named_tuner_layers(model):
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, child, layer.get_base_layer())
                swapped.append((parent, child, layer))
        yield
    finally:
        for parent, child, layer in reversed(swapped):
            setattr(parent, child, layer)


# --------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------


def _check_hub_id(path_or_repo_id: str) -> None:
    """Decide local versus Hub before any download, as huggingface_hub users expect: an existing folder
    is local; a path-like string (absolute, relative, ``~``, more than one ``/``, or inside a folder
    that exists) is a local path that is missing; only a valid ``owner/name`` id goes to the Hub."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    missing = f"{path_or_repo_id!r} is not a folder (no such directory: {os.path.abspath(os.path.expanduser(path_or_repo_id))})"
    parent = os.path.dirname(path_or_repo_id)
    if os.path.exists(path_or_repo_id):
        raise ValueError(f"{path_or_repo_id!r} is not a directory holding an adapter set")
    if path_or_repo_id.startswith((".", "/", "~")) or (parent and os.path.isdir(parent)):
        raise ValueError(missing)
    try:
        validate_repo_id(path_or_repo_id)
    except HFValidationError:
        raise ValueError(f"{missing}, and not a valid Hub repo id either") from None


def _resolve(path_or_repo_id: str, filename: str, required: bool, hub_kwargs: dict) -> Optional[str]:
    subfolder = hub_kwargs.get("subfolder")
    if os.path.isdir(path_or_repo_id):
        path = os.path.join(path_or_repo_id, subfolder or "", filename)
        if os.path.isfile(path):
            return path
        if required:
            raise ValueError(f"{filename} not found in {os.path.join(path_or_repo_id, subfolder or '')}")
        return None
    _check_hub_id(path_or_repo_id)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.constants import is_offline_mode
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return hf_hub_download(repo_id=path_or_repo_id, filename=filename, **hub_kwargs)
    except LocalEntryNotFoundError:  # offline (HF_HUB_OFFLINE) or no connection, and not in the cache
        if not required:
            return None
        why = "the Hub is offline (HF_HUB_OFFLINE)" if is_offline_mode() else "the Hub could not be reached"
        raise ValueError(
            f"{path_or_repo_id!r} is not a local folder, and as a Hub repo id its {filename} is not in the "
            f"cache and {why}"
        ) from None
    except EntryNotFoundError:
        if required:
            raise ValueError(f"the Hub repo {path_or_repo_id!r} has no {filename}: it is not an adapter set") from None
        return None
    except RepositoryNotFoundError:
        raise ValueError(
            f"{path_or_repo_id!r} is neither a local folder nor a Hub repo you can access (check the name, or log in)"
        ) from None


def _read_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is damaged or not a safetensors file ({err})") from None
    return tensors, metadata


def _read_config(path_or_repo_id: str, metadata: dict, hub_kwargs: dict) -> AdapterSetConfig:
    config_file = _resolve(path_or_repo_id, ADAPTER_SET_CONFIG_NAME, False, hub_kwargs)
    if config_file is not None:
        return AdapterSetConfig.from_json_file(config_file)
    if CONFIG_METADATA_KEY in metadata:  # the config travels in the weights' header too
        return AdapterSetConfig.from_json_string(metadata[CONFIG_METADATA_KEY])
    raise ValueError(
        f"{path_or_repo_id!r} is not a diffusers-irib adapter set: it has no {ADAPTER_SET_CONFIG_NAME} and its "
        "weights carry no adapter set config (a plain diffusers LoRA loads with load_lora_weights instead)"
    )


def _check_architecture(config: AdapterSetConfig, unet: nn.Module, vae: Optional[nn.Module]) -> None:
    current = base_architecture(unet, vae)
    diffs = []
    for part in PARTS:
        for key, value in ((config.base_architecture or {}).get(part) or {}).items():
            mine = (current.get(part) or {}).get(key, value)
            if mine != value:
                diffs.append(f"{part}.{key}: set has {value!r}, this model has {mine!r}")
    if diffs:
        raise ValueError(
            f"adapter set {config.role!r} was made for a different base model "
            f"({config.base_model_name_or_path or 'base unknown'}): " + "; ".join(diffs)
        )


def _part_spec(config: AdapterSetConfig, part: str) -> tuple[list[str], int, float, bool]:
    """(targets, rank, alpha, has a full-rank conv_in LoRA) of one model's part of the set."""
    if part == "unet":
        return config.unet_target_modules, config.rank, config.alpha, config.has_conv_in
    return config.vae_target_modules, config.effective_vae_rank, config.effective_vae_alpha, False


def _expected_metadata(config: AdapterSetConfig, part: str, model: nn.Module) -> dict:
    """The LoraConfig dict the set's part must have (used when a file carries none)."""
    targets, rank, alpha, conv = _part_spec(config, part)
    conv_shape = tuple(base_conv_in(model).weight.shape) if conv else None
    return lora_metadata(lora_config(rank, alpha, targets, "gaussian", conv_shape), targets)


def _check_metadata(meta: dict, config: AdapterSetConfig, part: str, model: nn.Module) -> None:
    """Refuse a LoraConfig our loader would not reproduce exactly (options, rank, alpha, targets)."""
    targets, rank, alpha, conv = _part_spec(config, part)
    for key, neutral in _UNSUPPORTED_LORA_OPTIONS.items():
        value = meta.get(key, neutral)
        if value is not None and value != neutral:
            raise ValueError(f"{part} LoRA uses {key}={value!r}, which adapter sets do not support")
    if "r" not in meta or "lora_alpha" not in meta:
        raise ValueError(f"{part} LoRA metadata lacks r / lora_alpha")
    if meta["r"] != rank:
        raise ValueError(f"{part} LoRA rank in the weights' metadata ({meta['r']}) differs from the config ({rank})")
    if not math.isclose(float(meta["lora_alpha"]), float(alpha)):
        raise ValueError(
            f"{part} LoRA alpha in the weights' metadata ({meta['lora_alpha']}) differs from the config ({alpha})"
        )
    patterns = {}
    if conv:
        full = full_rank(base_conv_in(model).weight.shape)
        patterns = {CONV_IN_PATTERN: full}
    for key in ("rank_pattern", "alpha_pattern"):
        if (meta.get(key) or {}) != patterns:
            raise ValueError(f"{part} LoRA {key} is {meta.get(key)!r}; this set needs {patterns!r}")
    if bool(meta.get("lora_bias", False)) != conv:
        raise ValueError(f"{part} LoRA lora_bias={meta.get('lora_bias')!r} does not fit has_conv_in={conv}")
    if meta.get("target_modules") is not None and select_modules(model, meta["target_modules"]) != set(targets):
        raise ValueError(f"{part} target_modules in the weights' metadata differ from the config")


def _expected_shapes(module: nn.Module, rank: int, bias: bool) -> dict[str, tuple[int, ...]]:
    if isinstance(module, nn.Linear):
        shapes = {"lora_A.weight": (rank, module.in_features), "lora_B.weight": (module.out_features, rank)}
        out = module.out_features
    else:
        shapes = {
            "lora_A.weight": (rank, module.in_channels, *module.kernel_size),
            "lora_B.weight": (module.out_channels, rank, 1, 1),
        }
        out = module.out_channels
    if bias:
        shapes["lora_B.bias"] = (out,)
    return shapes


def check_adapter_tensors(tensors: dict, config: AdapterSetConfig, unet: nn.Module, vae: Optional[nn.Module]) -> dict:
    """Every key and shape against the models; returns {part: {unprefixed key: tensor}}."""
    parts: dict[str, dict] = {part: {} for part in PARTS}
    for key, value in tensors.items():
        part, _, rest = key.partition(".")
        if part not in parts or not rest:
            raise ValueError(f"unexpected key {key!r} in the adapter weights (expected unet.* or vae.*)")
        parts[part][rest] = value
    if any(k in parts["unet"] for k in ("conv_in.weight", "conv_in.bias")):
        raise ValueError(
            "these weights hold a full unet.conv_in (adapter set format 1, written by diffusers-irib before "
            "0.1.0): convert the OSEDiff checkpoint again with irib-convert-osediff, which now stores conv_in "
            "as an exact LoRA"
        )
    if parts["vae"] and not config.vae_target_modules:
        raise ValueError("the weights hold vae.* keys but the config lists no vae_target_modules")
    for part, model in (("unet", unet), ("vae", vae)):
        targets, rank, _, conv = _part_spec(config, part)
        if not targets:
            continue
        if model is None:
            raise ValueError(f"adapter set {config.role!r} has a VAE LoRA but vae is None")
        check_targets_exist(model, targets, part)
        modules = dict(lora_capable_modules(model))
        expected = {}
        for target in targets:
            target_rank = full_rank(modules[target].weight.shape) if conv and target == CONV_IN else rank
            shapes = _expected_shapes(modules[target], target_rank, bias=conv)
            expected.update({f"{target}.{k}": shape for k, shape in shapes.items()})
        missing, extra = sorted(set(expected) - set(parts[part])), sorted(set(parts[part]) - set(expected))
        if missing or extra:
            raise ValueError(
                f"{part} LoRA weights do not match the set's targets (missing: {missing[:5]}, unexpected: {extra[:5]})"
            )
        bad = [
            f"{k}: {tuple(parts[part][k].shape)} vs expected {shape}"
            for k, shape in expected.items()
            if tuple(parts[part][k].shape) != shape
        ]
        if bad:
            raise ValueError(
                f"{part} LoRA shapes do not fit this model at rank {rank} ({len(bad)} mismatches, e.g. {bad[:3]})"
            )
    return parts


def load_adapter_set(
    unet: nn.Module,
    vae: Optional[nn.Module],
    path_or_repo_id: Union[str, os.PathLike],
    role: Optional[str] = None,
    *,
    trainable: bool = False,
    weight_name: str = LORA_WEIGHT_NAME,
    expected_role: Optional[str] = None,
    **hub_kwargs: Any,
) -> AdapterSetConfig:
    """Load an adapter set from a local folder or a Hub repo (``hf_hub_download``) and activate it.

    ``role`` defaults to the saved role (pass another to load e.g. a restorer twice: an explicit
    ``role`` is an explicit override). ``expected_role`` refuses a set saved under another role
    (``from_pretrained(projector=...)`` uses it, so a restorer folder is never taken as a projector). Everything
    is checked before touching the models: base architecture, target modules present, keys and
    LoRA shapes (rank), and that the LoraConfigs in the weights' metadata agree with the config;
    any mismatch raises ValueError. The set is frozen unless ``trainable``. The global RNG is left
    untouched.
    """
    trainable = check_flag("trainable", trainable)
    unet, vae = unwrap_model(unet, "unet"), unwrap_model(vae, "vae")
    path_or_repo_id = os.fspath(path_or_repo_id)
    if os.path.isdir(path_or_repo_id):  # a save killed half-way is rolled back first
        recover_interrupted_save(path_or_repo_id)
    weight_file = _resolve(path_or_repo_id, weight_name, True, hub_kwargs)
    tensors, header = _read_safetensors(weight_file)
    check_finite(tensors, weight_file)
    config = _read_config(path_or_repo_id, header, hub_kwargs)
    if expected_role is not None and config.role != expected_role:
        raise ValueError(
            f"{path_or_repo_id!r} holds a {config.role!r} adapter set, not a {expected_role!r} set; to use it as "
            f"the {expected_role} anyway, load it explicitly: load_adapter_set(path, role={expected_role!r})"
        )
    if role is not None:
        config.role = check_role_name(role)
    role = config.role
    if role in records(unet) or role in peft_config(unet) or role in peft_config(vae):
        raise ValueError(f"adapter set {role!r} already exists; delete it first or load under another role")
    _check_architecture(config, unet, vae)
    parts = check_adapter_tensors(tensors, config, unet, vae)

    flat = json.loads(header[LORA_METADATA_KEY]) if header.get(LORA_METADATA_KEY) else {}
    metadata = {}
    for part, model in (("unet", unet), ("vae", vae)):
        if not _part_spec(config, part)[0]:
            continue
        meta = {k.removeprefix(f"{part}."): v for k, v in flat.items() if k.startswith(f"{part}.")}
        # The scale must never be guessed: without metadata the config's rank and alpha are used.
        meta = meta or _expected_metadata(config, part, model)
        _check_metadata(meta, config, part, model)
        metadata.update({f"{part}.{k}": v for k, v in meta.items()})

    def loader(model: nn.Module, part: str):
        state = {f"{part}.{k}": v for k, v in parts[part].items()}
        return lambda: model.load_lora_adapter(state, prefix=part, adapter_name=role, metadata=metadata)

    with torch.random.fork_rng(devices=[]):  # peft's random init must not move the user's seed
        install_adapter_set(
            unet,
            vae,
            config,
            trainable,
            loader(unet, "unet"),
            loader(vae, "vae") if config.vae_target_modules else None,
        )
    return copy.deepcopy(config)


def load_adapter_set_weights(
    unet: nn.Module,
    vae: Optional[nn.Module],
    path: Union[str, os.PathLike],
    role: Optional[str] = None,
    *,
    weight_name: str = LORA_WEIGHT_NAME,
) -> None:
    """Copy a saved set's tensors into the set ``role`` that already exists on the models, in place.

    Resuming training needs this rather than :func:`load_adapter_set`: the optimiser and DDP hold
    the existing parameter objects, so the values must change and the objects must not. The file
    must hold exactly the set's tensors (same targets, rank and shapes); nothing is copied otherwise.
    """
    unet, vae = unwrap_model(unet, "unet"), unwrap_model(vae, "vae")
    weight_file = _resolve(os.fspath(path), weight_name, True, {})
    tensors, header = _read_safetensors(weight_file)
    check_finite(tensors, weight_file)
    saved = _read_config(os.fspath(path), header, {})
    role = role or saved.role
    config = require_role(unet, role).config
    for name in ("rank", "alpha", "unet_target_modules", "vae_target_modules", "has_conv_in"):
        if getattr(saved, name) != getattr(config, name):
            raise ValueError(
                f"{path}: {name} {getattr(saved, name)!r} differs from set {role!r} ({getattr(config, name)!r})"
            )
    parts = check_adapter_tensors(tensors, config, unet, vae)
    targets = []
    for part, model in (("unet", unet), ("vae", vae)):
        for key, value in parts[part].items():
            match = _PEFT_KEY.fullmatch(key)
            if match is None:
                raise ValueError(f"{path}: {part}.{key} is not a LoRA factor key")
            module, factor, kind = match.groups()
            targets.append((model.get_parameter(f"{module}.lora_{factor}.{role}.{kind}"), value))
    with torch.no_grad():
        for parameter, value in targets:
            parameter.copy_(value.to(dtype=parameter.dtype, device=parameter.device))
