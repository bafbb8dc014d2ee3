"""The one-step model against independent arithmetic (numpy beta schedule, hand-written chain)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from diffusers_irib.one_step import (
    decode_latents,
    encode_image,
    one_step_restore,
    predict_x0,
    x0_coefficients,
)


def numpy_sd21_alphas_cumprod() -> np.ndarray:
    # SD's "scaled_linear" schedule: betas linear in sqrt space, then squared; abar = prod(1 - beta).
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def numpy_x0_coefficients(t: int = 999) -> tuple[float, float]:
    abar = numpy_sd21_alphas_cumprod()[t]
    return 1.0 / np.sqrt(abar), np.sqrt(1.0 - abar) / np.sqrt(abar)


def test_x0_coefficients_match_closed_form(sd21_scheduler):
    a_ref, b_ref = numpy_x0_coefficients(999)
    assert a_ref == pytest.approx(14.649, abs=1e-3) and b_ref == pytest.approx(14.615, abs=1e-3)

    a, b = x0_coefficients(sd21_scheduler)  # scheduler.alphas_cumprod is float32
    assert isinstance(a, float) and isinstance(b, float)
    assert a == pytest.approx(a_ref, rel=1e-5) and b == pytest.approx(b_ref, rel=1e-5)

    exact = torch.from_numpy(numpy_sd21_alphas_cumprod())  # float64 input: exact to rounding
    a64, b64 = x0_coefficients(exact, 999)
    assert a64 == pytest.approx(a_ref, rel=1e-12) and b64 == pytest.approx(b_ref, rel=1e-12)


def test_x0_coefficients_tensor_timesteps_and_range(sd21_scheduler):
    a, b = x0_coefficients(sd21_scheduler, torch.tensor([999, 500, 20]))
    assert a.shape == (3, 1, 1, 1) and b.shape == (3, 1, 1, 1)
    for i, t in enumerate((999, 500, 20)):
        a_ref, b_ref = numpy_x0_coefficients(t)
        assert float(a[i]) == pytest.approx(a_ref, rel=1e-5) and float(b[i]) == pytest.approx(b_ref, rel=1e-5)
    with pytest.raises(ValueError, match="timestep"):
        x0_coefficients(sd21_scheduler, 1000)


def test_encode_image_mean_and_seeded_sample(tiny_vae, tiny_images):
    with torch.no_grad():
        dist = tiny_vae.encode(tiny_images).latent_dist
        sf = tiny_vae.config.scaling_factor
        mean = encode_image(tiny_vae, tiny_images)
        torch.testing.assert_close(mean, dist.mean * sf, rtol=0, atol=0)

        s1 = encode_image(tiny_vae, tiny_images, generator=torch.Generator().manual_seed(7))
        s2 = encode_image(tiny_vae, tiny_images, generator=torch.Generator().manual_seed(7))
        noise = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(s1, s2, rtol=0, atol=0)
    torch.testing.assert_close(s1, (dist.mean + dist.std * noise) * sf, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(s1, mean)


def manual_chain(unet, vae, images, prompt_embeds):
    """The OSEDiff generator written out by hand with the numpy coefficients."""
    a, b = numpy_x0_coefficients(999)
    sf = vae.config.scaling_factor
    z = vae.encode(images).latent_dist.mean * sf
    t = torch.full((images.shape[0],), 999, dtype=torch.long)
    eps = unet(z, t, encoder_hidden_states=prompt_embeds.expand(images.shape[0], -1, -1)).sample
    x0 = a * z - b * eps
    return vae.decode(x0 / sf).sample.clamp(-1, 1)


def test_one_step_restore_matches_manual_chain(tiny_unet, tiny_vae, sd21_scheduler, tiny_images, prompt_embeds):
    with torch.no_grad():
        out = one_step_restore(tiny_unet, tiny_vae, tiny_images, prompt_embeds, sd21_scheduler)
        ref = manual_chain(tiny_unet, tiny_vae, tiny_images, prompt_embeds)
        assert out.shape == tiny_images.shape
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)
        assert float(out.abs().max()) <= 1.0

        # LFO path: precomputed latents skip the encoder and give the same result.
        latents = encode_image(tiny_vae, tiny_images)
        alphas = sd21_scheduler.alphas_cumprod
        again = one_step_restore(tiny_unet, tiny_vae, None, prompt_embeds, alphas, latents=latents)
        torch.testing.assert_close(again, out, rtol=0, atol=0)
        x0 = predict_x0(tiny_unet, latents, prompt_embeds, sd21_scheduler)
        assert x0.dtype == torch.float32
        torch.testing.assert_close(decode_latents(tiny_vae, x0), out, rtol=0, atol=0)
    with pytest.raises(ValueError, match="images"):
        one_step_restore(tiny_unet, tiny_vae, None, prompt_embeds, sd21_scheduler)
    with pytest.raises(ValueError, match="prompt_embeds"):
        one_step_restore(tiny_unet, tiny_vae, tiny_images, prompt_embeds.expand(3, -1, -1), sd21_scheduler)


def test_one_step_restore_with_and_without_grad(tiny_unet, tiny_vae, sd21_scheduler, tiny_images, prompt_embeds):
    tiny_unet.requires_grad_(False)
    tiny_vae.requires_grad_(False)
    x = tiny_images.clone().requires_grad_(True)
    out = one_step_restore(tiny_unet, tiny_vae, x, prompt_embeds, sd21_scheduler)
    out.square().mean().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    with torch.no_grad():
        assert one_step_restore(tiny_unet, tiny_vae, x, prompt_embeds, sd21_scheduler).grad_fn is None


def test_inputs_are_cast_to_module_dtypes(tiny_unet, tiny_vae, sd21_scheduler, tiny_images, prompt_embeds):
    unet16, vae16 = copy.deepcopy(tiny_unet).to(torch.bfloat16), copy.deepcopy(tiny_vae).to(torch.bfloat16)
    with torch.no_grad():
        ref = one_step_restore(tiny_unet, tiny_vae, tiny_images.double(), prompt_embeds.double(), sd21_scheduler)
        out = one_step_restore(unet16, vae16, tiny_images, prompt_embeds, sd21_scheduler)
    assert ref.dtype == torch.float32 and out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()
    assert float((out.float() - ref).abs().mean()) < 0.1  # same model, just rounded
