"""The OSEDiff-style one-step model shared by the projector f and the restorer g.

encode (VAE, active adapter) -> one UNet pass at t=999 -> closed-form x0 -> decode -> clamp,
conditioned on the CLIP text encoding of a prompt (:func:`encode_text`).

The functions are plain and stateless so the pipeline (no grad) and the training script (grad
through the VAE encoder, the UNet and the VAE decoder) run the exact same arithmetic. Which
adapter set is used is decided by the caller, e.g. with
``diffusers_irib.adapters.use_adapter_set``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch

__all__ = [
    "DEFAULT_TIMESTEP",
    "decode_latents",
    "encode_image",
    "encode_text",
    "one_step_restore",
    "predict_noise",
    "predict_x0",
    "x0_coefficients",
    "x0_from_noise",
]

#: OSEDiff (and IRIB) run the UNet once at the last training timestep.
DEFAULT_TIMESTEP = 999

AlphasLike = Union[torch.Tensor, Any]  # a tensor of alphas_cumprod, or a scheduler that has one


def _alphas_cumprod(scheduler_or_alphas: AlphasLike) -> torch.Tensor:
    alphas = getattr(scheduler_or_alphas, "alphas_cumprod", scheduler_or_alphas)
    if not isinstance(alphas, torch.Tensor):
        alphas = torch.as_tensor(alphas)
    if alphas.ndim != 1 or alphas.numel() == 0:
        raise ValueError(
            "alphas_cumprod must be a non-empty 1-D tensor (or a scheduler with `alphas_cumprod`), "
            f"got shape {tuple(alphas.shape)}"
        )
    return alphas


def _module_dtype_device(module: torch.nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype of the module's weights and the device it computes on.

    With accelerate's offload hooks (``enable_model_cpu_offload``, sequential offload) the weights
    sit on the CPU or the meta device between calls; the hook's execution device is where the
    inputs must go, as diffusers' ``_execution_device`` does for pipelines.
    """
    param = next(module.parameters())
    dtype, device = getattr(module, "dtype", param.dtype), param.device
    hooked = getattr(module, "_hf_hook", None) is not None or device.type == "meta"
    if hooked:
        for sub in module.modules():
            hook_device = getattr(getattr(sub, "_hf_hook", None), "execution_device", None)
            if hook_device is not None:
                return dtype, torch.device(hook_device)
    return dtype, device


def x0_coefficients(
    scheduler_or_alphas_cumprod: AlphasLike, timestep: Union[int, torch.Tensor] = DEFAULT_TIMESTEP
) -> Union[tuple[float, float], tuple[torch.Tensor, torch.Tensor]]:
    """Return ``(1 / sqrt(abar_t), sqrt(1 - abar_t) / sqrt(abar_t))`` so that x0 = a * z - b * eps.

    Computed in closed form from ``alphas_cumprod`` (float64) instead of ``scheduler.step``: in
    diffusers 0.42 ``DDPMScheduler.set_timesteps(1)`` no longer lands on t=999 and SD scheduler
    configs turn on ``clip_sample``. For SD2.1-base at t=999 this is about (14.649, 14.615).

    An int timestep gives Python floats; a tensor of timesteps (shape (B,)) gives float32 tensors
    of shape (B, 1, 1, 1) on the timesteps' device, ready to broadcast against latents.
    """
    alphas = _alphas_cumprod(scheduler_or_alphas_cumprod)
    n = alphas.shape[0]
    if isinstance(timestep, torch.Tensor):
        t = timestep.detach().long().reshape(-1)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
            raise ValueError(f"timestep must be in [0, {n - 1}], got {timestep}")
        abar = alphas.to(device=t.device, dtype=torch.float64)[t]
        a = abar.rsqrt()
        b = (1.0 - abar).sqrt() * a
        return a.float().view(-1, 1, 1, 1), b.float().view(-1, 1, 1, 1)
    t = int(timestep)
    if not 0 <= t < n:
        raise ValueError(f"timestep must be in [0, {n - 1}], got {timestep}")
    abar = float(alphas[t].double())
    return 1.0 / math.sqrt(abar), math.sqrt(1.0 - abar) / math.sqrt(abar)


