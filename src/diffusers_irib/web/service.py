"""One visitor's restore for the web demo: checks, optional degradation, tiling, output files.

Plain Python, no Gradio: the page's behaviour is tested without a browser. Whatever a visitor
sends (a file that is not an image, a huge or a 1 x 1 picture, out-of-range options through the
API) ends in a :class:`PageResult` whose message says what is wrong; nothing is raised to the
server, so the page never shows a traceback. An upload is measured from its header before a
pixel is decoded. Every file goes to the server's one temporary folder (:class:`WorkDir`).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..defaults import DEFAULT_LFO_STEPS
from ..utils.arguments import MAX_SEED
from ..utils.errors import EXPECTED_ERRORS, describe_failure, first_line
from ..utils.image_files import load_image, pil_to_tensor, tensor_to_pil, upright_size
from ..utils.pipeline_arguments import COLOR_FIXES, MAX_LFO_STEPS
from .workdir import WorkDir

DEGRADE_CHOICES = ("none", "LQ", "ELQ")  # the page's labels of irib-degrade's presets
TILE_CHOICES = ("auto", "off", "256", "512", "768", "1024")
MAX_UPSCALE = 4.0
MAX_PROMPT_CHARS = 300
NO_EXTRACTOR = "none"
EMPTY_PROMPT = "(empty prompt)"
OOM_HINT = "out of memory: choose a smaller tile size (e.g. 512), a smaller upscale, or fewer LFO steps"
TINY_NOTE = "UNTRAINED tiny pipeline (random weights): a noise-like result is expected; it shows the code path, not restoration quality."


@dataclass(frozen=True)
class WebLimits:
    """What one visitor may ask of a public server."""

    max_pixels: int = 2048 * 2048  # width x height of the upload, and of the result after upscale
    max_upload_mb: float = 20.0
    max_side: int = 0  # larger inputs are downscaled to this longer side first; 0: never
    auto_tile_above: int = 1024  # "auto" tiling: tiles of this size above it; 0: never
    concurrency: int = 1
    max_queue: int = 16

    def describe(self) -> str:
        parts = [f"images up to {self.max_upload_mb:g} MB and {megapixels(self.max_pixels)}"]
        if self.max_side:
            parts.append(f"larger than {self.max_side} px a side are downscaled to it first")
        if self.auto_tile_above:
            parts.append(f"above {self.auto_tile_above} px a side they are restored in tiles")
        return "; ".join(parts)


@dataclass
class RestoreOptions:
    """The page's controls (defaults as the page shows them)."""

    degrade: str = "none"
    degrade_seed: int = 0
    lfo_steps: int = DEFAULT_LFO_STEPS
    prompt: str = ""
    extractor: str = NO_EXTRACTOR
    color_fix: str = "adain"
    upscale: float = 1.0
    tile: str = "auto"


@dataclass
class PageResult:
    """Everything the page shows after pressing Restore; ``ok`` False: only ``message``."""

    ok: bool
    message: str
    comparison: tuple[str, str] | None = None  # (input as restored, restored), same size, PNG paths
    lq_proxies: list[tuple[str, str]] = field(default_factory=list)  # (PNG path, caption) per round
    prompts: str = ""
    download: str | None = None
    seconds: float | None = None


class Refused(ValueError):
    """An input or option the server will not restore; the message is shown in the page."""


def megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP" if pixels >= 100_000 else f"{pixels} pixels"


