"""Independent references for adapter-set tests: hand-merged LoRA weights (W + s * B @ A) on plain
copies of the tiny base, and OSEDiff's one-step generator written out by hand. No diffusers_irib
code is used to compute a reference here (only to add the sets being tested)."""

from __future__ import annotations

import numpy as np
import torch
from conftest import make_tiny_unet, make_tiny_vae
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from diffusers_irib.adapters import add_adapter_set

# Two sets with different rank/alpha so a wrong scale or a mixed-up set shows.
PROJ = dict(rank=4, alpha=8.0)  # scale 2 (OSEDiff's default)
REST = dict(rank=2, alpha=3.0)  # scale 1.5


def sd21_x0_coefficients() -> tuple[float, float]:
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    abar = np.cumprod(1.0 - betas)[999]
    return 1.0 / np.sqrt(abar), np.sqrt(1.0 - abar) / np.sqrt(abar)


class ManualOneStep(nn.Module):
    """OSEDiff's generator written out by hand on plain (adapter-free) UNet/VAE copies."""

    def __init__(self, unet: nn.Module, vae: nn.Module) -> None:
        super().__init__()
        self.unet, self.vae = unet, vae
        self.a, self.b = sd21_x0_coefficients()

    def forward(self, images: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        sf = self.vae.config.scaling_factor
        z = self.vae.encode(images).latent_dist.mean * sf
        t = torch.full((images.shape[0],), 999, dtype=torch.long)
        eps = self.unet(z, t, encoder_hidden_states=prompt_embeds.expand(images.shape[0], -1, -1)).sample
        return self.vae.decode((self.a * z - self.b * eps) / sf).sample.clamp(-1, 1)


def lora_factors(model: nn.Module, role: str) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """{module name: (lora_A weight, lora_B weight, lora_B bias or None)} of adapter ``role``."""
    return {
        name: (m.lora_A[role].weight, m.lora_B[role].weight, m.lora_B[role].bias)
        for name, m in model.named_modules()
        if isinstance(m, BaseTunerLayer) and role in m.lora_A
    }


def delta(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    if a.ndim == 2:  # Linear: W + s * B @ A
        return scale * b @ a
    # Conv: A is a k x k conv to r channels, B a 1x1 conv; composed kernel = sum_r B[o, r] A[r, i].
    return scale * torch.einsum("or,rikl->oikl", b[:, :, 0, 0], a)


def merged_params(factors, scale, base_sd, prefix, scales=None):
    """{prefix.name.weight (and .bias): W0 + s * delta (b0 + s * lora bias)}; ``scales`` overrides
    the scale per module (a set's own conv_in is a full-rank LoRA with scale 1)."""
    out = {}
    for name, (a, b, bias) in factors.items():
        s = (scales or {}).get(name, scale)
        out[f"{prefix}.{name}.weight"] = base_sd[f"{name}.weight"] + delta(a, b, s)
        if bias is not None and f"{name}.bias" in base_sd:
            out[f"{prefix}.{name}.bias"] = base_sd[f"{name}.bias"] + s * bias
        elif bias is not None:  # a bias-free layer: its LoRA bias must be (and stay) zero
            assert float(bias.detach().abs().max()) == 0, name
    return out


def assert_grads_close(actual: torch.Tensor, expected: torch.Tensor, rel: float, name: str) -> None:
    """Max-norm relative check: these grads reach ~1e2, so fp32 round-off is ~1e-5 of the max."""
    err = float((actual - expected).abs().max())
    scale = float(expected.abs().max())
    assert err <= rel * scale, f"{name}: max error {err:.3g} vs max |grad| {scale:.3g}"


def randomize(model: nn.Module, role: str, seed: int, std: float = 0.05) -> None:
    """Every factor of ``role`` (and conv_in's LoRA bias) random, so a wrong scale or a mixed-up set
    shows. The other LoRA biases of a set with its own conv_in are zero by design."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, (a, b, bias) in lora_factors(model, role).items():
            for t in (a, b, bias if name == "conv_in" else None):
                if t is not None:
                    t.copy_(torch.randn(t.shape, generator=g) * std)


def build_two_sets(unet, vae):
    """projector (trainable, no conv_in) + restorer (frozen, own conv_in), all non-zero."""
    add_adapter_set(unet, vae, "projector", **PROJ)
    add_adapter_set(unet, vae, "restorer", **REST, conv_in=True, trainable=False)
    randomize(unet, "projector", 10)
    randomize(vae, "projector", 11)
    randomize(unet, "restorer", 12)
    randomize(vae, "restorer", 13)
    with torch.no_grad():  # as a converted OSEDiff conv_in: A the one-hot patch extractor, B = dW
        unet.conv_in.lora_A["restorer"].weight.copy_(torch.eye(36).reshape(36, 4, 3, 3))


#: The restorer's conv_in is a full-rank LoRA with scale 1, whatever the set's rank and alpha.
REST_SCALES = {"conv_in": 1.0}


def reference_model(unet, vae, role, scale, scales=None, vae_role=True) -> ManualOneStep:
    """Plain copies of the base with ``role`` merged in by hand (detached)."""
    ref = ManualOneStep(make_tiny_unet(), make_tiny_vae())
    params = merged_params(lora_factors(unet, role), scale, ref.unet.state_dict(), "unet", scales)
    if vae_role:
        params.update(merged_params(lora_factors(vae, role), scale, ref.vae.state_dict(), "vae"))
    with torch.no_grad():
        for name, value in params.items():
            ref.get_parameter(name).copy_(value)
    return ref


def tiny_pipeline_with_random_sets():
    """The tiny pipeline with a frozen projector and a frozen restorer (own conv_in), both non-zero."""
    from conftest import make_tiny_pipeline

    pipe = make_tiny_pipeline()
    pipe.add_adapter_set("projector", trainable=False)
    pipe.add_adapter_set("restorer", conv_in=True, trainable=False)
    randomize(pipe.unet, "projector", 1)
    randomize(pipe.unet, "restorer", 2)
    return pipe
