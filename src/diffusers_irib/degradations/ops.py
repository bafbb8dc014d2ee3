"""The image operations of the degradation pipeline: blur, resize, noise, quantisation.

All take (B, C, H, W) float images and per-sample parameters, run on any device, and let gradients
through: where the true derivative is zero (rounding, clamping) a straight-through estimator passes
the gradient on unchanged, so the pipeline can serve as the degrade-back operator D(z).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

# Kernels larger than this are applied through the FFT, which costs the same for any size.
FFT_MIN_KERNEL_SIZE = 13


# --------------------------------------------------------------------------- straight-through
def _straight_through(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` forward, identity backward. Adds exactly 0 to ``value``, so the result is bit-identical with
    and without autograd; without a graph to build, ``value`` is returned as it is."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return value
    return value.detach() + (x - x.detach())


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward."""
    return _straight_through(x, torch.round(x.detach()))


def ste_clamp(x: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """clamp(x) forward, identity backward (saturated pixels keep their gradient)."""
    return _straight_through(x, x.detach().clamp(low, high))


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to 256 levels, as an 8-bit image file would."""
    return ste_round(ste_clamp(x) * 255.0) / 255.0


# --------------------------------------------------------------------------- blur
def _pad_for_kernel(images: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Reflect padding by k // 2; replicate where the image is too small to reflect.

    Real-ESRGAN's filter2D crashes when an extreme downscale leaves an image with fewer than
    k // 2 + 1 rows; replicating the border is the closest well-defined extension.
    """
    pad = kernel_size // 2
    mode = "reflect" if pad < min(images.shape[-2:]) else "replicate"
    return F.pad(images, (pad, pad, pad, pad), mode=mode)


def filter2d(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Filter each sample with its own kernel (cross-correlation, as ``F.conv2d``).

    images: (B, C, H, W); kernels: (B, k, k) or (k, k) with odd k. Large kernels go through the
    FFT (linear correlation of the padded image, so no wrap-around reaches the kept region).
    """
    if kernels.dim() == 2:
        kernels = kernels.expand(images.shape[0], -1, -1)
    b, c, h, w = images.shape
    k = kernels.shape[-1]
    kernels = kernels.to(device=images.device, dtype=images.dtype)
    padded = _pad_for_kernel(images.contiguous(), k)
    if k < FFT_MIN_KERNEL_SIZE:
        weight = kernels.repeat_interleave(c, dim=0)[:, None]  # (B*C, 1, k, k)
        out = F.conv2d(padded.reshape(1, b * c, *padded.shape[-2:]), weight, groups=b * c)
        return out.reshape(b, c, h, w)
    size = padded.shape[-2:]
    spectrum = torch.fft.rfft2(padded, s=size)
    kernel_spectrum = torch.fft.rfft2(kernels[:, None], s=size)
    out = torch.fft.irfft2(spectrum * kernel_spectrum.conj(), s=size)
    return out[..., :h, :w].contiguous()


# --------------------------------------------------------------------------- resize
def resize(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize to ``size`` = (height, width) with area, bilinear or bicubic interpolation.

    No antialiasing, as in Real-ESRGAN: bilinear/bicubic downscales alias on purpose.
    """
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if mode == "area":
        return F.interpolate(images, size=size, mode="area")
    return F.interpolate(images, size=size, mode=mode, align_corners=False)


# --------------------------------------------------------------------------- noise fields
# CPU and CUDA generators give different streams for one seed, so every random field is drawn by a
# CPU generator and then moved: the same seed gives the same field on every device.
UNIFORM_BITS = 24  # uniforms are integers m in [0, 2^24); u = m / 2^24, the resolution of a float32 uniform


def noise_generator(seed: int) -> torch.Generator:
    """The CPU generator every noise field of one seed is drawn from."""
    return torch.Generator().manual_seed(int(seed))


def normal_field(shape: tuple[int, ...], seed: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Standard normal float32 field drawn on the CPU from ``seed``, then moved to ``device``."""
    return torch.randn(shape, generator=noise_generator(seed), dtype=torch.float32).to(device)


def uniform_field(shape: tuple[int, ...], seed: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Uniform integers in [0, 2^UNIFORM_BITS) (int32) drawn on the CPU from ``seed``, then moved.

    Integers rather than floats so the inverse-CDF lookup below is exact integer arithmetic.
    """
    field = torch.randint(0, 2**UNIFORM_BITS, shape, generator=noise_generator(seed), dtype=torch.int32)
    return field.to(device)


def gaussian_noise(
    shape: tuple[int, int, int], sigma: torch.Tensor, gray: bool, seed: int, device, dtype
) -> torch.Tensor:
    """Zero-mean Gaussian noise for one sample (C, H, W); ``sigma`` on the 0..1 scale.

    Gray noise is one plane shared by the channels. Each sample has its own field (Real-ESRGAN
    shares one gray field across the batch). The field depends only on the seed and the shape, so a
    replay on another input adds the very same noise.
    """
    c, h, w = shape
    field = normal_field((1 if gray else c, h, w), seed, device).to(dtype)
    return field.expand(c, h, w) * sigma


# --------------------------------------------------------------------------- Poisson noise
# Real-ESRGAN's shot noise: the image, rounded to 8 bits, is read as photon counts with
# vals = 2^ceil(log2(#levels)) levels, and noise = (Poisson(level / 255 * vals) / vals - level / 255) * scale.
# The counts are drawn by the inverse CDF of a fixed per-pixel uniform, so the noise of one seed is a
# deterministic function of the image: a small change of the input moves a count only where the rate crosses
# a CDF boundary (a jump of 1 / vals), and the marginal of every pixel stays exactly Poisson. The rate takes
# one of 256 values per vals (the 8-bit level), and vals one of 9 powers of two, so all CDFs fit in one table.
POISSON_LEVELS = 256  # 8-bit levels, and the largest vals (2^ceil(log2(256)))
POISSON_VALS_EXPONENTS = 9  # vals = 2^0 .. 2^8
POISSON_MAX_COUNT = 448  # table width: P(N >= 448) < 1e-25 at the largest rate, 256
_GUIDE_BITS = 10  # 1024 guide bins per CDF (Chen & Asau's indexed search)
_KEY_SHIFT = UNIFORM_BITS + 1  # sort keys: (row << 25) + threshold, rows never overlap
_THRESHOLD_MASK = 2**_KEY_SHIFT - 1


@functools.lru_cache(maxsize=8)
def _poisson_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The Poisson CDFs of every (vals, level) rate, as sorted integer keys and a guide table.

    Row r = exponent * 256 + level has rate level * 2^exponent / 255 and thresholds
    t_r(k) = ceil(F_r(k) * 2^24), so that F_r(k) <= m / 2^24 exactly when t_r(k) <= m. ``keys``
    (rows * K,) int64 holds (r << 25) + t_r(k): the count of a uniform m is the number of keys <= (r << 25) + m,
    minus r * K. ``guide`` (rows * 1024,) int16 holds, for each bin of m, 4 * (the count at the bin's start)
    plus the number of thresholds inside the bin (capped at 2). Built in float64 on the CPU, then moved, so
    every device reads the same table.
    """
    rows, k_max, bins = POISSON_VALS_EXPONENTS * POISSON_LEVELS, POISSON_MAX_COUNT, 2**_GUIDE_BITS
    level = torch.arange(POISSON_LEVELS, dtype=torch.float64)
    vals = torch.exp2(torch.arange(POISSON_VALS_EXPONENTS, dtype=torch.float64))
    rate = (vals[:, None] * level[None, :] / 255).reshape(rows, 1)
    k = torch.arange(k_max, dtype=torch.float64)
    log_pmf = k * torch.log(rate) - rate - torch.lgamma(k + 1)
    log_pmf[rate[:, 0] == 0] = torch.where(k == 0, 0.0, -math.inf).double()  # rate 0: N = 0 surely
    cdf = torch.exp(log_pmf).cumsum(dim=1).clamp(max=1.0)
    cdf[:, -1] = 1.0  # truncation: the tail beyond the table is below float64 resolution
    threshold = torch.ceil(cdf * 2**UNIFORM_BITS).long()
    keys = (torch.arange(rows)[:, None] << _KEY_SHIFT) + threshold

    def counts_at_or_below(bin_of_threshold: torch.Tensor) -> torch.Tensor:
        """For each bin j: #{k : bin_of_threshold(k) <= j}."""
        hist = torch.zeros(rows, bins + 1, dtype=torch.long)
        hist.scatter_add_(1, bin_of_threshold.clamp(max=bins), torch.ones_like(bin_of_threshold))
        return hist.cumsum(dim=1)[:, :bins]

    shift = UNIFORM_BITS - _GUIDE_BITS
    start = counts_at_or_below((threshold + 2**shift - 1) >> shift)  # count at m = j << shift
    end = counts_at_or_below(threshold >> shift)  # count at m = ((j + 1) << shift) - 1
    guide = start.clamp(max=k_max - 1) * 4 + (end - start).clamp(max=2)
    return keys.reshape(-1).to(device), guide.reshape(-1).to(device=device, dtype=torch.int16)


def poisson_quantile(
    levels: torch.Tensor, vals_exponent: int, uniforms: torch.Tensor, subset: bool | None = None
) -> torch.Tensor:
    """Poisson counts with rate ``levels / 255 * 2^vals_exponent`` at the uniforms ``m / 2^24`` (inverse CDF).

    levels: int64 8-bit levels; vals_exponent: in [0, 8]; uniforms: int32 from :func:`uniform_field`.
    Exact: count = #{k : F(k) <= m / 2^24}; the only approximation is the 2^-24 resolution of u. The guide
    table gives the count at the start of m's bin; where one CDF threshold falls inside the bin (a few percent
    of pixels) one comparison settles it, where two or more do (the far tails) a binary search over the keys.
    With ``subset`` (default: on the CPU) only the pixels that need a step take it; otherwise every pixel
    does, which avoids a host sync on a GPU. Both give the same counts.
    """
    keys, guide = _poisson_tables(levels.device)
    row = levels + vals_exponent * POISSON_LEVELS
    m = uniforms.long()
    code = guide[(row << _GUIDE_BITS) + (m >> (UNIFORM_BITS - _GUIDE_BITS))].long()
    start, inside = code >> 2, code & 3

    def step(row: torch.Tensor, m: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """One threshold inside the bin: the count is start, or start + 1 once m reaches it."""
        threshold = keys[row * POISSON_MAX_COUNT + start] & _THRESHOLD_MASK
        return start + (threshold <= m).long()

    def search(row: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        found = torch.searchsorted(keys, (row << _KEY_SHIFT) + m, right=True) - row * POISSON_MAX_COUNT
        return found.clamp(max=POISSON_MAX_COUNT - 1)

    if subset is None:
        subset = levels.device.type == "cpu"
    if not subset:
        return torch.where(inside == 0, start, torch.where(inside == 1, step(row, m, start), search(row, m)))
    counts = start
    one = (inside == 1).nonzero(as_tuple=True)
    counts[one] = step(row[one], m[one], start[one])
    more = (inside == 2).nonzero(as_tuple=True)
    counts[more] = search(row[more], m[more])
    return counts


def count_levels(images: torch.Tensor) -> torch.Tensor:
    """Number of distinct 8-bit levels per sample, without a host sync (a 256-bin histogram)."""
    b = images.shape[0]
    levels = (images.detach().clamp(0, 1) * 255.0).round().long().reshape(b, -1)
    return _count_distinct(levels)


def _count_distinct(levels: torch.Tensor) -> torch.Tensor:
    """Distinct values per row of (B, N) int64 levels in [0, 255]."""
    hist = torch.zeros(levels.shape[0], POISSON_LEVELS, device=levels.device, dtype=torch.long)
    hist.scatter_add_(1, levels, torch.ones_like(levels))
    return (hist > 0).sum(dim=1)


def measured_vals(levels: torch.Tensor) -> float:
    """Real-ESRGAN's vals = 2^ceil(log2(#distinct levels)) of one sample's int64 levels."""
    distinct = int(_count_distinct(levels.reshape(1, -1))[0])
    return float(2 ** math.ceil(math.log2(distinct)))


def rgb_to_gray(images: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma, keeping a channel axis of size 1."""
    weights = images.new_tensor([0.299, 0.587, 0.114])[:, None, None]
    return (images * weights).sum(dim=-3, keepdim=True)


def poisson_levels(image: torch.Tensor, gray: bool) -> torch.Tensor:
    """The 8-bit levels (int64) the shot noise is drawn on: of the image (C, H, W), or of its luma (1, H, W)."""
    source = rgb_to_gray(image) if gray else image
    return (source.detach().clamp(0, 1) * 255.0).round().long()


@torch.no_grad()
def poisson_noise(
    image: torch.Tensor, scale: torch.Tensor, gray: bool, seed: int, vals: float | None = None
) -> tuple[torch.Tensor, float]:
    """Signal-dependent shot noise for one sample (C, H, W), Real-ESRGAN's formula, reproducible on any device.

    noise = (Poisson(level / 255 * vals) / vals - level / 255) * scale on the 8-bit levels of the image (or
    of its luma, one plane shared by the channels). ``vals`` is a recorded 2^ceil(log2(#levels)); if None,
    the image's own is measured. The counts are the inverse CDF of the seed's uniforms (see
    :func:`poisson_quantile`). Returns the noise, (C, H, W) or (1, H, W) for gray, and the vals used.
    Computed without gradient: added to the image it acts as a constant, so the gradient passes unchanged.
    """
    levels = poisson_levels(image, gray)
    if vals is None:
        vals = measured_vals(levels)
    exponent = round(math.log2(vals))
    if not 0 <= exponent < POISSON_VALS_EXPONENTS or 2.0**exponent != vals:
        raise ValueError(f"vals must be a power of two from 1 to 256, got {vals}")
    counts = poisson_quantile(levels, exponent, uniform_field(tuple(levels.shape), seed, image.device))
    noise = (counts.to(image.dtype) / vals - levels.to(image.dtype) / 255.0) * scale
    return noise, vals


def add_noise(
    images: torch.Tensor,
    use_gaussian: list[bool],
    gaussian_sigma: torch.Tensor,
    poisson_scale: torch.Tensor,
    gray: list[bool],
    seeds: list[int],
    poisson_vals: list[float | None] | None = None,
    poisson_fields: list[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Add per-sample Gaussian or Poisson noise (reproducible from the seeds), then clip to [0, 1].

    Gaussian fields depend only on the seed and the shape. Poisson noise depends on the image; to replay it
    on another image, pass records, lists with one entry per sample, filled in place: ``poisson_fields``
    holds realised Poisson noise, added as it is where present and realised on ``images`` and stored where
    None; ``poisson_vals`` likewise holds the vals each realisation used (None: measure it on the image).
    """
    noisy = []
    for i, image in enumerate(images):
        field = None if poisson_fields is None else poisson_fields[i]
        if use_gaussian[i]:
            noise = gaussian_noise(image.shape, gaussian_sigma[i], gray[i], seeds[i], image.device, image.dtype)
        elif field is not None:
            noise = field.to(device=image.device, dtype=image.dtype)
        else:
            recorded_vals = None if poisson_vals is None else poisson_vals[i]
            noise, vals = poisson_noise(image, poisson_scale[i], gray[i], seeds[i], recorded_vals)
            if poisson_vals is not None:
                poisson_vals[i] = vals
            if poisson_fields is not None:
                poisson_fields[i] = noise
        noisy.append(image + noise)
    return ste_clamp(torch.stack(noisy))