def safe_stem(path: str | os.PathLike) -> str:
    """The upload's name, reduced to a harmless file-name part, for the download's name."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem).strip("._")[:48]
    return stem or "image"


def tile_size_for(width: int, height: int, choice: str, auto_tile_above: int) -> int | None:
    """The tile size a restore of a width x height image (after upscale) uses; None: no tiling."""
    if choice == "off":
        return None
    if choice == "auto":
        return auto_tile_above if auto_tile_above and max(width, height) > auto_tile_above else None
    return int(choice)


def fit_side(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) scaled down to a longer side of max_side (unchanged if it fits or max_side is 0)."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def degrade(image, preset: str, seed: int):
    """A (3, H, W) tensor in [0, 1] through irib-degrade's LQ or ELQ preset, reproducible by seed."""
    import torch

    from ..degradations import DegradationConfig, RealESRGANDegradation

    config = DegradationConfig.from_preset(preset.lower())
    height, width = image.shape[-2:]
    if min(height, width) < config.scale:
        raise Refused(
            f"the {preset} degradation downscales by {config.scale}: the image must be at least "
            f"{config.scale} px a side, it is {width}x{height}"
        )
    generator = torch.Generator().manual_seed(seed)
    return RealESRGANDegradation(config)(image[None], generator=generator)[0]


