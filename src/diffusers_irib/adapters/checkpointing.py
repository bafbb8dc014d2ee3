"""Gradient checkpointing that recomputes with the adapters that were active in forward.

IRIB's training graph runs the same UNet/VAE twice, under the projector and then under the frozen
restorer. Stock checkpointing recomputes a block in backward with whatever adapter is active *then*,
which silently gives wrong gradients (or a CheckpointError). Here each checkpointed call records the
forward-time adapter state of its tuner layers and replays it during the recompute.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import torch
from torch import nn

from .registry import structure, tuner_layers, unwrap_model

__all__ = ["enable_adapter_aware_checkpointing", "make_checkpointing_adapter_aware", "set_layer_state"]


def set_layer_state(layer: Any, names: Sequence[str], disabled: bool) -> None:
    """Make one peft layer run ``names`` (or nothing when ``disabled``); requires_grad is not touched.

    peft's ``set_adapter`` + ``enable_adapters`` rewrite requires_grad of every adapter parameter
    twice per layer (~40 ms per switch on the SD2.1 UNet); callers re-assert trainability by role
    anyway, so only the two state fields peft's forward reads are set. Layers of a peft version
    without them go through the public API.
    """
    if hasattr(layer, "_active_adapter") and hasattr(layer, "_disable_adapters"):
        layer._active_adapter = list(names)
        layer._disable_adapters = bool(disabled)
    else:  # pragma: no cover - other peft versions
        flags = [(p, p.requires_grad) for p in layer.parameters()]
        layer.set_adapter(list(names))
        layer.enable_adapters(not disabled)
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def _replay_layer_state(state: Sequence[tuple[Any, list[str], bool]]) -> Iterator[None]:
    current = [(layer, list(layer.active_adapters), bool(layer.disable_adapters)) for layer, _, _ in state]
    try:
        for layer, names, disabled in state:
            set_layer_state(layer, names, disabled)
        yield
    finally:
        for layer, names, disabled in current:
            set_layer_state(layer, names, disabled)


def _adapter_aware_checkpoint(function: Any, *args: Any, **kwargs: Any) -> Any:
    """``torch.utils.checkpoint`` that recomputes with the adapters that were active in forward."""
    target = function if isinstance(function, nn.Module) else getattr(function, "__self__", None)
    call = function.__call__ if isinstance(function, nn.Module) else function
    layers = tuner_layers(target) if isinstance(target, nn.Module) else []
    if not layers:
        return torch.utils.checkpoint.checkpoint(call, *args, use_reentrant=False, **kwargs)
    state = [(layer, list(layer.active_adapters), bool(layer.disable_adapters)) for layer in layers]

    def context_fn():
        return contextlib.nullcontext(), _replay_layer_state(state)

    return torch.utils.checkpoint.checkpoint(call, *args, use_reentrant=False, context_fn=context_fn, **kwargs)


def make_checkpointing_adapter_aware(*models: Optional[nn.Module]) -> None:
    """Swap in the adapter-aware function wherever stock gradient checkpointing is on."""
    for model in models:
        if model is None:
            continue
        for module in structure(model).checkpointable:
            if getattr(module, "gradient_checkpointing", False) is True and (
                getattr(module, "_gradient_checkpointing_func", None) is not _adapter_aware_checkpoint
            ):
                module._gradient_checkpointing_func = _adapter_aware_checkpoint


def enable_adapter_aware_checkpointing(*models: Optional[nn.Module]) -> None:
    """Turn on gradient checkpointing whose recompute replays the forward-time adapter state.

    Needed when one autograd graph runs the same model under several adapter sets (projector
    then restorer). Switching with :func:`use_adapter_set` also upgrades models where stock
    checkpointing was turned on.
    """
    for model in models:
        model = unwrap_model(model)
        if model is not None:
            model.enable_gradient_checkpointing(gradient_checkpointing_func=_adapter_aware_checkpoint)
