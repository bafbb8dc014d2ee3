"""Prompt extractors: images in, one text prompt per image out.

IRIB conditions both one-step models on a prompt read from an image: first from the ELQ input,
then ("Look Forward Once") again from the intermediate LQ proxy. Anything that maps a list of PIL
images to a list of strings can serve (:class:`PromptExtractor`); this module provides:

* :class:`FixedPrompt` / :class:`EmptyPrompt`: no model at all.
* :class:`CLIPTagger`: zero-shot tags from a transformers CLIP model over a tag vocabulary.
* :class:`CaptionPrompt`: an image-to-text captioner from transformers (BLIP by default).
* :class:`RAMTagger`: RAM / DAPE, the tagger OSEDiff and SeeSR use (optional ``ram`` package).

Taggers format their output the way OSEDiff's ``test_osediff.py`` does,
``f"{', '.join(tags)}, {user_prompt},"`` (:func:`format_osediff_prompt`).

All extractors accept a ``list`` (or ``tuple``) of ``PIL.Image.Image`` (converted to RGB), raise
``TypeError`` naming the argument for anything else, and return ``[]`` for an empty list. Callers
validate an extractor's output with :func:`check_prompts`.

Heavy imports (transformers, the ``ram`` package) happen lazily, so ``import`` stays cheap.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import (
    Any,
    Optional,
    Protocol,
    Union,
    runtime_checkable,
)

import numpy as np
import torch
from PIL import Image

__all__ = [
    "CLIPTagger",
    "CaptionPrompt",
    "DEFAULT_CAPTION_MODEL",
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_TAGS",
    "EmptyPrompt",
    "FixedPrompt",
    "PromptExtractor",
    "RAMTagger",
    "RAM_INSTALL_HINT",
    "check_prompts",
    "format_osediff_prompt",
]

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
DEFAULT_CAPTION_MODEL = "Salesforce/blip-image-captioning-base"

RAM_INSTALL_HINT = (
    "RAMTagger needs the `ram` package from recognize-anything: "
    "`pip install git+https://github.com/xinyu1205/recognize-anything.git` "
    "(for DAPE, the RAM-with-LoRA variant `ram.models.ram_lora` shipped in the `ram/` folder of "
    "the OSEDiff / SeeSR repositories must be importable instead). It also needs checkpoint files: "
    "the RAM Swin-L weights `ram_swin_large_14m.pth` (Hugging Face space xinyu1205/recognize-anything) "
    "and, for DAPE, `DAPE.pth` (links in the OSEDiff / SeeSR READMEs)."
)

PathLike = Union[str, "os.PathLike[str]"]

#: ~150 common scene / object / material tags for :class:`CLIPTagger` (RAM's vocabulary has 4,585).
DEFAULT_TAGS: tuple[str, ...] = (
    # people and animals
    "person", "man", "woman", "child", "baby", "face", "crowd", "portrait", "hand",
    "dog", "cat", "horse", "bird", "cow", "sheep", "fish", "insect", "butterfly", "flower",
    # nature and landscape
    "sky", "cloud", "sun", "sunset", "night sky", "moon", "star", "mountain", "hill", "rock",
    "cliff", "desert", "sand", "beach", "sea", "ocean", "wave", "lake", "river", "waterfall",
    "water", "snow", "ice", "forest", "tree", "grass", "field", "meadow", "garden", "leaf",
    "plant", "bush", "fog", "rain", "autumn", "winter",
    # urban and architecture
    "city", "street", "road", "sidewalk", "bridge", "building", "skyscraper", "house", "tower",
    "church", "castle", "temple", "wall", "window", "door", "roof", "stairs", "fence", "sign",
    "street light", "traffic light", "park", "market", "shop", "station", "harbor", "village",
    # vehicles
    "car", "bus", "truck", "bicycle", "motorcycle", "train", "boat", "ship", "airplane",
    # indoor and objects
    "room", "kitchen", "bedroom", "living room", "office", "table", "chair", "sofa", "bed",
    "lamp", "shelf", "book", "bottle", "cup", "plate", "bowl", "food", "fruit", "vegetable",
    "bread", "cake", "computer", "phone", "screen", "clock", "toy", "bag", "box", "vase",
    "painting", "picture frame", "curtain", "carpet", "mirror",
    # clothing and accessories
    "shirt", "dress", "hat", "glasses", "shoe", "jacket", "umbrella",
    # materials and textures
    "wood", "stone", "metal", "glass", "brick", "fabric", "paper", "concrete", "fur", "feather",
    # space, science, misc
    "galaxy", "planet", "rocket", "astronaut", "space", "microscope image", "text", "logo",
    "pattern", "art", "sculpture", "statue",
    # photographic attributes
    "close-up", "indoor", "outdoor", "daylight", "night", "shadow", "light", "colorful",
    "black and white",
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Protocol, formatting, validation
# --------------------------------------------------------------------------------------------


@runtime_checkable
class PromptExtractor(Protocol):
    """A callable from a list of PIL images to a list of prompts, one per image.

    ``isinstance(x, PromptExtractor)`` only checks that ``x`` is callable (Python protocols do not
    check signatures); use :func:`check_prompts` on the output.
    """

    def __call__(self, images: list[Image.Image]) -> list[str]: ...


def format_osediff_prompt(tags: Sequence[str], user_prompt: str = "", *, exact: bool = True) -> str:
    """OSEDiff's prompt string: ``"tag1, tag2, ..., user prompt,"``.

    ``exact=True`` (default) reproduces ``test_osediff.py``'s ``f"{tags}, {user_prompt},"``
    (tags joined by ``", "``) character for character, including its edge cases:

    * ``(["cat", "sofa"], "")`` -> ``"cat, sofa, ,"`` (OSEDiff's string with no user prompt),
    * ``([], "sharp")`` -> ``", sharp,"`` and ``([], "")`` -> ``", ,"``.

    ``exact=False`` drops empty parts instead: ``"cat, sofa,"``, ``"sharp,"`` and ``""``.
    Tags and the user prompt are stripped of surrounding whitespace; empty tags are dropped.
    """
    if isinstance(tags, str) or not isinstance(tags, (list, tuple)):
        raise TypeError(f"tags must be a list of strings, got {type(tags).__name__}")
    for i, tag in enumerate(tags):
        if not isinstance(tag, str):
            raise TypeError(f"tags[{i}] must be a string, got {type(tag).__name__}")
    if not isinstance(user_prompt, str):
        raise TypeError(f"user_prompt must be a string, got {type(user_prompt).__name__}")
    clean = [t.strip() for t in tags if t.strip()]
    user_prompt = user_prompt.strip()
    if exact:
        return f"{', '.join(clean)}, {user_prompt},"
    parts = clean + ([user_prompt] if user_prompt else [])
    return f"{', '.join(parts)}," if parts else ""


def check_prompts(prompts: Any, n: int) -> list[str]:
    """Validate an extractor's output: a ``list`` of ``n`` strings. Returns it unchanged.

    Raises ``TypeError`` (not a list, or an item that is not a string, with its index) or
    ``ValueError`` (wrong length).
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(prompts, list):
        raise TypeError(f"prompt extractor must return a list of strings, got {type(prompts).__name__}")
    if len(prompts) != n:
        raise ValueError(f"prompt extractor returned {len(prompts)} prompts for {n} images (expected one per image)")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompt extractor output [{i}] must be a string, got {type(p).__name__}")
    return prompts


def _as_rgb_images(images: Any, name: str = "images") -> list[Image.Image]:
    """Check ``images`` is a list/tuple of PIL images; return them converted to RGB."""
    if isinstance(images, Image.Image):
        raise TypeError(f"{name} must be a list of PIL images, got a single PIL image (wrap it: [image])")
    if not isinstance(images, (list, tuple)):
        raise TypeError(f"{name} must be a list of PIL images, got {type(images).__name__}")
    out = []
    for i, im in enumerate(images):
        if not isinstance(im, Image.Image):
            raise TypeError(f"{name}[{i}] must be a PIL.Image.Image, got {type(im).__name__}")
        out.append(im if im.mode == "RGB" else im.convert("RGB"))
    return out


def _check_positive_int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _module_device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of a model's first floating parameter (CPU / fp32 if none)."""
    params = model.parameters() if hasattr(model, "parameters") else ()
    for p in params:
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def _load_model_and_processor(
    model_cls, processor_cls, pretrained_model_name_or_path, device, dtype, load_kwargs: dict
):
    """A frozen, eval-mode transformers model and its processor, from a folder or a Hub id."""
    path = os.fspath(pretrained_model_name_or_path)
    model = model_cls.from_pretrained(path, **load_kwargs, **({"dtype": dtype} if dtype is not None else {}))
    processor = processor_cls.from_pretrained(path, **load_kwargs)
    if device is not None:
        model.to(device)
    return model.eval().requires_grad_(False), processor


def _split_kwargs(cls: type, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``kwargs`` into the constructor's options and the rest (for ``from_pretrained``)."""
    params = inspect.signature(cls.__init__).parameters
    reserved = {"self", "model", "processor", "tags"}
    own = {k: v for k, v in kwargs.items() if k in params and k not in reserved}
    rest = {k: v for k, v in kwargs.items() if k not in own}
    return own, rest


def _features(output: Any) -> torch.Tensor:
    """Embeddings from ``get_image_features`` / ``get_text_features``.

    transformers 5 returns a ``BaseModelOutputWithPooling`` whose ``pooler_output`` holds the
    *projected* embeddings; transformers 4 returned the tensor itself.
    """
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot read embeddings from {type(output).__name__}")


# --------------------------------------------------------------------------------------------
# Model-free extractors
# --------------------------------------------------------------------------------------------


class FixedPrompt:
    """The same prompt for every image."""

    def __init__(self, prompt: str):
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        self.prompt = prompt

    def __call__(self, images: list[Image.Image]) -> list[str]:
        return [self.prompt] * len(_as_rgb_images(images))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.prompt!r})"