class WebRestorer:
    """Restores one upload at a time for the page (a lock serialises the pipeline: it switches adapter
    sets on one UNet, so two calls must not interleave).

    Args:
        pipe: an IRIBRestorationPipeline with projector and restorer sets, or None when the models
            are missing (every restore then answers ``missing_message``).
        workdir: where every file goes.
        limits: the server's limits.
        extractors: prompt extractors that loaded at start-up, by name ("none" is always offered).
        tiny: the pipeline is the random tiny one (said in every result).
    """

    def __init__(
        self,
        pipe,
        workdir: WorkDir,
        limits: WebLimits | None = None,
        *,
        extractors: dict[str, Callable] | None = None,
        missing_message: str | None = None,
        tiny: bool = False,
    ):
        if pipe is None and not missing_message:
            raise ValueError("without a pipeline, give the missing_message the page shows instead")
        self.pipe = pipe
        self.workdir = workdir
        self.limits = limits or WebLimits()
        self.extractors = dict(extractors or {})
        self.missing_message = missing_message
        self.tiny = tiny
        self._lock = threading.Lock()

    @property
    def extractor_choices(self) -> list[str]:
        return [NO_EXTRACTOR, *self.extractors]

    @property
    def min_side(self) -> int:
        """The smallest side the pipeline restores (the AdaIN colour fix needs 2 pixels)."""
        return max(self.pipe.min_image_size, 2) if self.pipe is not None else 2

    # ------------------------------------------------------------------ the page's callback
    def restore(self, image_path: str | os.PathLike | None, options: RestoreOptions) -> PageResult:
        """Restore the uploaded file at ``image_path``; never raises for what a visitor can send."""
        if self.pipe is None:
            return PageResult(False, self.missing_message)
        if not image_path:
            return PageResult(False, "Upload an image (or pick the bundled sample) first.")
        try:
            self.check_options(options)
            return self._restore(Path(image_path), options)
        except Refused as err:
            return PageResult(False, str(err))

    def check_options(self, o: RestoreOptions) -> None:
        """The page's controls keep to these ranges; calls through the API may not."""
        if o.degrade not in DEGRADE_CHOICES:
            raise Refused(f"degrade first must be one of {', '.join(DEGRADE_CHOICES)}, got {o.degrade!r}")
        if not isinstance(o.degrade_seed, int) or not 0 <= o.degrade_seed <= MAX_SEED:
            raise Refused(f"the degradation seed must be an integer in [0, 2**63 - 1], got {o.degrade_seed!r}")
        if not isinstance(o.lfo_steps, int) or not 0 <= o.lfo_steps <= MAX_LFO_STEPS:
            raise Refused(f"LFO steps must be an integer in [0, {MAX_LFO_STEPS}], got {o.lfo_steps!r}")
        if not isinstance(o.prompt, str) or len(o.prompt) > MAX_PROMPT_CHARS:
            raise Refused(f"the prompt must be text of at most {MAX_PROMPT_CHARS} characters")
        if o.extractor not in self.extractor_choices:
            raise Refused(
                f"prompt extractor {o.extractor!r} is not loaded on this server; choose one of {', '.join(self.extractor_choices)}"
            )
        if o.color_fix not in COLOR_FIXES:
            raise Refused(f"colour fix must be one of {', '.join(COLOR_FIXES)}, got {o.color_fix!r}")
        if (
            not isinstance(o.upscale, (int, float))
            or not math.isfinite(o.upscale)
            or not 1 <= o.upscale <= MAX_UPSCALE
        ):
            raise Refused(f"upscale must be a number in [1, {MAX_UPSCALE:g}], got {o.upscale!r}")
        if o.tile not in TILE_CHOICES:
            raise Refused(f"tile size must be one of {', '.join(TILE_CHOICES)}, got {o.tile!r}")

    # ------------------------------------------------------------------ steps
    def read_upload(self, path: Path):
        """The upload as an RGB PIL image, refused from its file size and header before decoding."""
        name = path.name
        try:
            size = path.stat().st_size
        except OSError:
            raise Refused(f"the upload {name!r} is gone; upload it again") from None
        if size > self.limits.max_upload_mb * 1024 * 1024:
            raise Refused(
                f"{name!r} is {size / 2**20:.1f} MB; this server takes files up to {self.limits.max_upload_mb:g} MB"
            )
        try:
            width, height = upright_size(path)
        except ValueError as err:
            raise Refused(f"{name!r} is not an image this server can read: {reason(err, path)}") from None
        if width * height > self.limits.max_pixels:
            raise Refused(
                f"{name!r} is {width}x{height} px ({megapixels(width * height)}); this server restores images of at most "
                f"{megapixels(self.limits.max_pixels)}: downscale it first"
            )
        try:
            image = load_image(path)
        except ValueError as err:
            raise Refused(f"{name!r} is not an image this server can read: {reason(err, path)}") from None
        return image

    def check_size(self, width: int, height: int, upscale: float) -> tuple[int, int]:
        """The restored size, refused below the pipeline's smallest side or above max_pixels."""
        out_w, out_h = max(1, round(width * upscale)), max(1, round(height * upscale))
        floor = self.min_side
        if min(out_w, out_h) < floor:
            scaled = f" ({out_w}x{out_h} after upscale {upscale:g})" if upscale != 1 else ""
            raise Refused(
                f"the image is {width}x{height} px{scaled}: too small, the pipeline restores images of at least "
                f"{floor} px a side; use a larger image or a larger upscale"
            )
        if out_w * out_h > self.limits.max_pixels:
            raise Refused(
                f"upscale {upscale:g} would make {width}x{height} px into {out_w}x{out_h} ({megapixels(out_w * out_h)}), "
                f"more than this server's {megapixels(self.limits.max_pixels)}: lower the upscale"
            )
        return out_w, out_h

    def _restore(self, path: Path, o: RestoreOptions) -> PageResult:
        from PIL import Image

        notes = []
        image = self.read_upload(path)
        width, height = fit_side(*image.size, self.limits.max_side)
        if (width, height) != image.size:
            notes.append(
                f"downscaled from {image.size[0]}x{image.size[1]} to {width}x{height} px (this server restores at most "
                f"{self.limits.max_side} px a side)"
            )
            image = image.resize((width, height), Image.LANCZOS)
        out_w, out_h = self.check_size(width, height, o.upscale)
        x = pil_to_tensor(image)
        if o.degrade != "none":
            x = degrade(x, o.degrade, o.degrade_seed)
            notes.append(f"degraded first with the {o.degrade} preset, seed {o.degrade_seed}")
        tile = tile_size_for(out_w, out_h, o.tile, self.limits.auto_tile_above)
        prompt = o.prompt.strip() or None
        extractor = None if prompt is not None else self.extractors.get(o.extractor)
        start = time.perf_counter()
        try:
            with self._lock:
                out = self.pipe(
                    x,
                    prompt=prompt,
                    lfo_steps=o.lfo_steps,
                    prompt_extractor=extractor,
                    color_fix=None if o.color_fix == "none" else o.color_fix,
                    upscale=float(o.upscale),
                    tile_size=tile,
                    generator=None,
                    output_type="pt",
                    return_intermediates=True,
                )
        except EXPECTED_ERRORS as err:
            raise Refused(describe_failure(err, OOM_HINT, prefix="the restore failed: ")) from None
        seconds = time.perf_counter() - start
        try:
            return self.write_result(path, x, out, o, tile, seconds, notes)
        except OSError as err:  # a full disk or a removed temporary folder: say so in the page
            raise Refused(
                f"the image was restored but the result could not be written on the server "
                f"({err.strerror or first_line(err)}); try again later"
            ) from None

    def write_result(
        self, source: Path, x, out, o: RestoreOptions, tile: int | None, seconds: float, notes
    ) -> PageResult:
        """Write the PNGs the page shows into a fresh request folder and describe them (all or none)."""
        folder = self.workdir.new_request_dir()
        try:
            return self._write_files(folder, source, x, out, o, tile, seconds, notes)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # no half-written request folder stays behind
            raise

    def _write_files(self, folder: Path, source: Path, x, out, o, tile, seconds, notes) -> PageResult:
        from PIL import Image

        restored = tensor_to_pil(out.images[0])
        shown = tensor_to_pil(x)
        if shown.size != restored.size:  # upscaled: the slider compares images of one size
            shown = shown.resize(restored.size, Image.BICUBIC)
        stem = safe_stem(source)
        input_path, restored_path = folder / f"{stem}_input.png", folder / f"{stem}_restored.png"
        shown.save(input_path)
        restored.save(restored_path)
        prompts = out.prompts[0]  # the one image's prompts, by round
        proxies = []
        for k, lq in enumerate(out.intermediate_lq_images or [], start=1):
            lq_path = folder / f"{stem}_lq_proxy_round{k}.png"
            tensor_to_pil(lq[0]).save(lq_path)
            proxies.append((str(lq_path), f"round {k}: {prompts[k - 1] or EMPTY_PROMPT}"))
        return PageResult(
            ok=True,
            message=self.summary(restored.size, o, tile, seconds, notes),
            comparison=(str(input_path), str(restored_path)),
            lq_proxies=proxies,
            prompts=prompts_text(prompts, o, self.extractors),
            download=str(restored_path),
            seconds=seconds,
        )

    def summary(self, size: tuple[int, int], o: RestoreOptions, tile: int | None, seconds: float, notes) -> str:
        device = getattr(self.pipe, "device", "cpu")
        tiling = f"tiles of {tile} px" if tile else "no tiling"
        line = (
            f"**Restored** {size[0]}x{size[1]} px in **{seconds:.1f} s** on {device} "
            f"(LFO steps {o.lfo_steps}, colour fix {o.color_fix}, upscale {o.upscale:g}, {tiling})."
        )
        extra = "".join(f"\n- {note}" for note in notes)
        if self.tiny:
            extra += f"\n- {TINY_NOTE}"
        return line + ("\n" + extra if extra else "")


def reason(err: BaseException, path: Path) -> str:
    """An image reader's message without the server's temporary path in it."""
    text = first_line(err).replace(repr(str(path)), repr(path.name)).replace(str(path), path.name)
    return text.split(": ", 1)[1] if text.startswith("cannot read image") and ": " in text else text


def prompts_text(prompts: list[str], o: RestoreOptions, extractors: dict) -> str:
    """One line per round: the projector's rounds (the first from the input, each LFO step from the
    last LQ proxy), then the restorer's."""
    if o.prompt.strip():
        source = "your prompt, in every round"
    elif o.extractor in extractors:
        source = f"the {o.extractor} extractor"
    else:
        source = "no extractor: the empty prompt"
    lines = [f"Prompts ({source}):"]
    for k, prompt in enumerate(prompts[:-1], start=1):
        origin = "from the input" if k == 1 else f"LFO step {k - 1}, from LQ proxy {k - 1}"
        lines.append(f"projector round {k} ({origin}): {prompt or EMPTY_PROMPT}")
    lines.append(f"restorer (from LQ proxy {len(prompts) - 1}): {prompts[-1] or EMPTY_PROMPT}")
    return "\n".join(lines)
