"""Real-ESRGAN's second-order degradation for batches, replayable and differentiable.

    first stage:   blur -> resize -> noise -> JPEG
    second stage:  (blur) -> resize -> noise
    final step:    [resize to H/scale -> sinc -> JPEG]  or  [JPEG -> resize to H/scale -> sinc]
                   (scale fixed, or drawn per sample from the config's ``scale_range``)
    finish:        (resize back to H) -> clamp and round to 8 bits

Every random choice is drawn per sample by :meth:`RealESRGANDegradation.sample` into a
:class:`DegradationParams`; :meth:`RealESRGANDegradation.__call__` applies a params record, so the
same record degrades another image of the same size identically (the degrade-back D(z; phi)).

Replay is coupled: once applied, D(.; phi) is one fixed operator. Gaussian noise is the seed's
field, drawn on the CPU, the same on every device and for every input. Poisson (shot) noise depends on
the image it is drawn on, so the first application realises it and records it in the params (with its
vals = 2^ceil(log2(#levels))); later applications add the recorded field. A small change of the input
then gives a small change of the output, as with Gaussian noise. The realisation draws the counts by
the inverse CDF of the seed's uniforms (exactly Real-ESRGAN's Poisson marginals, reproducible from
the seed on any device), so params restored from JSON, which keeps vals but not the fields, give the
same result on the same image.

Why record the field rather than re-draw the counts at the new input with the same uniforms: an
8-bit level crossing then changes the noise by about scale/255 whenever vals < 256, and by scale/vals
in a few percent of crossings even at vals = 256, whatever the coupling (the counts are integers).
Measured with coupled re-drawing, G * D(y + d) vs G * D(y) stayed 2-5 dB below the Gaussian-noise
case (ELQ at 256 px, LQ at 512 px); with the recorded field it is on par.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import DegradationConfig
from .jpeg import differentiable_jpeg
from .kernels import (
    circular_lowpass_kernel,
    delta_kernel,
    pad_kernel,
    random_mixed_kernels,
    sample_odd_kernel_sizes,
    sample_sinc_cutoffs,
)
from .ops import add_noise, filter2d, quantize_8bit, resize, ste_clamp
from .params import DegradationParams, FinalParams, StageParams


def _cpu_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """Parameters are drawn on the CPU; a generator on another device seeds a CPU one."""
    if generator is None or generator.device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator().manual_seed(seed)


def _choose(probs: tuple[float, ...], n: int, generator) -> list[int]:
    return torch.multinomial(
        torch.tensor(probs, dtype=torch.float64), n, replacement=True, generator=generator
    ).tolist()


def _uniform(n: int, low_high: tuple[float, float], generator) -> torch.Tensor:
    low, high = low_high
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def _flags(n: int, prob: float, generator) -> list[bool]:
    return (torch.rand(n, generator=generator) < prob).tolist()


def _resized(size: int, factor: float) -> int:
    return max(1, int(size * factor))


def _jpeg(image: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1], then JPEG, as Real-ESRGAN does before every JPEG (a sinc or bicubic resize overshoots)."""
    return differentiable_jpeg(ste_clamp(image), quality)


def _with_record_slots(params: DegradationParams) -> DegradationParams:
    """Give params built by hand without Poisson records empty ones, in place, so they can be filled."""
    for stage in (params.first, params.second):
        if stage.poisson_vals is None:
            stage.poisson_vals = [None] * len(stage.noise_seed)
        if stage.poisson_noise is None:
            stage.poisson_noise = [None] * len(stage.noise_seed)
    return params


def _keep_records(applied: DegradationParams, original: DegradationParams) -> None:
    """Write what the application recorded into its device copy of the params back into the caller's."""
    for name in ("first", "second"):
        source, target = getattr(applied, name), getattr(original, name)
        for i, field in enumerate(source.poisson_noise):
            if target.poisson_noise[i] is None:
                target.poisson_noise[i], target.poisson_vals[i] = field, source.poisson_vals[i]