class EmptyPrompt(FixedPrompt):
    """The empty prompt ``""`` for every image (the unconditional prompt)."""

    def __init__(self):
        super().__init__("")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# --------------------------------------------------------------------------------------------
# CLIP zero-shot tagger
# --------------------------------------------------------------------------------------------


class CLIPTagger:
    """Zero-shot tags from a transformers CLIP model over a tag vocabulary.

    Each tag ``t`` is embedded as the text ``template.format(t)`` (``"a photo of a {}."``); these
    text embeddings are computed once, on first use, and cached (recomputed only if the model
    moves to another device / dtype). For each image, the cosine similarities to all tags, times
    CLIP's ``logit_scale.exp()``, are softmaxed over the vocabulary. Tags with probability
    ``>= threshold`` (when set) are kept, at most ``top_k`` of them (when set), best first; the
    prompt is ``format_osediff_prompt(tags, user_prompt, exact=exact_format)``.

    ``processor`` is a ``CLIPProcessor`` (image processor + tokenizer); alternatively pass an image
    processor as ``processor`` and the tokenizer as ``tokenizer``. Runs under ``torch.no_grad``,
    in batches of ``batch_size`` images (and tags), on the model's device and dtype.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        tags: Sequence[str],
        threshold: Optional[float] = None,
        top_k: Optional[int] = 5,
        template: str = "a photo of a {}.",
        user_prompt: str = "",
        batch_size: int = 32,
        *,
        tokenizer: Any = None,
        exact_format: bool = True,
    ):
        if isinstance(tags, str) or not isinstance(tags, (list, tuple)):
            raise TypeError(f"tags must be a list of strings, got {type(tags).__name__}")
        if len(tags) == 0:
            raise ValueError("tags must not be empty")
        for i, tag in enumerate(tags):
            if not isinstance(tag, str) or not tag.strip():
                raise ValueError(f"tags[{i}] must be a non-empty string, got {tag!r}")
        if len(set(tags)) != len(tags):
            raise ValueError("tags must not contain duplicates")
        if threshold is not None:
            if (
                not isinstance(threshold, (int, float))
                or isinstance(threshold, bool)
                or not math.isfinite(threshold)
                or not 0.0 <= threshold <= 1.0
            ):
                raise ValueError(f"threshold must be None or a number in [0, 1], got {threshold!r}")
        if top_k is not None:
            _check_positive_int(top_k, "top_k")
        if not isinstance(template, str) or "{}" not in template:
            raise ValueError(f"template must be a string containing '{{}}', got {template!r}")
        if not isinstance(user_prompt, str):
            raise TypeError(f"user_prompt must be a string, got {type(user_prompt).__name__}")
        _check_positive_int(batch_size, "batch_size")
        for attr in ("get_image_features", "get_text_features", "logit_scale"):
            if not hasattr(model, attr):
                raise TypeError(f"model must be a CLIP model (CLIPModel); it has no {attr!r}")

        self.image_processor = getattr(processor, "image_processor", processor)
        self.tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", None)
        if self.tokenizer is None:
            raise TypeError("processor has no tokenizer: pass a CLIPProcessor or tokenizer=...")
        if not callable(self.image_processor):
            raise TypeError(f"processor must be a CLIPProcessor or image processor, got {type(processor).__name__}")

        self.model = model
        self.processor = processor
        self.tags: tuple[str, ...] = tuple(t.strip() for t in tags)
        self.threshold = None if threshold is None else float(threshold)
        self.top_k = top_k
        self.template = template
        self.user_prompt = user_prompt
        self.batch_size = batch_size
        self.exact_format = exact_format
        self._text_embeds: Optional[torch.Tensor] = None
        self._text_key: Optional[tuple[torch.device, torch.dtype]] = None

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: PathLike = DEFAULT_CLIP_MODEL,
        tags: Optional[Sequence[str]] = None,
        device: Union[str, torch.device, None] = None,
        dtype: Optional[torch.dtype] = None,
        **kwargs: Any,
    ) -> CLIPTagger:
        """Load ``CLIPModel`` + ``AutoProcessor`` from a hub id or a local directory.

        ``tags=None`` uses :data:`DEFAULT_TAGS`. ``device=None`` leaves the model where
        ``from_pretrained`` puts it (CPU); ``dtype=None`` keeps transformers' default.
        ``kwargs`` that are constructor options (``threshold``, ``top_k``, ``template``,
        ``user_prompt``, ``batch_size``, ``exact_format``) go to the constructor; the rest
        (``revision``, ``cache_dir``, ``local_files_only``, ``token``, ...) to both
        ``from_pretrained`` calls.
        """
        from transformers import AutoProcessor, CLIPModel

        own, load_kwargs = _split_kwargs(cls, kwargs)
        model, processor = _load_model_and_processor(
            CLIPModel, AutoProcessor, pretrained_model_name_or_path, device, dtype, load_kwargs
        )
        return cls(model, processor, tags=list(DEFAULT_TAGS if tags is None else tags), **own)

    # -- scoring ------------------------------------------------------------------------------

    @torch.no_grad()
    def _text_embeddings(self) -> torch.Tensor:
        device, dtype = _module_device_dtype(self.model)
        if self._text_embeds is not None and self._text_key == (device, dtype):
            return self._text_embeds
        texts = [self.template.format(t) for t in self.tags]
        text_config = getattr(getattr(self.model, "config", None), "text_config", None)
        max_length = getattr(text_config, "max_position_embeddings", None)
        chunks = []
        for batch in _batches(texts, self.batch_size):
            enc = self.tokenizer(
                list(batch),
                padding=True,
                truncation=max_length is not None,
                max_length=max_length,
                return_tensors="pt",
            )
            enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            chunks.append(_features(self.model.get_text_features(**enc)).float())
        embeds = torch.cat(chunks)
        self._text_embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        self._text_key = (device, dtype)
        return self._text_embeds

    @torch.no_grad()
    def scores(self, images: list[Image.Image]) -> torch.Tensor:
        """Per-image probabilities over :attr:`tags`, shape ``(len(images), len(tags))``, fp32 CPU."""
        images = _as_rgb_images(images)
        if not images:
            return torch.zeros(0, len(self.tags))
        device, dtype = _module_device_dtype(self.model)
        text = self._text_embeddings()
        scale = self.model.logit_scale.detach().float().exp().to(device)
        out = []
        for batch in _batches(images, self.batch_size):
            pixels = self.image_processor(images=list(batch), return_tensors="pt")["pixel_values"]
            feats = _features(
                self.model.get_image_features(pixel_values=pixels.to(device=device, dtype=dtype))
            ).float()
            feats = feats / feats.norm(dim=-1, keepdim=True)
            out.append((scale * feats @ text.t()).softmax(dim=-1).cpu())
        return torch.cat(out)

    def tag(self, images: list[Image.Image]) -> list[list[str]]:
        """The selected tags of each image, best first (before formatting)."""
        probs = self.scores(images)
        result = []
        for row in probs:
            values, order = torch.sort(row, descending=True, stable=True)
            if self.threshold is not None:
                order = order[values >= self.threshold]
            if self.top_k is not None:
                order = order[: self.top_k]
            result.append([self.tags[i] for i in order.tolist()])
        return result

    def __call__(self, images: list[Image.Image]) -> list[str]:
        return [format_osediff_prompt(t, self.user_prompt, exact=self.exact_format) for t in self.tag(images)]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self.tags)} tags, threshold={self.threshold}, top_k={self.top_k}, "
            f"template={self.template!r}, user_prompt={self.user_prompt!r})"
        )


# --------------------------------------------------------------------------------------------
# Captioner
# --------------------------------------------------------------------------------------------


class CaptionPrompt:
    """A caption from a transformers image-to-text model (BLIP by default) as the prompt.

    ``model`` has ``generate`` (e.g. ``BlipForConditionalGeneration``, or any model loaded by
    ``AutoModelForImageTextToText`` that captions from ``processor(images=..., text=prefix)``
    alone); ``processor`` is its processor (``BlipProcessor`` / ``AutoProcessor``). Decoding is
    greedy unless ``generate_kwargs`` say otherwise, limited to ``max_new_tokens``, decoded with
    ``skip_special_tokens=True`` and stripped.

    ``prefix`` (e.g. ``"a photography of"``) is passed as text to condition the caption; BLIP
    returns the whole sequence, so the caption starts with the prefix. ``osediff_format=True``
    returns ``format_osediff_prompt([caption], user_prompt, exact=exact_format)``; ``user_prompt``
    is only meaningful then (a ``ValueError`` otherwise).
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        max_new_tokens: int = 30,
        prefix: Optional[str] = None,
        osediff_format: bool = False,
        user_prompt: str = "",
        batch_size: int = 8,
        *,
        exact_format: bool = True,
        generate_kwargs: Optional[dict[str, Any]] = None,
    ):
        if not callable(getattr(model, "generate", None)):
            raise TypeError(f"model must have a generate() method, got {type(model).__name__}")
        if not callable(processor):
            raise TypeError(f"processor must be callable (a transformers processor), got {type(processor).__name__}")
        _check_positive_int(max_new_tokens, "max_new_tokens")
        _check_positive_int(batch_size, "batch_size")
        if prefix is not None and not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string or None, got {type(prefix).__name__}")
        if not isinstance(user_prompt, str):
            raise TypeError(f"user_prompt must be a string, got {type(user_prompt).__name__}")
        if user_prompt and not osediff_format:
            raise ValueError("user_prompt is only used with osediff_format=True")
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.prefix = prefix or None
        self.osediff_format = bool(osediff_format)
        self.user_prompt = user_prompt
        self.batch_size = batch_size
        self.exact_format = exact_format
        self.generate_kwargs = dict(generate_kwargs or {})

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: PathLike = DEFAULT_CAPTION_MODEL,
        device: Union[str, torch.device, None] = None,
        dtype: Optional[torch.dtype] = None,
        **kwargs: Any,
    ) -> CaptionPrompt:
        """Load ``AutoModelForImageTextToText`` + ``AutoProcessor`` from a hub id or local dir.

        (transformers 5 removed ``AutoModelForVision2Seq``; BLIP maps to
        ``BlipForConditionalGeneration`` under ``AutoModelForImageTextToText``.) Constructor
        options in ``kwargs`` go to the constructor, the rest to both ``from_pretrained`` calls.
        """
        from transformers import AutoModelForImageTextToText, AutoProcessor

        own, load_kwargs = _split_kwargs(cls, kwargs)
        model, processor = _load_model_and_processor(
            AutoModelForImageTextToText, AutoProcessor, pretrained_model_name_or_path, device, dtype, load_kwargs
        )
        return cls(model, processor, **own)

    def _decode(self, ids: torch.Tensor) -> list[str]:
        decoder = self.processor if hasattr(self.processor, "batch_decode") else self.processor.tokenizer
        return [" ".join(t.split()) for t in decoder.batch_decode(ids, skip_special_tokens=True)]

    @torch.no_grad()
    def caption(self, images: list[Image.Image]) -> list[str]:
        """The raw captions (no OSEDiff formatting)."""
        images = _as_rgb_images(images)
        device, dtype = _module_device_dtype(self.model)
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": False, **self.generate_kwargs}
        out: list[str] = []
        for batch in _batches(images, self.batch_size):
            text = [self.prefix] * len(batch) if self.prefix else None
            inputs = self.processor(images=list(batch), text=text, return_tensors="pt")
            inputs = {
                k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device))
                for k, v in inputs.items()
                if isinstance(v, torch.Tensor)
            }
            out.extend(self._decode(self.model.generate(**inputs, **kwargs)))
        return out

    def __call__(self, images: list[Image.Image]) -> list[str]:
        captions = self.caption(images)
        if self.osediff_format:
            return [format_osediff_prompt([c], self.user_prompt, exact=self.exact_format) for c in captions]
        return captions

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({type(self.model).__name__}, max_new_tokens={self.max_new_tokens}, "
            f"prefix={self.prefix!r}, osediff_format={self.osediff_format})"
        )