def encode_image(
    vae: torch.nn.Module, images: torch.Tensor, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Encode images in [-1, 1] (B, 3, H, W) to scaled latents.

    Without a generator the posterior mean is used (deterministic, unlike OSEDiff's unseeded
    ``sample()``); with one, a sample is drawn from that generator only, so seeds reproduce.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    dtype, device = _module_dtype_device(vae)
    posterior = vae.encode(images.to(device=device, dtype=dtype)).latent_dist
    latents = posterior.mode() if generator is None else posterior.sample(generator=generator)
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        latents = latents - shift
    return latents * vae.config.scaling_factor


def encode_text(tokenizer: Any, text_encoder: Any, prompts: Sequence[str], device: Any) -> torch.Tensor:
    """CLIP last hidden states (B, 77, D) of ``prompts``, as SD and OSEDiff condition the UNet: padded
    and truncated to the tokenizer's 77 tokens, no pooling, no classifier-free guidance batch."""
    tokens = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return text_encoder(tokens.input_ids.to(device), return_dict=False)[0]


def predict_noise(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    timestep: Union[int, torch.Tensor] = DEFAULT_TIMESTEP,
) -> torch.Tensor:
    """One UNet pass (no classifier-free guidance): eps = unet(z, t, c).

    ``prompt_embeds`` are the text encoder's last hidden states (B or 1, 77, D); a batch of one
    is broadcast to the latents' batch. Inputs are cast to the UNet's dtype and device.
    """
    dtype, device = _module_dtype_device(unet)
    batch = latents.shape[0]
    if prompt_embeds.ndim != 3:
        raise ValueError(f"prompt_embeds must be (B, tokens, dim), got shape {tuple(prompt_embeds.shape)}")
    if prompt_embeds.shape[0] == 1 and batch > 1:
        prompt_embeds = prompt_embeds.expand(batch, -1, -1)
    elif prompt_embeds.shape[0] != batch:
        raise ValueError(
            f"prompt_embeds batch ({prompt_embeds.shape[0]}) must be 1 or match the latents batch ({batch})"
        )
    if not isinstance(timestep, torch.Tensor):
        timestep = torch.tensor([int(timestep)], dtype=torch.long)
    timestep = timestep.to(device)
    if timestep.ndim == 0 or timestep.numel() == 1:
        timestep = timestep.reshape(1).expand(batch)
    return unet(
        latents.to(device=device, dtype=dtype),
        timestep,
        encoder_hidden_states=prompt_embeds.to(device=device, dtype=dtype),
        return_dict=False,
    )[0]


def x0_from_noise(
    latents: torch.Tensor,
    noise_pred: torch.Tensor,
    alphas_cumprod: AlphasLike,
    timestep: Union[int, torch.Tensor] = DEFAULT_TIMESTEP,
) -> torch.Tensor:
    """x0 = (z - sqrt(1 - abar) eps) / sqrt(abar), evaluated in float32.

    The two terms are ~14.6x the inputs and nearly cancel, so the subtraction is done in
    float32 even for half-precision models. Returns float32.
    """
    a, b = x0_coefficients(alphas_cumprod, timestep)
    if isinstance(a, torch.Tensor):
        a, b = a.to(noise_pred.device), b.to(noise_pred.device)
    return a * latents.to(device=noise_pred.device, dtype=torch.float32) - b * noise_pred.float()


def predict_x0(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    alphas_cumprod: AlphasLike,
    timestep: Union[int, torch.Tensor] = DEFAULT_TIMESTEP,
) -> torch.Tensor:
    """One UNet pass at ``timestep`` and the closed-form x0 latent (float32)."""
    noise_pred = predict_noise(unet, latents, prompt_embeds, timestep)
    return x0_from_noise(latents, noise_pred, alphas_cumprod, timestep)


def decode_latents(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Decode scaled latents to images clamped to [-1, 1] (as OSEDiff does, also in training)."""
    dtype, device = _module_dtype_device(vae)
    latents = latents.to(device=device, dtype=dtype) / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        latents = latents + shift
    return vae.decode(latents, return_dict=False)[0].clamp(-1.0, 1.0)


def one_step_restore(
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    images: Optional[torch.Tensor],
    prompt_embeds: torch.Tensor,
    alphas_cumprod: AlphasLike,
    latents: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    timestep: Union[int, torch.Tensor] = DEFAULT_TIMESTEP,
) -> torch.Tensor:
    """The full one-step chain: images in [-1, 1] -> restored images in [-1, 1].

    Pass precomputed ``latents`` (from :func:`encode_image`) to skip the encoder: Look Forward
    Once re-runs the projector on the same ELQ encoding with a new prompt. Gradients flow when
    the caller enables them; nothing here detaches.
    """
    if latents is None:
        if images is None:
            raise ValueError("one_step_restore needs `images` or precomputed `latents`")
        latents = encode_image(vae, images, generator=generator)
    x0 = predict_x0(unet, latents, prompt_embeds, alphas_cumprod, timestep)
    return decode_latents(vae, x0)
