"""The IRIB training objective as one object: batches, the projector's losses, the regularizer's loss.

One UNet serves four roles, told apart by adapter sets: the trainable ``projector`` f, the frozen
``restorer`` g, the ``regularizer`` (the VSD "fake" score, UNet LoRA only) and, with every adapter
disabled, the frozen SD prior (the "real" score). OSEDiff holds three UNet copies for less.

A training step (paper eq. 19, section 4.2):

    y --degrade_pair--> x_ELQ, x_LQ, phi, psi;   prompts c from an extractor (dropped with p = 0.3)
    x_LQ_hat = f(x_ELQ; c);  z_hat = g(x_LQ_hat; c)                      (irib_forward)
    total = lq * L_LQ-recon(z_hat; x_LQ, phi) + prior * L_HQ-prior(g's x0 latent) + L_HQ-fid(z_hat, y)

then the regularizer's epsilon loss on the same (detached) latents. ``mode="direct"`` trains one
set ELQ -> HQ with the HQ terms (the paper's "OSEDiff fine-tuned" row); ``mode="restorer"`` trains an
OSEDiff-style LQ -> HQ set, for users without OSEDiff's weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from . import adapters
from .config_utils import JSONConfigMixin, check_probability, is_int, is_number
from .degradations import DegradationConfig, DegradationParams, RealESRGANDegradation, degrade_pair
from .image_processing import postprocess
from .irib import irib_forward, restore
from .losses import (
    DEFAULT_HQ_BLUR_SIGMA,
    DEFAULT_LQ_BLUR_SIGMA,
    DEFAULT_PIXEL_RANGE,
    check_pixel_range,
    hq_fidelity_loss,
    lq_reconstruction_loss,
    prior_loss,
    regularizer_loss,
)
from .one_step import encode_text, predict_noise
from .prompts import check_prompts

__all__ = [
    "IRIBBatch",
    "IRIBLossConfig",
    "IRIBObjective",
    "IRIBStepLosses",
    "IRIBTrainingStep",
    "MODE_DEFAULT_WEIGHTS",
    "OSEDIFF_NEGATIVE_PROMPT",
    "TRAINED_ROLE",
]

#: OSEDiff's training negative prompt: the "unconditional" branch of the prior's guidance.
OSEDIFF_NEGATIVE_PROMPT = (
    "painting, oil painting, illustration, drawing, art, sketch, cartoon, CG Style, 3D render, unreal engine, "
    "blurring, dirty, messy, worst quality, low quality, frames, watermark, signature, jpeg artifacts, "
    "deformed, lowres, over-smooth"
)
MODES = ("irib", "direct", "restorer")
PROMPT_SOURCES = ("hq", "lq", "elq", "none")
#: The adapter set each mode trains.
TRAINED_ROLE = {"irib": "projector", "direct": "projector", "restorer": "restorer"}


#: Weights that depend on the mode when not given: (lpips, blur). IRIB uses the paper's (1, 0.5)
#: (appendix, the lambda_blur ablation keeps l2 = lpips = 1); ``direct`` and ``restorer`` train as
#: OSEDiff's train_osediff.py does, L2 + 2 x LPIPS + prior and no blur term.
MODE_DEFAULT_WEIGHTS = {"irib": (1.0, 0.5), "direct": (2.0, 0.0), "restorer": (2.0, 0.0)}
PROMPT_DROPOUT_SCOPES = ("all", "projector")
#: The config's fields that must be non-negative numbers.
_NON_NEGATIVE_FIELDS = (
    "lq_weight",
    "prior_weight",
    "l2_weight",
    "lpips_weight",
    "blur_weight",
    "lq_blur_sigma",
    "hq_blur_sigma",
    "guidance_scale",
)


@dataclass
class IRIBLossConfig(JSONConfigMixin):
    """Weights and settings of the objective; the defaults are the paper's, OSEDiff's where it is silent.

    * ``pixel_range``: the range the pixel terms (eq. 16, eq. 18's L2 and blur) are computed on.
      OSEDiff's (-1, 1) by default (the models' range; the images stay in [0, 1] everywhere else);
      (0, 1) makes those terms 4x weaker against LPIPS and the prior.
    * ``literal_eq17``: the printed eq. 17 (epsilon space, no guidance, the 1/2 in front) instead of
      OSEDiff's VSD (x0 space, guidance, DMD normalisation, gradient 2 * grad / N).
    * ``lpips_weight`` / ``blur_weight``: None picks the mode's default (:data:`MODE_DEFAULT_WEIGHTS`):
      1 / 0.5 for ``irib``, OSEDiff's 2 / 0 for ``direct`` and ``restorer``.
    * ``prompt_dropout`` replaces a sample's prompt by "" with this probability. With
      ``prompt_dropout_scope="all"`` the dropped prompt reaches every UNet pass of the step: the
      projector (the trained set), the restorer, both prior scores (the regularizer's and the frozen
      prior's conditional branch) and the regularizer's own training. With ``"projector"`` only the
      trained set sees it; the restorer, the prior and the regularizer keep the tags, as OSEDiff's
      prior always does.
    """

    mode: str = "irib"
    lq_weight: float = 1.0
    prior_weight: float = 1.0
    l2_weight: float = 1.0
    lpips_weight: Optional[float] = None
    blur_weight: Optional[float] = None
    lq_blur_sigma: float = DEFAULT_LQ_BLUR_SIGMA
    hq_blur_sigma: float = DEFAULT_HQ_BLUR_SIGMA
    pixel_range: tuple[float, float] = DEFAULT_PIXEL_RANGE
    guidance_scale: float = 7.5
    literal_eq17: bool = False
    prior_timestep_range: tuple[int, int] = (20, 979)
    prompt_source: str = "hq"
    prompt_dropout: float = 0.3
    prompt_dropout_scope: str = "all"

    config_kind = "IRIB loss config"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.prompt_source not in PROMPT_SOURCES:
            raise ValueError(f"prompt_source must be one of {PROMPT_SOURCES}, got {self.prompt_source!r}")
        if self.prompt_dropout_scope not in PROMPT_DROPOUT_SCOPES:
            raise ValueError(
                f"prompt_dropout_scope must be one of {PROMPT_DROPOUT_SCOPES}, got {self.prompt_dropout_scope!r}"
            )
        lpips, blur = MODE_DEFAULT_WEIGHTS[self.mode]
        self.lpips_weight = lpips if self.lpips_weight is None else self.lpips_weight
        self.blur_weight = blur if self.blur_weight is None else self.blur_weight
        for name in _NON_NEGATIVE_FIELDS:
            value = getattr(self, name)
            if not is_number(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        self.pixel_range = check_pixel_range(self.pixel_range)
        weights = (["lq_weight"] if self.mode == "irib" else []) + [
            "prior_weight",
            "l2_weight",
            "lpips_weight",
            "blur_weight",
        ]
        if not any(getattr(self, name) for name in weights):
            raise ValueError(
                f"every loss weight of mode {self.mode!r} is 0 ({', '.join(f'{n}=0' for n in weights)}): "
                "the loss would be 0 and nothing would train; give at least one a positive weight"
            )
        check_probability("prompt_dropout", self.prompt_dropout)
        low_high = tuple(self.prior_timestep_range)
        if len(low_high) != 2 or not all(is_int(t) for t in low_high) or not 0 <= low_high[0] <= low_high[1] <= 999:
            raise ValueError(f"prior_timestep_range must be integers 0 <= low <= high <= 999, got {low_high!r}")
        self.prior_timestep_range = low_high
        if not isinstance(self.literal_eq17, bool):
            raise ValueError(f"literal_eq17 must be a bool, got {self.literal_eq17!r}")


@dataclass
class IRIBBatch:
    """One training batch: images in [0, 1] (B, 3, H, W), the recorded degradations, the prompts.

    ``prompts`` are the trained set's (after dropout); ``tags`` the extracted prompts before dropout,
    which the restorer and the prior see under ``prompt_dropout_scope="projector"`` (None: ``prompts``).
    """

    hq: torch.Tensor
    lq: torch.Tensor
    elq: torch.Tensor
    lq_params: DegradationParams
    elq_params: DegradationParams
    prompts: list[str]
    tags: Optional[list[str]] = None


class IRIBStepLosses(dict):
    """The projector step's terms, a dict of scalar tensors ("total", "lq_recon", "prior",
    "hq_fidelity", "l2", "lpips", "blur"), and what the regularizer's step trains on: g's x0
    ``latents`` (detached) and the ``prompt_embeds`` the restorer and the prior saw. Pass those two to
    :meth:`IRIBObjective.regularizer_step_loss`."""

    def __init__(self, terms: dict[str, torch.Tensor], latents: torch.Tensor, prompt_embeds: torch.Tensor):
        super().__init__(terms)
        self.latents = latents
        self.prompt_embeds = prompt_embeds


class IRIBObjective:
    """The IRIB losses on one UNet/VAE holding the sets; the training script only orchestrates.

    Args:
        unet, vae, text_encoder, tokenizer, scheduler: the pipeline's modules (``from_pipeline``).
        config: an :class:`IRIBLossConfig`.
        lq_degradation / elq_degradation: make the pairs; the LQ one is also the degrade-back D.
        lpips_fn: a frozen LPIPS-VGG, needed when ``config.lpips_weight > 0``.
        prompt_extractor: list of PIL images -> list of prompts (e.g. a RAM tagger); None: "".
        negative_prompt: the prior's unconditional branch (OSEDiff's training default).

    The trained set (``TRAINED_ROLE[mode]``) must exist; the restorer too in ``irib`` mode. A
    trainable UNet-only ``regularizer`` set is added when the prior term is on and it is missing.
    """

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        text_encoder: nn.Module,
        tokenizer: Any,
        scheduler: Any,
        config: Optional[IRIBLossConfig] = None,
        lq_degradation: Optional[RealESRGANDegradation] = None,
        elq_degradation: Optional[RealESRGANDegradation] = None,
        lpips_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
        prompt_extractor: Optional[Callable] = None,
        negative_prompt: str = OSEDIFF_NEGATIVE_PROMPT,
        regularizer: str = "regularizer",
    ):
        self.unet, self.vae = adapters.unwrap_model(unet, "unet"), adapters.unwrap_model(vae, "vae")
        self.text_encoder, self.tokenizer, self.scheduler = text_encoder, tokenizer, scheduler
        self.config = config or IRIBLossConfig()
        self.lq_degradation = lq_degradation or RealESRGANDegradation(DegradationConfig.realesrgan())
        self.elq_degradation = elq_degradation or RealESRGANDegradation(DegradationConfig.extreme())
        if self.config.lpips_weight and lpips_fn is None:
            raise ValueError("config.lpips_weight > 0 needs lpips_fn (e.g. lpips.LPIPS(net='vgg')); or set it to 0")
        self.lpips_fn = lpips_fn
        self.prompt_extractor = prompt_extractor
        self.negative_prompt = negative_prompt
        self.trained_role = TRAINED_ROLE[self.config.mode]
        self.regularizer = regularizer
        needed = [self.trained_role] + (["restorer"] if self.config.mode == "irib" else [])
        missing = [role for role in needed if role not in adapters.list_adapter_sets(self.unet)]
        if missing:
            raise ValueError(
                f"mode {self.config.mode!r} needs the adapter set(s) {missing}; add them with "
                "add_adapter_set / load_adapter_set first"
            )
        if self.config.prior_weight and regularizer not in adapters.list_adapter_sets(self.unet):
            with adapters.use_adapter_set(self.unet, self.vae, None):
                adapters.add_adapter_set(self.unet, self.vae, regularizer, vae_target_modules=[], trainable=True)
        self._negative: Optional[torch.Tensor] = None

    @classmethod
    def from_pipeline(cls, pipe: Any, **kwargs: Any) -> IRIBObjective:
        return cls(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler, **kwargs)

    # ------------------------------------------------------------------ parameters
    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the projector's (or the trained set's) optimiser updates."""
        return adapters.adapter_set_parameters(self.unet, self.vae, self.trained_role, trainable_only=True)

    def regularizer_parameters(self) -> list[nn.Parameter]:
        """What the regularizer's optimiser updates; empty when the prior term is off (no regularizer)."""
        if self.regularizer not in adapters.list_adapter_sets(self.unet):
            return []
        return adapters.adapter_set_parameters(self.unet, self.vae, self.regularizer, trainable_only=True)

    # ------------------------------------------------------------------ batch
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """CLIP last hidden states of each prompt (the text encoder is frozen)."""
        device = next(self.text_encoder.parameters()).device
        return encode_text(self.tokenizer, self.text_encoder, prompts, device).to(self.device)

    def _negative_embeds(self, batch_size: int) -> torch.Tensor:
        """The negative prompt's embedding, encoded once (it never changes), repeated for the batch."""
        if self._negative is None:
            self._negative = self.encode_prompts([self.negative_prompt])
        return self._negative.expand(batch_size, -1, -1)

    def make_batch(self, hq: torch.Tensor, generator: Optional[torch.Generator] = None) -> IRIBBatch:
        """HQ crops in [0, 1] -> the degraded pair and the (dropped-out) prompts."""
        pair = degrade_pair(hq, self.lq_degradation, self.elq_degradation, generator=generator)
        source = {"hq": pair.hq, "lq": pair.lq, "elq": pair.elq}.get(self.config.prompt_source)
        prompts = [""] * hq.shape[0]
        if source is not None and self.prompt_extractor is not None:
            prompts = check_prompts(self.prompt_extractor(postprocess(source, "pil")), hq.shape[0])
        drop = (torch.rand(len(prompts), generator=generator) < self.config.prompt_dropout).tolist()
        kept = ["" if dropped else p for p, dropped in zip(prompts, drop)]
        return IRIBBatch(pair.hq, pair.lq, pair.elq, pair.lq_params, pair.elq_params, kept, tags=prompts)

    # ------------------------------------------------------------------ losses
    def _score(self, role: Optional[str]) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        def score(noisy: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
            with adapters.use_adapter_set(self.unet, self.vae, role):
                return predict_noise(self.unet, noisy, embeds, t)

        return score

    def _generate(
        self, batch: IRIBBatch, embeds: torch.Tensor, restorer_embeds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_hat in [0, 1], its x0 latent) of the trained model on this batch."""
        alphas = self.scheduler.alphas_cumprod
        device = self.device
        if self.config.mode == "irib":
            out = irib_forward(self.unet, self.vae, alphas, batch.elq.to(device) * 2 - 1, embeds, restorer_embeds)
            return (out.hq.float() + 1) / 2, out.hq_latents
        source = batch.elq if self.config.mode == "direct" else batch.lq
        out = restore(self.unet, self.vae, alphas, source.to(device) * 2 - 1, embeds, role=self.trained_role)
        return (out.images.float() + 1) / 2, out.latents

    def projector_step_losses(self, batch: IRIBBatch, generator: Optional[torch.Generator] = None) -> IRIBStepLosses:
        """Every term of eq. 19 (unweighted) and the weighted "total", for the trained set's backward.

        Keys: "total", "lq_recon", "prior", "hq_fidelity", "l2", "lpips", "blur". Terms whose weight
        is 0 are not computed (reported as 0). The result also carries g's latents and the prompt
        embeddings (``latents``, ``prompt_embeds``) for :meth:`regularizer_step_loss`.
        """
        cfg = self.config
        embeds = self.encode_prompts(batch.prompts)
        tags = embeds  # what the restorer, the prior scores and the regularizer see
        if cfg.prompt_dropout_scope == "projector" and batch.tags is not None and batch.tags != batch.prompts:
            tags = self.encode_prompts(batch.tags)
        z_hat, latents = self._generate(batch, embeds, tags)
        hq = batch.hq.to(z_hat.device)
        fid = hq_fidelity_loss(
            z_hat,
            hq,
            self.lpips_fn,
            cfg.l2_weight,
            cfg.lpips_weight,
            cfg.blur_weight,
            cfg.hq_blur_sigma,
            cfg.pixel_range,
        )
        zero = z_hat.new_zeros(())
        lq_recon = zero
        if cfg.mode == "irib" and cfg.lq_weight:
            lq_recon = lq_reconstruction_loss(
                z_hat,
                batch.lq.to(z_hat.device),
                self.lq_degradation,
                batch.lq_params,
                cfg.lq_blur_sigma,
                cfg.pixel_range,
            )
        prior = zero
        if cfg.prior_weight:
            negative = self._negative_embeds(len(batch.prompts))
            prior = prior_loss(
                latents,
                tags,
                negative,
                self._score(self.regularizer),
                self._score(None),
                self.scheduler,
                cfg.guidance_scale,
                cfg.prior_timestep_range,
                cfg.literal_eq17,
                generator,
            )
        total = cfg.lq_weight * lq_recon + cfg.prior_weight * prior + fid["total"]
        terms = {"total": total, "lq_recon": lq_recon, "prior": prior, "hq_fidelity": fid["total"]}
        terms.update({name: fid[name] for name in ("l2", "lpips", "blur")})
        return IRIBStepLosses(terms, latents=latents.detach(), prompt_embeds=tags)

    def regularizer_step_loss(
        self, latents: torch.Tensor, prompt_embeds: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """The regularizer's epsilon loss on g's latents: a projector step's ``losses.latents`` and
        ``losses.prompt_embeds`` (detached, so only the regularizer learns from it)."""
        if self.regularizer not in adapters.list_adapter_sets(self.unet):
            raise ValueError(f"there is no {self.regularizer!r} set: the prior term is off (prior_weight=0)")
        return regularizer_loss(
            latents, prompt_embeds, self._score(self.regularizer), self.scheduler, generator=generator
        )


class IRIBTrainingStep(nn.Module):
    """One training step's forward as a module, so DDP can wrap it (``accelerator.prepare``).

    The UNet serves several roles inside one step, switched by adapter name on the unwrapped
    modules, so DDP cannot wrap the UNet itself: it wraps this module, whose parameters are the UNet's
    and the VAE's (only the trainable sets' require grad). ``forward`` returns the objective's terms
    plus ``"regularizer"`` and ``"loss"`` = total + regularizer, for ONE backward.

    One backward gives the same gradients as the objective's two (projector, then regularizer): the
    regularizer's loss is computed on detached latents, so it reaches only the regularizer's
    parameters, and the projector's VSD term uses the regularizer under ``no_grad``, so it reaches only
    the projector's. Every trainable parameter therefore gets a gradient in every step, and DDP can
    run with ``find_unused_parameters=False`` (no extra graph traversal per step).
    """

    def __init__(self, objective: IRIBObjective):
        super().__init__()
        self.objective = objective
        self.unet, self.vae = objective.unet, objective.vae  # registered: DDP sees their parameters

    def forward(self, batch: IRIBBatch, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        losses = self.objective.projector_step_losses(batch, generator=generator)
        regularizer = losses["total"].new_zeros(())
        if self.objective.regularizer_parameters():
            regularizer = self.objective.regularizer_step_loss(
                losses.latents, losses.prompt_embeds, generator=generator
            )
        return {**losses, "regularizer": regularizer, "loss": losses["total"] + regularizer}