# --------------------------------------------------------------------------------------------
# RAM / DAPE
# --------------------------------------------------------------------------------------------

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _import_ram(need_lora: bool) -> tuple[Callable[..., Any], Callable[..., Any], bool]:
    """``(builder, inference_ram, is_lora_variant)`` from the ``ram`` package, lazily."""
    try:
        import ram  # noqa: F401
        from ram import inference_ram
    except ImportError as err:
        raise ImportError(RAM_INSTALL_HINT) from err
    try:
        from ram.models.ram_lora import (
            ram as build,  # OSEDiff / SeeSR: RAM + LoRA, loads DAPE
        )

        return build, inference_ram, True
    except ImportError as err:
        if need_lora:
            raise ImportError(
                "DAPE weights need the RAM-with-LoRA model `ram.models.ram_lora` (the `ram/` folder of "
                "the OSEDiff or SeeSR repository); the installed `ram` package (upstream "
                "recognize-anything) only has plain RAM. " + RAM_INSTALL_HINT
            ) from err
    try:
        from ram.models import ram as build
    except ImportError as err:
        raise ImportError("the installed `ram` package has no `ram.models.ram` builder. " + RAM_INSTALL_HINT) from err
    return build, inference_ram, False


def _split_ram_tags(text: str) -> list[str]:
    # Upstream RAM joins tags with " | "; OSEDiff's RAMLora with ", ".
    sep = "|" if "|" in text else ","
    return [t.strip() for t in text.split(sep) if t.strip()]


