"""A tiny base that has been "pre-trained" for a few seconds, for tests that need learning to show.

A randomly initialised base cannot stand in for Stable Diffusion in a learning test. The one-step
model's x0 = (z - sqrt(1 - abar) eps) / sqrt(abar) at t = 999 multiplies every error of the UNet's
eps by 1 / sqrt(abar_999) ~ 14.6, and a random VAE decoder maps every latent to texture. There is
then nothing for a LoRA to improve on (measured: 200 projector steps on a random base make the
held-out errors worse, not better). SD's pretraining gives the real base two properties, which this
module fits in ~40 s on CPU:

- the VAE reconstructs photos (decode(encode(x)) ~ x);
- at t = 999 the UNet's one-step x0 is close to its input latent. The one-step generator then
  starts as a near-identity, as a pretrained one-step restorer starts near the data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffusers_irib.one_step import encode_text, x0_coefficients


def pretrain_tiny_base(pipe, crops: torch.Tensor, vae_steps: int = 150, unet_steps: int = 150, seed: int = 7) -> None:
    """Fit ``pipe``'s VAE as an autoencoder on ``crops`` (in [0, 1]), then its UNet to a one-step
    identity at t = 999 with the empty prompt; both are frozen afterwards. Call before adding sets."""
    generator = torch.Generator().manual_seed(seed)
    vae, unet = pipe.vae.train(), pipe.unet.train()

    def batch() -> torch.Tensor:
        return crops[torch.randint(0, len(crops), (8,), generator=generator)] * 2 - 1

    optimizer = torch.optim.Adam(vae.parameters(), lr=2e-3)
    for _ in range(vae_steps):
        x = batch()
        mean = vae.encode(x).latent_dist.mean
        loss = F.mse_loss(vae.decode(mean).sample, x) + 1e-4 * mean.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    a, b = x0_coefficients(pipe.scheduler)
    with torch.no_grad():
        empty = encode_text(pipe.tokenizer, pipe.text_encoder, [""] * 8, torch.device("cpu"))
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-3)
    for _ in range(unet_steps):
        with torch.no_grad():
            z = vae.encode(batch()).latent_dist.mean * vae.config.scaling_factor
        eps = unet(z, 999, encoder_hidden_states=empty).sample
        loss = F.mse_loss(a * z - b * eps, z)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vae.eval().requires_grad_(False)
    unet.eval().requires_grad_(False)