class RealESRGANDegradation:
    """Degrade batches of images with Real-ESRGAN's second-order pipeline.

    Args:
        config: the knobs; ``DegradationConfig.realesrgan()`` (LQ) or ``DegradationConfig.extreme()``
            (ELQ).

    Example::

        degrade = RealESRGANDegradation(DegradationConfig.realesrgan())
        params = degrade.sample(8, 512, 512, generator=torch.Generator().manual_seed(0))
        lq = degrade(hq, params)           # (8, 3, 512, 512) in [0, 1]
        lq_again = degrade(other, params)  # the same operator on another image
    """

    def __init__(self, config: DegradationConfig | None = None):
        if config is None:
            config = DegradationConfig.realesrgan()
        if not isinstance(config, DegradationConfig):
            raise TypeError(f"config must be a DegradationConfig, got {type(config).__name__}")
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}(preset={self.config.preset_name!r} v{self.config.preset_version}, scale={self.config.scale})"

    # ------------------------------------------------------------------ sampling
    def _sample_stage(self, n: int, generator, second: bool) -> StageParams:
        c, s = self.config, "2" if second else ""
        size_range = getattr(c, f"kernel_size_range{s}")
        sizes = sample_odd_kernel_sizes(n, size_range, generator)
        kernel, families = random_mixed_kernels(
            sizes,
            getattr(c, f"kernel_list{s}"),
            getattr(c, f"kernel_prob{s}"),
            getattr(c, f"blur_sigma{s}"),
            c.rotation_range,
            getattr(c, f"betag_range{s}"),
            getattr(c, f"betap_range{s}"),
            getattr(c, f"sinc_prob{s}"),
            pad_to=size_range[1],
            generator=generator,
        )
        blur = _flags(n, c.second_blur_prob, generator) if second else [True] * n
        direction = _choose(getattr(c, f"resize_prob{s}"), n, generator)  # 0 up, 1 down, 2 keep
        lo, hi = getattr(c, f"resize_range{s}")
        up = _uniform(n, (1.0, max(hi, 1.0)), generator)
        down = _uniform(n, (min(lo, 1.0), 1.0), generator)
        scale = [float(up[i]) if d == 0 else float(down[i]) if d == 1 else 1.0 for i, d in enumerate(direction)]
        modes = [c.resize_modes[i] for i in torch.randint(0, len(c.resize_modes), (n,), generator=generator).tolist()]
        use_gaussian = _flags(n, getattr(c, f"gaussian_noise_prob{s}"), generator)
        sigma = _uniform(n, getattr(c, f"noise_range{s}"), generator) / 255.0
        poisson = _uniform(n, getattr(c, f"poisson_scale_range{s}"), generator)
        gray = _flags(n, getattr(c, f"gray_noise_prob{s}"), generator)
        seeds = torch.randint(0, 2**62, (n,), generator=generator).tolist()
        quality = None if second else _uniform(n, c.jpeg_range, generator)
        # realised and recorded by the first application (see the module docstring)
        poisson_vals, poisson_noise = [None] * n, [None] * n
        return StageParams(
            kernel=kernel.float(),
            kernel_size=sizes,
            kernel_family=families,
            blur=blur,
            resize_scale=[float(x) for x in scale],
            resize_mode=modes,
            use_gaussian_noise=use_gaussian,
            gaussian_sigma=sigma.float(),
            poisson_scale=poisson.float(),
            gray_noise=gray,
            noise_seed=seeds,
            jpeg_quality=None if quality is None else quality.float(),
            poisson_vals=poisson_vals,
            poisson_noise=poisson_noise,
        )

    def _sample_final(self, n: int, generator) -> FinalParams:
        c = self.config
        sizes = sample_odd_kernel_sizes(n, c.final_kernel_size_range, generator)
        cutoff = sample_sinc_cutoffs(sizes, generator, final=True)
        sinc = _flags(n, c.final_sinc_prob, generator)
        pad_to = c.final_kernel_size_range[1]
        kernels = [
            pad_kernel(circular_lowpass_kernel(k, cutoff[i : i + 1]), pad_to)
            if sinc[i]
            else delta_kernel(1, pad_to, dtype=torch.float64)
            for i, k in enumerate(sizes)
        ]
        mode_index = torch.randint(0, len(c.resize_modes), (2, n), generator=generator).tolist()
        return FinalParams(
            sinc=sinc,
            sinc_kernel=torch.cat(kernels).float(),
            kernel_size=[k if sinc[i] else 1 for i, k in enumerate(sizes)],
            resize_first=_flags(n, c.final_resize_first_prob, generator),
            resize_mode=[c.resize_modes[i] for i in mode_index[0]],
            jpeg_quality=_uniform(n, c.jpeg_range2, generator).float(),
            resize_back_mode=[c.resize_modes[i] for i in mode_index[1]],
            # drawn last, and only with a range: a fixed-scale preset draws exactly what it always drew
            scale=None
            if c.scale_range is None
            else torch.randint(c.scale_range[0], c.scale_range[1] + 1, (n,), generator=generator).tolist(),
        )

    def sample(
        self,
        batch_size: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> DegradationParams:
        """Draw every random choice of one application to a batch of ``height`` x ``width`` images."""
        for name, value in (("batch_size", batch_size), ("height", height), ("width", width)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        generator = _cpu_generator(generator)
        params = DegradationParams(
            height=height,
            width=width,
            scale=self.config.scale,
            first=self._sample_stage(batch_size, generator, second=False),
            second=self._sample_stage(batch_size, generator, second=True),
            final=self._sample_final(batch_size, generator),
        )
        return params.to(device) if device is not None else params

    # ------------------------------------------------------------------ stages
    @staticmethod
    def _blur(image: torch.Tensor, kernel: torch.Tensor, size: int) -> torch.Tensor:
        """Filter with the kernel cropped to its own taps (the rest is zero padding)."""
        if size <= 1:
            return image
        cut = (kernel.shape[-1] - size) // 2
        return filter2d(image, kernel[None, cut : kernel.shape[-1] - cut, cut : kernel.shape[-1] - cut])

    def first_stage(self, image: torch.Tensor, p: StageParams, i: int) -> torch.Tensor:
        """Blur, resize relative to the input size, noise, JPEG, for sample ``i``."""
        image = self._blur(image, p.kernel[i], p.kernel_size[i])
        h, w = image.shape[-2:]
        image = resize(image, (_resized(h, p.resize_scale[i]), _resized(w, p.resize_scale[i])), p.resize_mode[i])
        image = self._noise(image, p, i)
        return _jpeg(image, p.jpeg_quality[i : i + 1])

    def second_stage(
        self, image: torch.Tensor, p: StageParams, i: int, height: int, width: int, scale: int | None = None
    ) -> torch.Tensor:
        """Optional blur, resize relative to (H / scale), noise, for sample ``i`` (``scale``: its final
        scale, default the config's)."""
        if p.blur[i]:
            image = self._blur(image, p.kernel[i], p.kernel_size[i])
        s = self.config.scale if scale is None else scale
        size = (_resized(height, p.resize_scale[i] / s), _resized(width, p.resize_scale[i] / s))
        image = resize(image, size, p.resize_mode[i])
        return self._noise(image, p, i)

    def final_stage(
        self, image: torch.Tensor, p: FinalParams, i: int, height: int, width: int, scale: int | None = None
    ) -> torch.Tensor:
        """The final resize to (H // scale), sinc filter and JPEG, in the sample's order."""
        s = self.config.scale if scale is None else scale
        size = (max(1, height // s), max(1, width // s))
        quality = p.jpeg_quality[i : i + 1]
        if p.resize_first[i]:
            image = resize(image, size, p.resize_mode[i])
            image = self._blur(image, p.sinc_kernel[i], p.kernel_size[i])
            return _jpeg(image, quality)
        image = _jpeg(image, quality)
        image = resize(image, size, p.resize_mode[i])
        return self._blur(image, p.sinc_kernel[i], p.kernel_size[i])

    @staticmethod
    def _noise(image: torch.Tensor, p: StageParams, i: int) -> torch.Tensor:
        """Sample ``i``'s noise; the first application records its Poisson realisation into ``p``."""
        vals, fields = p.poisson_vals[i : i + 1], p.poisson_noise[i : i + 1]
        noisy = add_noise(
            image,
            p.use_gaussian_noise[i : i + 1],
            p.gaussian_sigma[i : i + 1],
            p.poisson_scale[i : i + 1],
            p.gray_noise[i : i + 1],
            p.noise_seed[i : i + 1],
            vals,
            fields,
        )
        p.poisson_vals[i], p.poisson_noise[i] = vals[0], fields[0]
        return noisy

    # ------------------------------------------------------------------ application
    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
        if images.numel() == 0:
            raise ValueError(f"images must not be empty, got shape {tuple(images.shape)}")
        if min(images.shape[-2:]) < self.config.scale:  # the final downscale would leave less than a pixel
            raise ValueError(
                f"images must be at least {self.config.scale} px a side for this preset (it downscales by "
                f"{self.config.scale}), got {images.shape[-1]}x{images.shape[-2]}"
            )
        low, high = torch.aminmax(images.detach())
        if not torch.isfinite(low) or not torch.isfinite(high) or low < 0 or high > 1:
            raise ValueError(f"images must lie in [0, 1] with no NaN, got values in [{float(low)}, {float(high)}]")

    def _check_params(self, params: DegradationParams, images: torch.Tensor) -> None:
        if not isinstance(params, DegradationParams):
            raise TypeError(f"params must be DegradationParams, got {type(params).__name__}")
        b, _, h, w = images.shape
        if params.batch_size != b or (params.height, params.width) != (h, w):
            raise ValueError(
                f"params were drawn for {params.batch_size} images of {params.height}x{params.width}, "
                f"but images has {b} of {h}x{w}"
            )
        if params.scale != self.config.scale:
            raise ValueError(f"params were drawn with scale {params.scale}, this config has {self.config.scale}")
        if params.final.scale is not None:
            scales = params.final.scale
            if len(scales) != b or not all(isinstance(s, int) and 1 <= s <= params.scale for s in scales):
                raise ValueError(f"params.final.scale must hold {b} integers in [1, {params.scale}], got {scales!r}")

    def __call__(
        self,
        images: torch.Tensor,
        params: DegradationParams | None = None,
        generator: torch.Generator | None = None,
        resize_back: bool = True,
    ) -> torch.Tensor:
        """Degrade ``images`` (B, 3, H, W) in [0, 1].

        Draws new params from ``generator`` unless ``params`` is given. Returns (B, 3, H, W) images
        (resized back to the input size, as OSEDiff trains) or (B, 3, H // scale, W // scale) with
        ``resize_back=False``, quantised to 8 bits. Differentiable w.r.t. ``images``.

        Computes in float32 (float64 stays float64) and returns the input's dtype. The first
        application of ``params`` records its Poisson noise into it (see the module docstring).
        """
        self._check_images(images)
        b, _, h, w = images.shape
        if params is None:
            params = self.sample(b, h, w, generator=generator)
        self._check_params(params, images)
        scales = [params.sample_scale(i) for i in range(b)]
        if not resize_back and len(set(scales)) > 1:
            raise ValueError(
                f"the samples have different final scales {sorted(set(scales))}, so different sizes without the "
                "resize back: use resize_back=True, or degrade them one scale at a time"
            )
        original = _with_record_slots(params)
        params = params.to(images.device)
        work = images.to(torch.promote_types(images.dtype, torch.float32))
        outputs = []
        for i in range(b):
            x = work[i : i + 1]
            x = self.first_stage(x, params.first, i)
            x = self.second_stage(x, params.second, i, h, w, scale=scales[i])
            x = self.final_stage(x, params.final, i, h, w, scale=scales[i])
            if resize_back:
                x = resize(x, (h, w), params.final.resize_back_mode[i])
            outputs.append(quantize_8bit(x))
        _keep_records(params, original)
        return torch.cat(outputs).to(images.dtype)

    def realise(
        self,
        images: torch.Tensor,
        params: DegradationParams | None = None,
        generator: torch.Generator | None = None,
        resize_back: bool = True,
    ) -> tuple[torch.Tensor, DegradationParams]:
        """Degrade ``images`` as :meth:`__call__` does and return them with the realised params.

        The params (``params`` itself, or those drawn from ``generator``) then hold the Poisson noise
        realised on ``images``: they are the fixed operator D(.; phi) that replays this degradation, as
        the degrade-back of the LQ-reconstruction loss needs. Use this where the params outlive the call.
        """
        if params is None:
            self._check_images(images)
            b, _, h, w = images.shape
            params = self.sample(b, h, w, generator=generator)
        return self(images, params, resize_back=resize_back), params


@dataclass
class DegradedPair:
    """One training triplet from an HQ batch: the LQ and ELQ degradations and their params, realised
    on ``hq`` (:meth:`RealESRGANDegradation.realise`)."""

    hq: torch.Tensor
    lq: torch.Tensor
    elq: torch.Tensor
    lq_params: DegradationParams
    elq_params: DegradationParams


def degrade_pair(
    hq: torch.Tensor,
    lq_degradation: RealESRGANDegradation,
    elq_degradation: RealESRGANDegradation,
    generator: torch.Generator | None = None,
) -> DegradedPair:
    """Degrade one HQ batch twice, independently: with the LQ and with the ELQ pipeline."""
    lq_degradation._check_images(hq)
    b, _, h, w = hq.shape
    lq_params = lq_degradation.sample(b, h, w, generator=generator, device=hq.device)
    elq_params = elq_degradation.sample(b, h, w, generator=generator, device=hq.device)
    # realised on hq: the pair's params replay exactly these degradations (the degrade-back of the loss)
    lq, lq_params = lq_degradation.realise(hq, lq_params)
    elq, elq_params = elq_degradation.realise(hq, elq_params)
    return DegradedPair(hq=hq, lq=lq, elq=elq, lq_params=lq_params, elq_params=elq_params)
