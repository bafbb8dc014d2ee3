"""OSEDiff's released ``osediff.pkl`` -> one restorer adapter set (safetensors, no pickle at load time).

What a real checkpoint holds, as OSEDiff's training code writes it:

* ``unet_lora_{encoder,decoder,others}_modules``: the module names of its three UNet adapters
  (``default_encoder``/``default_decoder``/``default_others``, all active at once, disjoint);
* ``vae_lora_encoder_modules``: the VAE adapter's names. OSEDiff's loop appends a name once for
  every pattern it matches, so this list repeats names (``conv1`` matches "conv1" and "conv",
  ``quant_conv`` every pattern): the lists are de-duplicated in order, never rejected for it;
* ``rank_unet``/``rank_vae``; peft's default alpha 8 applies (OSEDiff never sets it);
* ``state_dict_unet``: every key with "lora" or "conv_in", i.e. the LoRA factors and the fully
  trained ``conv_in.base_layer.weight/bias``; ``state_dict_vae``: the VAE LoRA factors.

The three UNet adapters become one adapter over the union of their targets (the same arithmetic).
The trained conv_in and its rank-r LoRA become one exact full-rank LoRA with a bias on conv_in
(:mod:`.conv_in`), computed in float64 against the base model's conv_in.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
from collections.abc import Mapping
from typing import Any, Optional, Union

import torch
from torch import nn

from .config import DEFAULT_BASE_MODEL, AdapterSetConfig
from .conv_in import CONV_IN, conv_delta_to_lora
from .lifecycle import base_conv_in, lora_config
from .serialization import check_adapter_tensors, check_finite, lora_metadata, write_adapter_set
from .targets import base_architecture, unique_in_order

__all__ = [
    "CheckpointReadError",
    "convert_osediff_checkpoint",
    "convert_osediff_state_dict",
    "load_base_conv_in",
    "read_checkpoint",
]

_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class CheckpointReadError(ValueError):
    """A checkpoint that cannot be read, or not safely: the message says which, in this package's
    words (torch's own advice for a refused pickle is to load it unsafely, which we never suggest)."""


def read_checkpoint(path: Union[str, os.PathLike]) -> Any:
    """``torch.load(weights_only=True)``: tensors, lists, dicts and numbers only, never arbitrary objects."""
    name = os.fspath(path)
    try:
        return torch.load(name, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        message = str(err)
        found = _UNSAFE_GLOBAL.search(message)
        if found or "Unsupported global" in message:
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointReadError(
                f"checkpoint {name!r} contains Python objects other than tensors{what} and is refused as unsafe: "
                "loading it could run arbitrary code. OSEDiff's osediff.pkl holds only tensors and plain containers"
            ) from err
        raise CheckpointReadError(
            f"checkpoint {name!r} is not a PyTorch checkpoint (a torch.save file), or it is damaged"
        ) from err
    except EOFError as err:
        raise CheckpointReadError(f"checkpoint {name!r} is truncated or damaged") from err
    except OSError as err:
        # torch's zip reader seeks before the start of a truncated file: "[Errno 22] Invalid argument"
        if err.errno == errno.EINVAL:
            raise CheckpointReadError(f"checkpoint {name!r} is truncated or damaged") from err
        raise
    except RuntimeError as err:
        message = str(err)
        if "zip archive" in message or "PytorchStreamReader" in message:
            raise CheckpointReadError(f"checkpoint {name!r} is truncated or damaged") from err
        if "enforce fail" in message or "inline_container" in message:  # a zip, but not torch.save's layout
            raise CheckpointReadError(
                f"checkpoint {name!r} is a zip file but not a PyTorch checkpoint (a torch.save file), or it is damaged"
            ) from err
        if "weights_only" in message:  # any other refusal of torch's safe loader
            raise CheckpointReadError(
                f"checkpoint {name!r} holds data that cannot be read safely (only tensors and plain containers are accepted)"
            ) from err
        raise


OSEDIFF_VAE_ADAPTER = "default_encoder"
OSEDIFF_LORA_ALPHA = 8.0  # peft's default lora_alpha, which OSEDiff never overrides

_OSEDIFF_GROUPS = {
    "default_encoder": "unet_lora_encoder_modules",
    "default_decoder": "unet_lora_decoder_modules",
    "default_others": "unet_lora_others_modules",
}
_OSEDIFF_REQUIRED = {
    **{key: list for key in _OSEDIFF_GROUPS.values()},
    "vae_lora_encoder_modules": list, "rank_unet": int, "rank_vae": int, "state_dict_unet": dict,
    "state_dict_vae": dict,
}  # fmt: skip
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")
_CONV_IN_KEYS = ("conv_in.base_layer.weight", "conv_in.weight")
_CONV_IN_BIAS_KEYS = ("conv_in.base_layer.bias", "conv_in.bias")

ConvIn = tuple[torch.Tensor, Optional[torch.Tensor]]


def _check_layout(checkpoint: Mapping[str, Any]) -> None:
    for key, kind in _OSEDIFF_REQUIRED.items():
        if key not in checkpoint:
            raise ValueError(f"not an OSEDiff checkpoint: key {key!r} is missing")
        value = checkpoint[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"OSEDiff checkpoint key {key!r} should be a {kind.__name__}, got {type(value).__name__}")
        if kind is list and not all(isinstance(v, str) and v for v in value):
            raise ValueError(f"OSEDiff checkpoint key {key!r} should list module names (strings)")
        if kind is int and value <= 0:
            raise ValueError(f"OSEDiff checkpoint key {key!r} should be a positive rank, got {value}")
        if kind is dict and not all(isinstance(v, torch.Tensor) for v in value.values()):
            raise ValueError(f"OSEDiff checkpoint key {key!r} should map names to tensors")


def _lora_factors(
    state: Mapping[str, torch.Tensor], owner: Mapping[str, str], rank: int, which: str
) -> dict[str, dict[str, torch.Tensor]]:
    """{module: {"A": tensor, "B": tensor}} from peft keys ``<module>.lora_<A|B>.<adapter>.weight``."""
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _LORA_KEY.match(key)
        if match is None:
            raise ValueError(f"unexpected key {key!r} in {which}")
        module, adapter = match["module"], match["adapter"]
        if module not in owner:
            raise ValueError(f"{which} key {key!r} is for a module that is in none of the checkpoint's target lists")
        if owner[module] != adapter:
            raise ValueError(
                f"{which} key {key!r} names adapter {adapter!r}, but {module!r} belongs to {owner[module]}"
            )
        rank_dim = 0 if match["ab"] == "A" else 1
        if value.ndim < 2 or value.shape[rank_dim] != rank:
            raise ValueError(f"{which} key {key!r} has shape {tuple(value.shape)}, which is not rank {rank}")
        factors.setdefault(module, {})[match["ab"]] = value
    missing = [m for m in owner if set(factors.get(m, {})) != {"A", "B"}]
    if missing:
        raise ValueError(f"{which} lacks the LoRA factors of {len(missing)} listed module(s), e.g. {missing[:3]}")
    return factors


def _composed_delta(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * B A as one conv kernel: A is a k x k conv to r channels, B a 1 x 1 conv from them."""
    return scale * torch.einsum("or,rikl->oikl", b[:, :, 0, 0].double(), a.double())


def convert_osediff_state_dict(
    checkpoint: Mapping[str, Any],
    base_conv: Optional[ConvIn] = None,
    *,
    role: str = "restorer",
    base_model_name_or_path: Optional[str] = DEFAULT_BASE_MODEL,
) -> tuple[dict[str, torch.Tensor], AdapterSetConfig, dict[str, dict]]:
    """Turn OSEDiff's checkpoint dict into (prefixed state dict, config, LoraConfig metadata) of one set.

    ``base_conv`` is the base UNet's conv_in (weight, bias): the trained conv_in is stored as its
    change from that base. Real conflicts raise ValueError: a module in two UNet groups, keys of
    modules not in the lists or of other adapters, ranks or shapes that do not fit.
    """
    _check_layout(checkpoint)
    for part in ("state_dict_unet", "state_dict_vae"):  # NaN/Inf weights would make every output NaN
        check_finite({k: v for k, v in checkpoint[part].items() if torch.is_tensor(v)}, f"OSEDiff checkpoint {part}")
    owner: dict[str, str] = {}
    for adapter, key in _OSEDIFF_GROUPS.items():
        for module in unique_in_order(checkpoint[key]):
            if module in owner:
                raise ValueError(
                    f"UNet module {module!r} is in both {owner[module]} and {adapter}: targets overlap, cannot merge"
                )
            owner[module] = adapter
    rank_unet, rank_vae = checkpoint["rank_unet"], checkpoint["rank_vae"]
    scale = OSEDIFF_LORA_ALPHA / rank_unet

    unet_state = dict(checkpoint["state_dict_unet"])
    trained = {}
    for key in list(unet_state):
        if key in _CONV_IN_KEYS:
            trained["weight"] = unet_state.pop(key)
        elif key in _CONV_IN_BIAS_KEYS:
            trained["bias"] = unet_state.pop(key)
    if "bias" in trained and "weight" not in trained:
        raise ValueError("state_dict_unet has conv_in's bias but not its weight")
    unet_factors = _lora_factors(unet_state, owner, rank_unet, "state_dict_unet")
    vae_targets = unique_in_order(checkpoint["vae_lora_encoder_modules"])
    vae_owner = dict.fromkeys(vae_targets, OSEDIFF_VAE_ADAPTER)
    vae_factors = _lora_factors(checkpoint["state_dict_vae"], vae_owner, rank_vae, "state_dict_vae")

    unet_targets = list(owner)
    has_conv_in = "weight" in trained
    state = {}
    for module, ab in unet_factors.items():
        if has_conv_in and module == CONV_IN:
            continue  # folded into conv_in's full-rank LoRA below
        state[f"unet.{module}.lora_A.weight"], state[f"unet.{module}.lora_B.weight"] = ab["A"], ab["B"]
        if has_conv_in:  # lora_bias is one flag for the whole adapter: the other biases are zero
            state[f"unet.{module}.lora_B.bias"] = ab["B"].new_zeros(ab["B"].shape[0])
    if has_conv_in:
        if base_conv is None:
            raise ValueError(
                "this checkpoint trains conv_in fully: pass the base model's conv_in (weight, bias) to store it "
                "as its change from the base (convert_osediff_checkpoint loads it from the base model)"
            )
        base_weight, base_bias = base_conv
        weight = trained["weight"]
        if tuple(base_weight.shape) != tuple(weight.shape):
            raise ValueError(
                f"the checkpoint's conv_in weight {tuple(weight.shape)} does not fit the base's {tuple(base_weight.shape)}"
            )
        delta_w = weight.double() - base_weight.detach().cpu().double()
        if CONV_IN in unet_factors:
            delta_w += _composed_delta(unet_factors[CONV_IN]["A"], unet_factors[CONV_IN]["B"], scale)
        delta_b = None
        if "bias" in trained and base_bias is not None:
            delta_b = trained["bias"].double() - base_bias.detach().cpu().double()
        a, b, bias = conv_delta_to_lora(delta_w, delta_b)
        state["unet.conv_in.lora_A.weight"] = a.to(weight.dtype)
        state["unet.conv_in.lora_B.weight"] = b.to(weight.dtype)
        state["unet.conv_in.lora_B.bias"] = bias.to(weight.dtype)
        if CONV_IN not in unet_targets:
            unet_targets.append(CONV_IN)
    for module, ab in vae_factors.items():
        state[f"vae.{module}.lora_A.weight"], state[f"vae.{module}.lora_B.weight"] = ab["A"], ab["B"]

    config = AdapterSetConfig(
        role=role,
        base_model_name_or_path=base_model_name_or_path,
        rank=rank_unet,
        alpha=OSEDIFF_LORA_ALPHA,
        unet_target_modules=unet_targets,
        vae_target_modules=vae_targets,
        init="gaussian",
        has_conv_in=has_conv_in,
        vae_rank=rank_vae if rank_vae != rank_unet else None,
    )
    conv_shape = tuple(trained["weight"].shape) if has_conv_in else None
    metadata = {
        "unet": lora_metadata(
            lora_config(rank_unet, OSEDIFF_LORA_ALPHA, unet_targets, "gaussian", conv_shape), unet_targets
        )
    }
    if vae_targets:
        metadata["vae"] = lora_metadata(
            lora_config(rank_vae, OSEDIFF_LORA_ALPHA, vae_targets, "gaussian"), vae_targets
        )
    return state, config, metadata


def load_base_conv_in(base_model_name_or_path: str, **hub_kwargs: Any) -> ConvIn:
    """Read only ``conv_in.weight``/``conv_in.bias`` from the base's UNet weights (a folder or a Hub id)."""
    from safetensors import safe_open

    filename = "diffusion_pytorch_model.safetensors"
    local = os.path.join(os.fspath(base_model_name_or_path), "unet", filename)
    if os.path.isdir(os.fspath(base_model_name_or_path)):
        if not os.path.isfile(local):
            raise ValueError(f"{local} not found: the base model folder has no fp32 UNet safetensors file")
        path = local
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(base_model_name_or_path, filename, subfolder="unet", **hub_kwargs)
        except Exception as err:  # offline, not cached, no such repo or file: say what is needed
            raise ValueError(
                f"the base model's conv_in is needed and {base_model_name_or_path!r} could not be read "
                f"({type(err).__name__}); pass a local diffusers folder of the base, or download it first"
            ) from None
    with safe_open(path, framework="pt", device="cpu") as f:
        keys = set(f.keys())
        if "conv_in.weight" not in keys:
            raise ValueError(f"{path} has no conv_in.weight: it is not a diffusers UNet")
        return f.get_tensor("conv_in.weight"), (f.get_tensor("conv_in.bias") if "conv_in.bias" in keys else None)


def convert_osediff_checkpoint(
    pkl_path: Union[str, os.PathLike],
    output_dir: Union[str, os.PathLike],
    unet: Optional[nn.Module] = None,
    vae: Optional[nn.Module] = None,
    base_model_name_or_path: Optional[str] = DEFAULT_BASE_MODEL,
    role: str = "restorer",
    **hub_kwargs: Any,
) -> AdapterSetConfig:
    """Convert OSEDiff's released ``osediff.pkl`` into an adapter-set folder (safetensors, no pickle).

    The file is read with ``torch.load(weights_only=True)``: only tensors and plain containers
    are accepted, never arbitrary objects (:class:`CheckpointReadError` says why a file is refused). The base conv_in comes from ``unet`` when given, else from
    the base model's UNet weights. With ``unet``/``vae`` the result is also checked against them
    (targets, ranks, shapes) and their architecture is recorded.
    """
    checkpoint = read_checkpoint(pkl_path)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{pkl_path} does not hold a dict, so it is not an OSEDiff checkpoint")
    base_conv = None
    if any(key in checkpoint.get("state_dict_unet", {}) for key in (*_CONV_IN_KEYS, *_CONV_IN_BIAS_KEYS)):
        if unet is not None:
            conv = base_conv_in(unet)
            base_conv = (conv.weight, conv.bias)
        else:
            base_conv = load_base_conv_in(base_model_name_or_path, **hub_kwargs)
    state, config, metadata = convert_osediff_state_dict(
        checkpoint, base_conv, role=role, base_model_name_or_path=base_model_name_or_path
    )
    if unet is not None:
        config.base_architecture = base_architecture(unet, vae)
        check_adapter_tensors(state, config, unet, vae)  # raises if it does not fit these models
    write_adapter_set(output_dir, state, config, metadata)
    return config
