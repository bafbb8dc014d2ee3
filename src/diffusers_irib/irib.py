"""The IRIB chain in one page: ELQ --f (projector)--> LQ proxy --g (restorer)--> HQ.

Both f and g are one-step models on the same SD2.1 UNet/VAE, told apart by their adapter sets:

    z_ELQ = E_f(x_ELQ)                                (VAE encoder under the projector, once)
    x_LQ  = D(x0(z_ELQ, UNet_f(z_ELQ, 999, c_f)))     (paper: x_LQ_hat = f(x_ELQ; c))
    z_LQ  = E_g(x_LQ)                                 (VAE encoder under the restorer)
    z_HQ  = x0(z_LQ, UNet_g(z_LQ, 999, c_g))          (g's x0 latent: the HQ prior term's input)
    x_HQ  = D(z_HQ)                                   (paper: z_hat)

The functions here are the only place this arithmetic lives: the pipeline calls them under
``torch.no_grad`` (adding inputs, Look Forward Once rounds, tiling and colour fix around them),
and training calls them with gradients, which reach the projector's UNet and VAE-encoder LoRA
through g's frozen modules. Adapter switching is done with :func:`use_adapter_set`, so adapter-aware
gradient checkpointing recomputes every block under the set it ran with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .adapters import use_adapter_set
from .one_step import AlphasLike, decode_latents, encode_image, predict_noise, x0_from_noise

__all__ = ["IRIBOutput", "OneStepOutput", "encode_elq", "irib_forward", "one_step", "project", "restore"]

#: ``(latents, prompt_embeds) -> noise prediction``; the pipeline passes a tiled one for big images.
NoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class OneStepOutput:
    """One one-step pass: the decoded images in [-1, 1] and the x0 latent they decode from (float32)."""

    images: torch.Tensor
    latents: torch.Tensor


@dataclass
class IRIBOutput:
    """The chain's results: the LQ proxy x_LQ_hat and the HQ estimate z_hat (images in [-1, 1]), and
    g's x0 latent (float32), on which the HQ prior term is computed."""

    lq: torch.Tensor
    hq: torch.Tensor
    hq_latents: torch.Tensor


def one_step(
    unet: nn.Module,
    vae: nn.Module,
    alphas_cumprod: AlphasLike,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    noise_fn: Optional[NoiseFn] = None,
) -> OneStepOutput:
    """UNet at t=999 on ``latents`` -> closed-form x0 -> decode (under whatever set is active)."""
    eps = predict_noise(unet, latents, prompt_embeds) if noise_fn is None else noise_fn(latents, prompt_embeds)
    x0 = x0_from_noise(latents, eps, alphas_cumprod)
    return OneStepOutput(images=decode_latents(vae, x0), latents=x0)


def encode_elq(
    unet: nn.Module,
    vae: nn.Module,
    elq: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    role: str = "projector",
) -> torch.Tensor:
    """The projector's VAE encoding of the ELQ images ([-1, 1]); Look Forward Once reuses it every round."""
    with use_adapter_set(unet, vae, role):
        return encode_image(vae, elq, generator=generator)


def project(
    unet: nn.Module,
    vae: nn.Module,
    alphas_cumprod: AlphasLike,
    elq_latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    role: str = "projector",
    noise_fn: Optional[NoiseFn] = None,
) -> torch.Tensor:
    """f: the LQ proxy x_LQ_hat in [-1, 1] from the projector's ELQ encoding."""
    with use_adapter_set(unet, vae, role):
        return one_step(unet, vae, alphas_cumprod, elq_latents, prompt_embeds, noise_fn).images


def restore(
    unet: nn.Module,
    vae: nn.Module,
    alphas_cumprod: AlphasLike,
    lq: torch.Tensor,
    prompt_embeds: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    role: str = "restorer",
    noise_fn: Optional[NoiseFn] = None,
) -> OneStepOutput:
    """g: the HQ estimate (images in [-1, 1]) and its x0 latent from LQ images in [-1, 1]."""
    with use_adapter_set(unet, vae, role):
        latents = encode_image(vae, lq, generator=generator)
        return one_step(unet, vae, alphas_cumprod, latents, prompt_embeds, noise_fn)


def irib_forward(
    unet: nn.Module,
    vae: nn.Module,
    alphas_cumprod: AlphasLike,
    elq: torch.Tensor,
    projector_prompt_embeds: torch.Tensor,
    restorer_prompt_embeds: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    projector: str = "projector",
    restorer: str = "restorer",
) -> IRIBOutput:
    """x_ELQ ([-1, 1]) -> f -> x_LQ_hat -> g -> z_hat, differentiable end to end.

    ``restorer_prompt_embeds`` defaults to the projector's (training uses one prompt for both).
    With ``generator`` both VAE posteriors are sampled from it; without, their means are used.
    """
    if restorer_prompt_embeds is None:
        restorer_prompt_embeds = projector_prompt_embeds
    elq_latents = encode_elq(unet, vae, elq, generator, projector)
    lq = project(unet, vae, alphas_cumprod, elq_latents, projector_prompt_embeds, projector)
    out = restore(unet, vae, alphas_cumprod, lq, restorer_prompt_embeds, generator, restorer)
    return IRIBOutput(lq=lq, hq=out.images, hq_latents=out.latents)
