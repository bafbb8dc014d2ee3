"""A full change of the UNet's ``conv_in`` as an exact LoRA, so every part of a set is a peft LoRA.

OSEDiff trains the whole ``conv_in`` (weight and bias). A change dW of a conv with ``in`` input
channels and a k x k kernel has rank at most ``in * k * k`` (36 for SD's 4-channel 3x3 conv_in), so
it is exactly a LoRA of that rank with scale 1:

* ``lora_A`` (R x in x k x k) is the one-hot "patch extractor": output channel r copies input
  channel i at kernel offset (u, v) for r = (i * k + u) * k + v, so A(x) is the k x k neighbourhood
  of every pixel, unchanged (multiplying by 1 and adding zeros is exact in floating point);
* ``lora_B`` (out x R x 1 x 1) is dW flattened, and its bias (peft's ``lora_bias``) is the bias change.

Then B(A(x)) = conv(x, dW) + db. Switching, fusing, saving and plain-diffusers loading all go
through peft's own LoRA machinery: no patched forward, no parameters outside peft.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch

__all__ = ["CONV_IN", "conv_delta_to_lora", "conv_in_lora_options", "full_rank", "patch_extractor"]

CONV_IN = "conv_in"
#: peft's pattern key for exactly the top-level ``conv_in`` (not e.g. ``encoder.conv_in``).
CONV_IN_PATTERN = "^conv_in$"


def full_rank(weight_shape: Sequence[int]) -> int:
    """The rank that represents any change of a conv weight of this shape: in_channels * kh * kw."""
    _, in_channels, kh, kw = weight_shape
    return in_channels * kh * kw


def conv_in_lora_options(weight_shape: Sequence[int]) -> dict:
    """LoraConfig options that make conv_in's LoRA full-rank, with scale 1 and a bias."""
    rank = full_rank(weight_shape)
    return {"rank_pattern": {CONV_IN_PATTERN: rank}, "alpha_pattern": {CONV_IN_PATTERN: rank}, "lora_bias": True}


def patch_extractor(weight_shape: Sequence[int], dtype: torch.dtype, device=None) -> torch.Tensor:
    """The one-hot ``lora_A`` weight (R x in x kh x kw) that copies every k x k neighbourhood."""
    _, in_channels, kh, kw = weight_shape
    rank = full_rank(weight_shape)
    return torch.eye(rank, dtype=dtype, device=device).reshape(rank, in_channels, kh, kw)


def conv_delta_to_lora(
    delta_weight: torch.Tensor, delta_bias: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lora_A, lora_B, lora_B bias) of the exact scale-1 LoRA that adds ``delta_weight``/``delta_bias``.

    Built in the deltas' dtype: compute the deltas in float64 for the most exact result.
    """
    if delta_weight.ndim != 4:
        raise ValueError(f"a conv weight change must be 4-D (out, in, kh, kw), got {tuple(delta_weight.shape)}")
    out_channels = delta_weight.shape[0]
    if delta_bias is None:
        delta_bias = torch.zeros(out_channels, dtype=delta_weight.dtype, device=delta_weight.device)
    elif tuple(delta_bias.shape) != (out_channels,):
        raise ValueError(f"conv bias change has shape {tuple(delta_bias.shape)}, expected ({out_channels},)")
    down = patch_extractor(delta_weight.shape, delta_weight.dtype, delta_weight.device)
    up = delta_weight.reshape(out_channels, -1, 1, 1).clone()
    return down, up, delta_bias.to(delta_weight.dtype).clone()
