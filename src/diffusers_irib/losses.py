"""The IRIB objective's terms (paper section 4.2, eqs. 16-19), one function each.

Images are (B, 3, H, W) in [0, 1]; latents are the SD VAE's scaled latents. The weights of the
terms (the paper's lambdas, and the 1 / (2 sigma^2) of eq. 16) are arguments of the callers: these
functions return unweighted means so each is testable alone.

Scales, as OSEDiff's ``train_osediff.py`` computes them (the paper "follows OSDiff", section 5.1):
the pixel terms (eq. 16, and eq. 18's L2 and blur) are taken on the images mapped to
``pixel_range`` = (-1, 1), the range the models see, so they are 4x the same terms on [0, 1]
(``pixel_range=(0, 1)``, the other reading); and the prior (eq. 17) is OSEDiff's
``mse(latents, stopgrad(latents - grad))`` with gradient 2 * grad / N, twice the printed
1/2-form's (kept by ``literal_eq17=True``).

* eq. 16, :func:`lq_reconstruction_loss`: blur-MSE between the degrade-back D(z_hat; phi) and x_LQ;
* eq. 17, :func:`prior_loss`: HQ prior matching by variational score distillation on g's x0 latent,
  with :func:`regularizer_loss` training the "fake" score that tracks the generator;
* eq. 18, :func:`hq_fidelity_loss`: L2 + LPIPS + blur-MSE against the HQ target.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Optional

import torch
import torch.nn.functional as F

from .degradations import DegradationParams
from .one_step import x0_coefficients

__all__ = [
    "DEFAULT_HQ_BLUR_SIGMA",
    "DEFAULT_LQ_BLUR_SIGMA",
    "DEFAULT_PIXEL_RANGE",
    "PIXEL_RANGES",
    "ScoreFn",
    "blur_mse",
    "gaussian_blur",
    "gaussian_kernel1d",
    "hq_fidelity_loss",
    "lq_reconstruction_loss",
    "prior_loss",
    "regularizer_loss",
    "sample_timesteps",
]

#: tau of eq. 16 in pixels at 512 px. The paper gives no value. The LQ content the restorer sees is
#: band-limited by the x4 down-sampling of the degradation (Nyquist at 1/8 cycle per HQ pixel); a
#: Gaussian of std 2 px halves amplitudes near 1/11 cycle per pixel, so the loss compares what D
#: keeps and discounts the fine detail and noise D cannot reproduce reliably.
DEFAULT_LQ_BLUR_SIGMA = 2.0
#: k of eq. 18 in pixels at 512 px, also not given by the paper: the same 2 px keeps the HQ blur
#: term on shared low-frequency structure and leaves fine detail to the L2/LPIPS/prior terms.
DEFAULT_HQ_BLUR_SIGMA = 2.0

#: The range the pixel terms are computed on: OSEDiff's [-1, 1] (the models' input range).
DEFAULT_PIXEL_RANGE = (-1.0, 1.0)
#: The two readings: OSEDiff's [-1, 1], and [0, 1] (the terms 4x weaker against LPIPS and the prior).
PIXEL_RANGES = ((-1.0, 1.0), (0.0, 1.0))

#: ``(noisy latents, timesteps (B,), prompt embeds) -> predicted noise``: a UNet under some adapter set.
ScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------
# Blur-MSE (eqs. 16, 18)
# --------------------------------------------------------------------------------------------


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian of std ``sigma`` (> 0) with 2 * ceil(3 * sigma) + 1 taps."""
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not 0 < sigma < math.inf:
        raise ValueError(f"sigma must be a positive, finite number of pixels, got {sigma!r}")
    radius = math.ceil(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian low-pass per channel with reflect padding; ``sigma = 0`` is the identity."""
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a non-negative number of pixels, got {sigma!r}")
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if sigma == 0:
        return images
    kernel = gaussian_kernel1d(sigma, images.dtype, images.device)
    radius = kernel.numel() // 2
    if radius >= min(images.shape[-2:]):
        raise ValueError(
            f"sigma={sigma} needs a {kernel.numel()}-tap kernel, too large for {tuple(images.shape[-2:])} images "
            "(reflect padding needs the image larger than the kernel radius)"
        )
    channels = images.shape[1]
    out = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def blur_mse(a: torch.Tensor, b: torch.Tensor, sigma: float) -> torch.Tensor:
    """mean((G_sigma * a - G_sigma * b)^2): the same Gaussian low-pass on both, then MSE.

    The blur is linear, so it is applied once to the difference.
    """
    if a.shape != b.shape:
        raise ValueError(f"blur_mse needs two images of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return gaussian_blur(a - b, sigma).square().mean()


def check_pixel_range(pixel_range: Any) -> tuple[float, float]:
    """``pixel_range`` as a tuple of floats, one of :data:`PIXEL_RANGES`; a clear error otherwise."""
    try:
        value = tuple(float(v) for v in pixel_range)
    except (TypeError, ValueError):
        value = None
    if value not in PIXEL_RANGES:
        raise ValueError(f"pixel_range must be (-1, 1) (OSEDiff's) or (0, 1), got {pixel_range!r}")
    return value


def _to_range(images: torch.Tensor, pixel_range: tuple[float, float]) -> torch.Tensor:
    low, high = pixel_range
    return images if (low, high) == (0.0, 1.0) else low + (high - low) * images


def lq_reconstruction_loss(
    z_hat: torch.Tensor,
    x_lq: torch.Tensor,
    degradation: Any,
    params: Any,
    sigma: float = DEFAULT_LQ_BLUR_SIGMA,
    pixel_range: tuple[float, float] = DEFAULT_PIXEL_RANGE,
) -> torch.Tensor:
    """Eq. 16: blur_mse(D(z_hat; phi), x_LQ, tau), on images mapped to ``pixel_range``.

    ``degradation(z_hat, params)`` replays the recorded LQ parameters phi that made ``x_lq`` from the
    HQ target y (a :class:`~diffusers_irib.degradations.RealESRGANDegradation` and its params), so
    z_hat = y gives exactly 0; gradients reach z_hat through D's straight-through estimators. Both
    images are in [0, 1] (D works there); the MSE is taken on [-1, 1] by default, as OSEDiff does.
    ``params`` must be realised on y (:meth:`RealESRGANDegradation.realise`, as ``degrade_pair``
    does): params whose Poisson noise was never applied are refused with a ``ValueError``.
    """
    pixel_range = check_pixel_range(pixel_range)
    unrealised = params.unrealised_noise() if isinstance(params, DegradationParams) else []
    if unrealised:
        raise ValueError(
            f"params hold Poisson noise not yet realised ({', '.join(unrealised)}): the degrade-back "
            "D(z_hat; phi) must add the noise that made x_lq, so apply the params to the HQ image first "
            "(degradation.realise(hq, params), as degrade_pair does)"
        )
    return blur_mse(_to_range(degradation(z_hat, params), pixel_range), _to_range(x_lq, pixel_range), sigma)


def hq_fidelity_loss(
    z_hat: torch.Tensor,
    y: torch.Tensor,
    lpips_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    l2: float = 1.0,
    lpips: float = 1.0,
    blur: float = 0.5,
    sigma: float = DEFAULT_HQ_BLUR_SIGMA,
    pixel_range: tuple[float, float] = DEFAULT_PIXEL_RANGE,
) -> dict[str, torch.Tensor]:
    """Eq. 18: l2 * ||z_hat - y||^2 + lpips * LPIPS(z_hat, y) + blur * ||G_k * z_hat - G_k * y||^2.

    Returns the unweighted terms ("l2", "lpips", "blur") and the weighted "total". ``z_hat`` and
    ``y`` are in [0, 1]; the L2 and blur terms are taken on them mapped to ``pixel_range`` (OSEDiff's
    [-1, 1] by default: constant images 0.25 and 0.75 give l2 = 1.0, and 0.25 with (0, 1)).
    ``lpips_fn`` is a frozen LPIPS-VGG (``lpips.LPIPS(net="vgg")``), always fed images in [-1, 1] as
    it expects. The default weights are the paper's main setting (1, 1, 0.5).
    """
    if z_hat.shape != y.shape:
        raise ValueError(f"z_hat and y must have one shape, got {tuple(z_hat.shape)} and {tuple(y.shape)}")
    if lpips and lpips_fn is None:
        raise ValueError(
            f"lpips={lpips} needs lpips_fn (e.g. lpips.LPIPS(net='vgg')); pass lpips=0 to train without it"
        )
    pixel_range = check_pixel_range(pixel_range)
    a, b = _to_range(z_hat, pixel_range), _to_range(y, pixel_range)
    terms = {"l2": F.mse_loss(a, b), "blur": blur_mse(a, b, sigma)}
    terms["lpips"] = lpips_fn(z_hat * 2 - 1, y * 2 - 1).mean() if lpips else z_hat.new_zeros(())
    terms["total"] = l2 * terms["l2"] + lpips * terms["lpips"] + blur * terms["blur"]
    return terms


# --------------------------------------------------------------------------------------------
# HQ prior (eq. 17) and the regularizer
# --------------------------------------------------------------------------------------------


def check_timestep_range(timestep_range: Any, num_train_timesteps: Optional[int] = None) -> tuple[int, int]:
    """Integers 0 <= low <= high (< the schedule's length when given): a negative timestep indexed the
    noise schedule from its end, and one past it failed deep inside the scheduler."""
    pair = tuple(timestep_range) if isinstance(timestep_range, (tuple, list)) else None
    top = "" if num_train_timesteps is None else f" <= {num_train_timesteps - 1}"
    if (
        pair is None
        or len(pair) != 2
        or not all(isinstance(t, int) and not isinstance(t, bool) for t in pair)
        or not 0 <= pair[0] <= pair[1]
        or (num_train_timesteps is not None and pair[1] >= num_train_timesteps)
    ):
        raise ValueError(f"timestep_range must be integers 0 <= low <= high{top}, got {timestep_range!r}")
    return pair


def _schedule_length(scheduler: Any) -> Optional[int]:
    alphas = getattr(scheduler, "alphas_cumprod", None)
    return len(alphas) if alphas is not None else None


def sample_timesteps(
    batch: int, low: int, high: int, device, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """``batch`` integer timesteps uniform in [low, high], drawn on the CPU (same on every device)."""
    check_timestep_range((low, high))
    return torch.randint(low, high + 1, (batch,), generator=generator).to(device)


def _noise_like(latents: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    return torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device)


def prior_loss(
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor,
    fake_score: ScoreFn,
    real_score: ScoreFn,
    scheduler: Any,
    guidance_scale: float = 7.5,
    timestep_range: tuple[int, int] = (20, 979),
    literal_eq17: bool = False,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Eq. 17, the HQ prior term, as variational score distillation on g's x0 latent.

    z_t = add_noise(latents, eps, t) with t uniform in ``timestep_range``; under no_grad the fake
    score (the regularizer, tracking the generator's distribution) and the real score (the frozen
    SD prior) predict the noise. Two readings:

    * default, OSEDiff's: the real score uses classifier-free guidance (``guidance_scale``, the
      negative prompt as the unconditional branch), both predictions become x0 estimates, and
      grad = (x0_fake - x0_real) / w with w = mean |latents - x0_real| per sample (DMD's
      normalisation);
    * ``literal_eq17=True``, the paper's printed eq. 17: grad = eps_fake - eps_real, the real score
      conditioned on the prompt without guidance and without normalisation.

    Returns OSEDiff's MSE(latents, stopgrad(latents - grad)), whose gradient with respect to the
    latents is 2 * grad / latents.numel(); with ``literal_eq17=True`` the printed form
    0.5 * MSE(...), gradient grad / latents.numel().
    """
    check_timestep_range(timestep_range, _schedule_length(scheduler))
    batch = latents.shape[0]
    lat = latents.float()
    with torch.no_grad():
        t = sample_timesteps(batch, *timestep_range, device=lat.device, generator=generator)
        noise = _noise_like(lat, generator)
        noisy = scheduler.add_noise(lat.detach(), noise, t)
        eps_fake = fake_score(noisy, t, prompt_embeds).float()
        if literal_eq17:
            grad = eps_fake - real_score(noisy, t, prompt_embeds).float()
        else:
            eps_neg, eps_pos = (
                real_score(
                    torch.cat([noisy, noisy]), torch.cat([t, t]), torch.cat([negative_prompt_embeds, prompt_embeds])
                )
                .float()
                .chunk(2)
            )
            eps_real = eps_neg + guidance_scale * (eps_pos - eps_neg)
            a, b = x0_coefficients(scheduler, t)
            a, b = a.to(lat.device), b.to(lat.device)
            x0_fake, x0_real = a * noisy - b * eps_fake, a * noisy - b * eps_real
            weight = (lat - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True)
            grad = (x0_fake - x0_real) / weight
        target = lat - grad
    return (0.5 if literal_eq17 else 1.0) * F.mse_loss(lat, target)


def regularizer_loss(
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    score: ScoreFn,
    scheduler: Any,
    timestep_range: tuple[int, int] = (0, 999),
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """The fake score's own loss: epsilon prediction on the generator's detached latents."""
    check_timestep_range(timestep_range, _schedule_length(scheduler))
    lat = latents.detach().float()
    t = sample_timesteps(lat.shape[0], *timestep_range, device=lat.device, generator=generator)
    noise = _noise_like(lat, generator)
    noisy = scheduler.add_noise(lat, noise, t)
    return F.mse_loss(score(noisy, t, prompt_embeds).float(), noise)