class RAMTagger:
    """RAM (Recognize Anything, Swin-L 384) or DAPE tags, called the way OSEDiff calls them.

    DAPE is RAM with LoRA layers fine-tuned on degraded images: OSEDiff builds it with
    ``ram(pretrained=ram_path, pretrained_condition=dape_path, image_size=384, vit='swin_l')``
    from ``ram.models.ram_lora``. Without ``dape_path`` this is plain RAM (``ram.models.ram``
    from upstream recognize-anything works for that). Images are mapped to [0, 1], resized to
    ``image_size`` squared (bilinear, antialiased), ImageNet-normalised, and tagged with
    ``ram.inference_ram``. The tag string (``", "``- or ``" | "``-separated, in RAM's tag-list
    order) becomes ``format_osediff_prompt(tags, user_prompt, exact=exact_format)``.

    The ``ram`` package is imported here, lazily: ``ImportError`` with install instructions when
    it is missing; ``FileNotFoundError`` naming a checkpoint path that does not exist.
    """

    def __init__(
        self,
        ram_path: PathLike,
        dape_path: Optional[PathLike] = None,
        *,
        user_prompt: str = "",
        exact_format: bool = True,
        image_size: int = 384,
        vit: str = "swin_l",
        device: Union[str, torch.device, None] = None,
        dtype: Optional[torch.dtype] = None,
        batch_size: int = 8,
    ):
        if not isinstance(user_prompt, str):
            raise TypeError(f"user_prompt must be a string, got {type(user_prompt).__name__}")
        _check_positive_int(image_size, "image_size")
        _check_positive_int(batch_size, "batch_size")
        build, self._inference, self.is_lora_variant = _import_ram(need_lora=dape_path is not None)
        for name, path in (("ram_path", ram_path), ("dape_path", dape_path)):
            if path is not None and not os.path.isfile(os.fspath(path)):
                raise FileNotFoundError(f"{name}: checkpoint file not found: {os.fspath(path)!r}")
        kwargs: dict[str, Any] = {"pretrained": os.fspath(ram_path), "image_size": image_size, "vit": vit}
        if self.is_lora_variant:
            kwargs["pretrained_condition"] = os.fspath(dape_path) if dape_path is not None else ""
        model = build(**kwargs)
        model.eval()
        if hasattr(model, "requires_grad_"):
            model.requires_grad_(False)
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        self.model = model
        self.ram_path = os.fspath(ram_path)
        self.dape_path = None if dape_path is None else os.fspath(dape_path)
        self.user_prompt = user_prompt
        self.exact_format = exact_format
        self.image_size = image_size
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls,
        ram_path: PathLike,
        dape_path: Optional[PathLike] = None,
        device: Union[str, torch.device, None] = None,
        dtype: Optional[torch.dtype] = None,
        **kwargs: Any,
    ) -> RAMTagger:
        """Same as the constructor (local checkpoint files only), for symmetry with the others."""
        return cls(ram_path, dape_path, device=device, dtype=dtype, **kwargs)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """``(B, 3, image_size, image_size)`` ImageNet-normalised, on the model's device/dtype."""
        device, dtype = _module_device_dtype(self.model)
        size = (self.image_size, self.image_size)
        mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        batch = []
        for im in images:
            x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            batch.append(x)
        x = (torch.cat(batch) - mean) / std
        return x.to(device=device, dtype=dtype)

    @torch.no_grad()
    def tag(self, images: list[Image.Image]) -> list[list[str]]:
        """The tags of each image, in RAM's order (before formatting)."""
        images = _as_rgb_images(images)
        out: list[list[str]] = []
        for batch in _batches(images, self.batch_size):
            result = self._inference(self.preprocess(list(batch)), self.model)
            if isinstance(result, tuple):  # upstream: (english, chinese)
                result = result[0]
            if isinstance(result, str):
                result = [result]
            if not isinstance(result, (list, tuple)) or len(result) != len(batch):
                raise RuntimeError(
                    f"ram.inference_ram returned {type(result).__name__}, expected {len(batch)} strings"
                )
            out.extend(_split_ram_tags(str(r)) for r in result)
        return out

    def __call__(self, images: list[Image.Image]) -> list[str]:
        return [format_osediff_prompt(t, self.user_prompt, exact=self.exact_format) for t in self.tag(images)]

    def __repr__(self) -> str:
        kind = "DAPE" if self.dape_path else "RAM"
        return f"{type(self).__name__}({kind}, ram_path={self.ram_path!r}, dape_path={self.dape_path!r})"
