"""IRIBRestorationPipeline: ELQ -> projector -> LQ proxy -> restorer -> HQ, with Look Forward Once.

One Stable Diffusion 2.1-base UNet/VAE/text encoder holds two LoRA adapter sets: the trainable
``projector`` f (extreme-LQ -> LQ) and the frozen OSEDiff-style ``restorer`` g (LQ -> HQ). Both are
one-step models (:mod:`diffusers_irib.one_step`); the active set is switched by peft adapter name.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import json
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from transformers import CLIPTextModel, CLIPTokenizer

from . import adapters, irib
from .defaults import DEFAULT_LFO_STEPS
from .file_utils import recover_interrupted_save, staged_folder
from .hub_utils import is_missing_local_path, offline_kwargs, source_problem
from .image_processing import (
    COLOR_FIXES,
    OUTPUT_TYPES,
    ImageInput,
    gaussian_window,
    pad_to_multiple,
    postprocess,
    tile_starts,
    to_tensors,
    upscale_image,
)
from .one_step import encode_text, predict_noise
from .prompts import check_prompts

ADAPTER_SETS_DIR = "adapter_sets"
_ADAPTER_SET_FILES = (adapters.ADAPTER_SET_CONFIG_NAME, adapters.LORA_WEIGHT_NAME)
# Hub options that describe the session (where the cache is, who is asking), not a repo's version.
_HUB_SESSION_KEYS = ("cache_dir", "token", "local_files_only", "proxies", "force_download")

RestorerCallable = Callable[[torch.Tensor, list[str]], torch.Tensor]

# Plain diffusers: ``DiffusionPipeline.from_pretrained(folder_or_repo, trust_remote_code=True)`` reads
# ``_class_name: [module, class]`` from model_index.json and imports ``<module>.py`` from the folder. The
# file save_pretrained writes there only imports this class from the installed package.
CUSTOM_PIPELINE_MODULE = "pipeline"
CUSTOM_PIPELINE_FILE = f"{CUSTOM_PIPELINE_MODULE}.py"
CUSTOM_PIPELINE_SOURCE = '''"""Loads diffusers-irib's IRIBRestorationPipeline for plain diffusers (pip install diffusers-irib):

    DiffusionPipeline.from_pretrained(this_folder_or_repo, trust_remote_code=True)

No code of the pipeline lives here: it is imported from the installed package.
"""

from diffusers_irib.pipeline_irib import IRIBRestorationPipeline  # noqa: F401
'''
# Set while IRIBRestorationPipeline.from_pretrained runs: it loads the saved adapter sets itself.
_LOADING_OWN_WAY: contextvars.ContextVar[bool] = contextvars.ContextVar("irib_loading_own_way", default=False)
#: ``upscale`` is bounded as irib-restore bounds ``--upscale``: a larger factor only allocates huge tensors.
MAX_UPSCALE = 16.0
#: The largest side (pixels) an image may reach through ``upscale`` > 1 (irib-restore's limit too).
MAX_UPSCALED_SIDE = 8192

logger = logging.getLogger(__name__)


class NonFiniteOutputError(RuntimeError):
    """A call produced NaN or infinite values; the message names the component where they first appeared."""


# One lock per UNet: adapter sets are switched on the shared UNet/VAE, so two calls (of one pipeline, or
# of two pipelines built on the same components) must never interleave.
_UNET_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_UNET_LOCKS_GUARD = threading.Lock()


def _unet_lock(unet: torch.nn.Module) -> threading.RLock:
    unet = adapters.unwrap_model(unet, "unet")
    with _UNET_LOCKS_GUARD:
        lock = _UNET_LOCKS.get(unet)
        if lock is None:
            lock = _UNET_LOCKS[unet] = threading.RLock()
        return lock


def _one_at_a_time(method: Callable) -> Callable:
    """Serialise the method with every other call that switches adapter sets on this pipeline's UNet."""

    @functools.wraps(method)
    def serialised(self, *args, **kwargs):
        with _unet_lock(self.unet):
            return method(self, *args, **kwargs)

    return serialised


def _python_number(value: Any) -> Any:
    """numpy integer and float scalars as Python numbers (``np.int64(2)`` is a fine ``lfo_steps``);
    anything else (numpy bools included) unchanged, for check_inputs to judge."""
    if isinstance(value, np.generic) and isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def _first_tensor(output: Any) -> Optional[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "to_tuple"):
        output = output.to_tuple()
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


@dataclass(frozen=True)
class _CallOptions:
    """One call's checked options, the same for every batch of same-size images it runs."""

    lfo_steps: int
    prompt_extractor: Optional[Callable[[list[PIL.Image.Image]], list[str]]]
    restorer: Optional[Union[RestorerCallable, DiffusionPipeline]]
    use_projector: bool
    upscale: float
    color_fix: Optional[str]
    tile_size: Optional[int]
    tile_overlap: Optional[int]
    return_intermediates: bool


@dataclass
class IRIBRestorationPipelineOutput(BaseOutput):
    """Output of :class:`IRIBRestorationPipeline`.

    Args:
        images: the restored (HQ) images.
        lq_images: the LQ proxies the restorer received (the projector's last output, or the input
            itself with ``use_projector=False``).
        prompts: per image, as ``images``: ``prompts[i]`` lists image i's prompts by round, the
            projector's rounds first (1 + ``lfo_steps``: from the input, then from each LQ proxy) and
            the restorer's last, so ``prompts[i][-1]`` is the prompt its restored image was made with.
        intermediate_lq_images: with ``return_intermediates=True``, per round: the LQ proxies of that
            projector round, each in the layout of ``lq_images`` (``intermediate_lq_images[k][i]`` is
            image i after round k + 1; the last round's proxies equal ``lq_images``).
    """

    images: Union[list[PIL.Image.Image], np.ndarray, torch.Tensor]
    lq_images: Union[list[PIL.Image.Image], np.ndarray, torch.Tensor]
    prompts: list[list[str]]
    intermediate_lq_images: Optional[list[Any]] = None


def _base_revision(kwargs: dict) -> dict:
    return {"revision": kwargs["revision"]} if kwargs.get("revision") is not None else {}


def _fast_hub_kwargs(name: str, hub_kwargs: dict, probe_file: str, what: str, error: type = OSError) -> dict:
    """For a name that would go to the Hub (no local path, a repo id's shape): when the Hub cannot be
    reached, use the cache at once (``local_files_only``) or fail at once, rather than after
    huggingface_hub's ~23 s of retries. ``error=OSError`` (the base) also refuses a missing local path
    here; adapter sets leave that to :func:`adapters.load_adapter_set`, which says the same."""
    if os.path.exists(name) or hub_kwargs.get("local_files_only"):
        return hub_kwargs
    if error is not OSError and is_missing_local_path(name):
        return hub_kwargs
    problem = source_problem(name, probe_file, what, **hub_kwargs)
    if problem is not None:
        raise error(problem)
    return {**hub_kwargs, **offline_kwargs()}  # the Hub does not answer: the cache, at once


def _saved_adapter_sets(pretrained_model_name_or_path: str, hub_kwargs: dict) -> dict[str, str]:
    """{role: local folder} of the sets that :meth:`IRIBRestorationPipeline.save_pretrained` put beside
    a pipeline, from a local folder or (only those files) from a Hub repo."""
    root = pretrained_model_name_or_path
    if not os.path.isdir(root):
        if not hub_kwargs.get("local_files_only"):
            hub_kwargs = {**hub_kwargs, **offline_kwargs()}
        try:
            root = snapshot_download(root, allow_patterns=[f"{ADAPTER_SETS_DIR}/*"], **hub_kwargs)
        except LocalEntryNotFoundError:  # offline, and the repo's adapter_sets/ were never downloaded
            return {}
    sets_dir = os.path.join(root, ADAPTER_SETS_DIR)
    if not os.path.isdir(sets_dir):
        return {}
    # Only folders that hold a set: a notebook's .ipynb_checkpoints, an editor's backup or any other
    # stray folder must not make a valid save unloadable (hidden ones are skipped without a word).
    found = {}
    for role in sorted(os.listdir(sets_dir)):
        folder = os.path.join(sets_dir, role)
        if role.startswith(".") or not os.path.isdir(folder):
            continue
        if not any(os.path.isfile(os.path.join(folder, name)) for name in _ADAPTER_SET_FILES):
            logger.warning("ignoring %s: it holds no adapter set (no %s)", folder, " or ".join(_ADAPTER_SET_FILES))
            continue
        found[role] = folder
    return found


class IRIBRestorationPipeline(DiffusionPipeline):
    r"""Extreme blind image restoration with a projector and a restorer on one SD2.1 base.

    Args:
        vae ([`AutoencoderKL`]): the SD VAE; adapter sets put LoRA on its encoder.
        text_encoder ([`CLIPTextModel`]): the SD2.1 OpenCLIP text encoder (frozen).
        tokenizer ([`CLIPTokenizer`]): its tokenizer.
        unet ([`UNet2DConditionModel`]): the SD2.1-base UNet holding the adapter sets.
        scheduler: any scheduler with ``alphas_cumprod`` (only the noise schedule is used).

    Threads: calls run one at a time. Every call switches adapter sets on the one shared UNet/VAE,
    so a call (and adding, loading, deleting or fusing a set) waits for the one in progress, also
    across pipelines built on the same UNet. For parallel restores use one pipeline (one UNet) per
    thread or device.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: Any,
    ):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        self.prompt_extractor: Optional[Callable[[list[PIL.Image.Image]], list[str]]] = None

    # ------------------------------------------------------------------ adapter sets
    @_one_at_a_time
    def add_adapter_set(
        self, role: str, rank: int = 4, alpha: Optional[float] = None, **kwargs
    ) -> adapters.AdapterSetConfig:
        """Add a fresh, trainable adapter set (UNet LoRA + VAE-encoder LoRA on OSEDiff's targets,
        rank 4, alpha 2 x rank, gaussian init) and activate it. See :func:`adapters.add_adapter_set`."""
        return adapters.add_adapter_set(self.unet, self.vae, role, rank=rank, alpha=alpha, **kwargs)

    @_one_at_a_time
    def load_adapter_set(
        self, path_or_repo_id: Union[str, os.PathLike], role: Optional[str] = None, **kwargs
    ) -> adapters.AdapterSetConfig:
        """Load an adapter set saved with :meth:`save_adapter_set` from a folder or a Hub repo id
        (frozen unless ``trainable=True``); ``role`` defaults to the role it was saved with. Other
        keyword arguments (``revision``, ``token``, ``cache_dir`` ...) go to ``hf_hub_download``."""
        probe = kwargs.get("weight_name", adapters.LORA_WEIGHT_NAME)
        kwargs = _fast_hub_kwargs(os.fspath(path_or_repo_id), kwargs, probe, "adapter set", error=ValueError)
        return adapters.load_adapter_set(self.unet, self.vae, path_or_repo_id, role=role, **kwargs)

    def save_adapter_set(
        self, save_directory: Union[str, os.PathLike], role: str, config: Optional[adapters.AdapterSetConfig] = None
    ) -> str:
        """Save one adapter set as a Hub-ready folder: ``pytorch_lora_weights.safetensors``
        (``unet.*``/``vae.*`` keys, the LoRA configs in its metadata), ``adapter_set_config.json``
        (``config`` may add e.g. the degradation preset a projector was trained on) and a model card."""
        return adapters.save_adapter_set(self.unet, self.vae, role, save_directory, config)

    @_one_at_a_time
    def delete_adapter_set(self, role: str) -> None:
        adapters.delete_adapter_set(self.unet, self.vae, role)

    def use_adapter_set(self, role: Optional[str]):
        """Context manager: run under ``role`` (None: the bare SD prior), then switch back; every
        set keeps its declared trainability, even if the body raises."""
        return adapters.use_adapter_set(self.unet, self.vae, role)

    @_one_at_a_time
    def set_adapter_set_trainable(self, role: str, trainable: bool) -> None:
        """Declare whether ``role``'s parameters are trained (kept through every switch)."""
        adapters.set_adapter_set_trainable(self.unet, self.vae, role, trainable)

    @_one_at_a_time
    def fuse_adapter_set(self, role: str = "restorer") -> None:
        """Merge a frozen set into the base weights for speed (as OSEDiff's ``--merge_and_unload_lora``).

        Outputs stay the same; until :meth:`unfuse_adapter_set` only that set can run, so fusing the
        restorer suits ``use_projector=False`` runs.
        """
        adapters.fuse_adapter_set(self.unet, self.vae, role)

    @_one_at_a_time
    def unfuse_adapter_set(self) -> None:
        adapters.unfuse_adapter_set(self.unet, self.vae)

    @property
    def adapter_sets(self) -> list[str]:
        return adapters.list_adapter_sets(self.unet)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: Union[str, os.PathLike],
        projector: Optional[Union[str, os.PathLike]] = None,
        restorer: Optional[Union[str, os.PathLike]] = None,
        prompt_extractor: Optional[Callable] = None,
        adapter_set_kwargs: Optional[dict] = None,
        **kwargs,
    ) -> IRIBRestorationPipeline:
        """Load the base model, then the adapter sets.

        Adapter sets saved beside a pipeline by :meth:`save_pretrained` (``adapter_sets/<role>/``, in a
        folder or a Hub repo) come back automatically; ``projector=`` / ``restorer=`` (folder or Hub
        repo id) load or replace them. The base's Hub options (``revision``, ``variant`` ...) are not
        sent to those other repos: ``adapter_set_kwargs`` (e.g. ``{"revision": ...}``) are, together
        with ``cache_dir``, ``token``, ``local_files_only``, ``proxies`` and ``force_download``.

        Every name that is no local path is checked first: with the Hub unreachable, the cache is used
        at once, and a name that is neither here nor cached fails at once, saying so.
        """
        name = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(name):  # a save killed half-way is rolled back first
            recover_interrupted_save(name)
        session = {k: kwargs[k] for k in _HUB_SESSION_KEYS if k in kwargs}
        explicit = {"projector": projector, "restorer": restorer}
        set_hub = {}
        for role, source in explicit.items():  # before the base loads: a typo answers in a second, not minutes
            if source is not None:
                hub = {**session, **(adapter_set_kwargs or {})}
                set_hub[role] = _fast_hub_kwargs(
                    os.fspath(source), hub, adapters.LORA_WEIGHT_NAME, f"{role}=", error=ValueError
                )
        base_hub = _fast_hub_kwargs(name, {**session, **_base_revision(kwargs)}, cls.config_name, "base model")
        if base_hub.get("local_files_only"):
            kwargs["local_files_only"] = session["local_files_only"] = True
        own_way = _LOADING_OWN_WAY.set(True)
        try:
            pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        finally:
            _LOADING_OWN_WAY.reset(own_way)
        saved = _saved_adapter_sets(name, {**session, **_base_revision(kwargs)})
        for role, folder in saved.items():
            if explicit.get(role) is None:
                pipe.load_adapter_set(folder, role=role)
        for role, source in explicit.items():
            if source is not None:  # projector= must hold a projector set (a restorer folder is a mistake)
                pipe.load_adapter_set(source, role=role, expected_role=role, **set_hub[role])
        pipe.prompt_extractor = prompt_extractor
        return pipe

    def register_to_config(self, **kwargs) -> None:
        """Also loads the saved adapter sets when plain diffusers built this pipeline.

        ``DiffusionPipeline.from_pretrained(folder_or_repo, trust_remote_code=True)`` calls ``__init__``
        and then records ``_name_or_path``: the one moment the pipeline learns where it came from.
        (:meth:`from_pretrained` of this class loads the sets itself, with its Hub options.)
        """
        super().register_to_config(**kwargs)
        name = kwargs.get("_name_or_path")
        if name is None or _LOADING_OWN_WAY.get() or getattr(self, "unet", None) is None or self.adapter_sets:
            return
        for role, folder in _saved_adapter_sets(os.fspath(name), {}).items():
            self.load_adapter_set(folder, role=role)

    def to_json_string(self) -> str:
        """model_index.json names the class as ``["pipeline", "IRIBRestorationPipeline"]``: plain diffusers
        then imports the ``pipeline.py`` that :meth:`save_pretrained` writes beside it."""
        text = super().to_json_string()
        if type(self) is not IRIBRestorationPipeline:  # a subclass is not what pipeline.py imports
            return text
        config = json.loads(text)
        config["_class_name"] = [CUSTOM_PIPELINE_MODULE, type(self).__name__]
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    @classmethod
    def _dict_from_json_file(cls, json_file: Union[str, os.PathLike]) -> dict:
        """This class reads its own model_index.json without importing ``pipeline.py`` (no remote code)."""
        config = super()._dict_from_json_file(json_file)
        if config.get("_class_name") == [CUSTOM_PIPELINE_MODULE, IRIBRestorationPipeline.__name__]:
            config["_class_name"] = IRIBRestorationPipeline.__name__
        return config

    def save_pretrained(self, save_directory: Union[str, os.PathLike], **kwargs) -> None:
        """Save the base components (never the peft-wrapped weights) and every adapter set beside
        them in ``adapter_sets/<role>/``; :meth:`from_pretrained` restores the same pipeline, and so
        does plain ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` through the
        small ``pipeline.py`` written beside model_index.json (it imports this installed package).

        The base weights are written from the models with their peft layers detached for the
        moment, so no parameter object changes (an optimiser keeps training the same tensors).
        """
        save_directory = os.fspath(save_directory)
        fused = adapters.fused_adapter_set(self.unet, self.vae)
        if fused is not None:  # checked before anything is written
            raise ValueError(f"adapter set {fused!r} is fused into the base weights; unfuse them before saving")
        if kwargs.get("push_to_hub"):  # diffusers names the repo after the folder it writes: the real one
            kwargs.setdefault("repo_id", os.path.basename(os.path.abspath(save_directory)))
        # Written whole into a sibling folder, then moved in under a journal: a failure or a kill leaves
        # the previous save loadable (the next load or save rolls an interrupted one back), and
        # adapter_sets/ is replaced as a whole, so a deleted set does not come back.
        with staged_folder(save_directory) as staging:
            for role in self.adapter_sets:
                self.save_adapter_set(os.path.join(staging, ADAPTER_SETS_DIR, role), role)
            if type(self) is IRIBRestorationPipeline:
                with open(os.path.join(staging, CUSTOM_PIPELINE_FILE), "w", encoding="utf-8") as f:
                    f.write(CUSTOM_PIPELINE_SOURCE)
            with adapters.detached_peft_layers(self.unet, self.vae):
                super().save_pretrained(staging, **kwargs)

    # ------------------------------------------------------------------ toggles
    def enable_vae_tiling(self) -> None:
        """Encode and decode large images tile by tile (diffusers' VAE tiling)."""
        self.vae.enable_tiling()

    def disable_vae_tiling(self) -> None:
        self.vae.disable_tiling()

    def enable_vae_slicing(self) -> None:
        self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        self.vae.disable_slicing()

    # ------------------------------------------------------------------ building blocks
    def encode_prompt(self, prompts: list[str], device: torch.device, cache: Optional[dict] = None) -> torch.Tensor:
        """CLIP last hidden states (B, 77, D) of each prompt; each distinct prompt is encoded once
        per ``cache`` (the pipeline passes one cache per call)."""
        cache = {} if cache is None else cache
        missing = [p for p in dict.fromkeys(prompts) if p not in cache]
        if missing:
            hidden = encode_text(self.tokenizer, self.text_encoder, missing, device)
            cache.update(zip(missing, hidden.unbind(0)))
        return torch.stack([cache[p] for p in prompts]).to(device)

    def _unet_noise(
        self, latents: torch.Tensor, prompt_embeds: torch.Tensor, tile_size: Optional[int], tile_overlap: int
    ) -> torch.Tensor:
        """The UNet's noise prediction at t=999, over overlapping latent tiles when the latent is
        larger than ``tile_size`` pixels, blended with a Gaussian window so no seams show."""
        latent_tile = None if tile_size is None else tile_size // self.vae_scale_factor
        h, w = latents.shape[-2:]
        if latent_tile is None or (h <= latent_tile and w <= latent_tile):
            return predict_noise(self.unet, latents, prompt_embeds)
        overlap = tile_overlap // self.vae_scale_factor
        th, tw = min(latent_tile, h), min(latent_tile, w)
        window = gaussian_window(th, tw, device=latents.device, dtype=torch.float32)
        noise = torch.zeros(latents.shape, device=latents.device, dtype=torch.float32)
        weight = torch.zeros((1, 1, h, w), device=latents.device, dtype=torch.float32)
        tiles = [(y, x) for y in tile_starts(h, th, overlap) for x in tile_starts(w, tw, overlap)]
        for y, x in self.progress_bar(tiles):
            tile = latents[..., y : y + th, x : x + tw]
            eps = predict_noise(self.unet, tile, prompt_embeds).float()
            noise[..., y : y + th, x : x + tw] += eps * window
            weight[..., y : y + th, x : x + tw] += window
        return noise / weight

    def _extract_prompts(
        self, extractor: Optional[Callable], images: torch.Tensor, user_prompt: Optional[list[str]]
    ) -> list[str]:
        """Prompts for one round: the user's, else the extractor's on ``images`` ([0, 1]), else ""."""
        if user_prompt is not None:
            return user_prompt
        if extractor is None:
            return [""] * images.shape[0]
        pil = postprocess(images, "pil")
        return check_prompts(extractor(pil), len(pil))

    # ------------------------------------------------------------------ inputs
    @property
    def min_image_size(self) -> int:
        """The smallest side (after ``upscale``) the pipeline restores: the VAE and then the UNet each
        downsample (8 x 8 = 64 px for SD2.1); below that the UNet sees less than one pixel per level."""
        unet_levels = len(self.unet.config.block_out_channels) - 1
        return self.vae_scale_factor * 2**unet_levels

    def check_image_sizes(self, images: list[torch.Tensor], upscale: float) -> None:
        """Refuse images whose upscaled short side is below :attr:`min_image_size` (they gave NaN), or
        whose long side ``upscale`` > 1 would take beyond ``MAX_UPSCALED_SIDE`` (a huge allocation)."""
        floor = max(self.min_image_size, 2)  # the AdaIN colour fix needs 2 pixels for a variance
        for i, t in enumerate(images):
            h, w = t.shape[-2:]
            size = (max(1, round(h * upscale)), max(1, round(w * upscale)))
            if min(size) < floor:
                scaled = f" ({size[1]}x{size[0]} after upscale={upscale:g})" if upscale != 1 else ""
                raise ValueError(
                    f"image {i} is {w}x{h}{scaled}: the pipeline restores images of at least {floor} px a side "
                    f"(the VAE downsamples by {self.vae_scale_factor}, the UNet by {floor // self.vae_scale_factor}); "
                    "upscale it first or pass a larger upscale"
                )
            if upscale > 1 and max(size) > MAX_UPSCALED_SIDE:
                raise ValueError(
                    f"image {i} is {w}x{h}: upscale={upscale:g} would make it {size[1]}x{size[0]}, more than "
                    f"{MAX_UPSCALED_SIDE} px a side; lower upscale"
                )

    @staticmethod
    def _per_image_generators(generator: Any, n: int) -> Any:
        """One generator for all images, or exactly one per image (as diffusers pipelines take them)."""
        if generator is None or isinstance(generator, torch.Generator):
            return generator
        if isinstance(generator, (list, tuple)) and all(isinstance(g, torch.Generator) for g in generator):
            if len(generator) != n:
                raise ValueError(
                    f"got {len(generator)} generators for {n} images: pass one per image, or a single one"
                )
            return list(generator)
        raise TypeError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")

    def check_inputs(
        self,
        prompt,
        lfo_steps,
        prompt_extractor,
        restorer,
        use_projector,
        upscale,
        color_fix,
        output_type,
        tile_size,
        tile_overlap,
    ) -> None:
        if not isinstance(lfo_steps, int) or isinstance(lfo_steps, bool) or lfo_steps < 0:
            raise ValueError(f"lfo_steps must be a non-negative integer, got {lfo_steps!r}")
        if lfo_steps > 0 and not use_projector:
            raise ValueError("lfo_steps > 0 refines the projector's prompt: it needs use_projector=True")
        if (
            prompt is not None
            and not isinstance(prompt, str)
            and not (isinstance(prompt, list) and all(isinstance(p, str) for p in prompt))
        ):
            raise TypeError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
        if prompt_extractor is not None and not callable(prompt_extractor):
            raise TypeError(
                f"prompt_extractor must be callable (list of PIL images -> list of str), got {type(prompt_extractor).__name__}"
            )
        if restorer is not None and not callable(restorer):
            raise TypeError(f"restorer must be a callable or a diffusers pipeline, got {type(restorer).__name__}")
        if not isinstance(use_projector, bool):
            raise TypeError(f"use_projector must be True or False, got {use_projector!r}")
        if not isinstance(upscale, (int, float)) or isinstance(upscale, bool) or not 0 < upscale <= MAX_UPSCALE:
            raise ValueError(f"upscale must be a finite number in (0, {MAX_UPSCALE:g}], got {upscale!r}")
        if color_fix is not None and color_fix not in COLOR_FIXES:
            raise ValueError(f"color_fix must be one of {sorted(COLOR_FIXES)} or None, got {color_fix!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if tile_size is None and tile_overlap is not None:
            raise ValueError(f"tile_overlap={tile_overlap!r} was given without tile_size: tiling is off")
        if tile_size is not None:
            if (
                not isinstance(tile_size, int)
                or tile_size < 8 * self.vae_scale_factor
                or tile_size % self.vae_scale_factor
            ):
                raise ValueError(
                    f"tile_size must be a multiple of {self.vae_scale_factor} and >= {8 * self.vae_scale_factor}, got {tile_size!r}"
                )
            if tile_overlap is not None and (not isinstance(tile_overlap, int) or not 0 <= tile_overlap < tile_size):
                raise ValueError(f"tile_overlap must be an integer in [0, tile_size), got {tile_overlap!r}")
        needed = (["projector"] if use_projector else []) + (["restorer"] if restorer is None else [])
        missing = [role for role in needed if role not in self.adapter_sets]
        if missing:
            raise ValueError(
                f"missing adapter set(s) {missing}; loaded: {self.adapter_sets or 'none'}. Load them with "
                "load_adapter_set(path, role) or from_pretrained(base, projector=..., restorer=...)"
            )

    # ------------------------------------------------------------------ call
    @_one_at_a_time
    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        prompt: Optional[Union[str, list[str]]] = None,
        lfo_steps: Optional[int] = None,
        prompt_extractor: Optional[Callable[[list[PIL.Image.Image]], list[str]]] = None,
        restorer: Optional[Union[RestorerCallable, DiffusionPipeline]] = None,
        use_projector: bool = True,
        upscale: float = 1.0,
        color_fix: Optional[str] = "adain",
        generator: Optional[Union[torch.Generator, list[torch.Generator]]] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        tile_size: Optional[int] = None,
        tile_overlap: Optional[int] = None,
        return_intermediates: bool = False,
    ):
        r"""Restore extremely degraded images.

        Args:
            image: PIL image (any mode), numpy array (H x W x C; uint8, uint16 or float in [0, 1]),
                torch tensor (3 x H x W or B x 3 x H x W, float in [0, 1]) or a list of them.
            prompt (`str` or `list[str]`, *optional*): used in every round; wins over extractors.
            lfo_steps (`int`, *optional*, defaults to 2; 0 with ``use_projector=False``): Look Forward
                Once refinements: each re-extracts the prompt from the current LQ proxy and re-runs the
                projector on the ELQ encoding. The default (``diffusers_irib.defaults.DEFAULT_LFO_STEPS``)
                is the paper's best row, Table 1 "LFO x2"; 0 is the single projector pass of its
                ablations. A round whose prompts equal the previous round's (a fixed ``prompt``, no
                extractor) reuses that round's LQ proxy instead of re-running the projector: it would
                be identical, so the default costs nothing extra then.
            prompt_extractor (*optional*): callable from a list of PIL images to a list of prompts;
                defaults to ``pipe.prompt_extractor``, else the empty prompt.
            restorer (*optional*): plug-and-play LQ -> HQ model replacing the built-in restorer: a
                callable ``(images B x 3 x H x W in [0, 1], prompts) -> images`` or a diffusers pipeline
                (called as ``restorer(prompt=..., image=..., output_type="pt")``).
            use_projector (`bool`, defaults to True): False runs the restorer alone on the input (the
                paper's "pretrained" baseline); no projector set is needed then.
            upscale (`float`, defaults to 1.0): bicubic pre-upscale of the input (the one-step models
                restore at the input resolution, as OSEDiff); at most 16, and an upscaled image at most
                8192 px a side (as irib-restore).
            color_fix (`str`, *optional*, defaults to "adain"): "adain", "wavelet" or None; matches the
                output's colours to the restorer's input.
            generator (`torch.Generator` or a list of them, *optional*): sample the VAE posterior with it
                (else the mean); a list gives image i its own generator i (one per image).
            output_type (`str`, defaults to "pil"): "pil", "np" or "pt".
            return_dict (`bool`, defaults to True): return an [`IRIBRestorationPipelineOutput`] rather
                than a tuple ``(images, lq_images, prompts)`` (``prompts[i]``: image i's prompt by round).
            tile_size (`int`, *optional*): pixel size of the overlapping latent tiles of the UNet for
                large images (VAE tiling is switched on for the call too); None disables tiling.
            tile_overlap (`int`, *optional*): overlap of neighbouring tiles in pixels; defaults to a
                third of ``tile_size`` (OSEDiff: 768 px tiles, 256 px overlap).
            return_intermediates (`bool`, defaults to False): also return every round's LQ proxy.

        Raises:
            NonFiniteOutputError: the projector or the restorer produced NaN/inf (e.g. NaN in the
                weights); the message names the component where the values first appeared.
        """
        # 1. Check inputs (numpy scalars count as the Python numbers they hold)
        lfo_steps, upscale, tile_size, tile_overlap = map(
            _python_number, (lfo_steps, upscale, tile_size, tile_overlap)
        )
        prompt_extractor = prompt_extractor if prompt_extractor is not None else self.prompt_extractor
        if lfo_steps is None:  # LFO refines the projector's prompt: nothing to refine without it
            lfo_steps = DEFAULT_LFO_STEPS if use_projector else 0
        self.check_inputs(
            prompt,
            lfo_steps,
            prompt_extractor,
            restorer,
            use_projector,
            upscale,
            color_fix,
            output_type,
            tile_size,
            tile_overlap,
        )
        if tile_size is not None and tile_overlap is None:
            tile_overlap = tile_size // 3 // self.vae_scale_factor * self.vae_scale_factor
        options = _CallOptions(
            lfo_steps=lfo_steps,
            prompt_extractor=prompt_extractor,
            restorer=restorer,
            use_projector=use_projector,
            upscale=upscale,
            color_fix=color_fix,
            tile_size=tile_size,
            tile_overlap=tile_overlap,
            return_intermediates=return_intermediates,
        )
        images = to_tensors(image)
        self.check_image_sizes(images, upscale)
        generators = self._per_image_generators(generator, len(images))
        if isinstance(prompt, list) and len(prompt) not in (1, len(images)):
            raise ValueError(f"prompt has {len(prompt)} entries for {len(images)} images")
        user_prompts = (
            None
            if prompt is None
            else [prompt] * len(images)
            if isinstance(prompt, str)
            else prompt * (len(images) // len(prompt))
        )

        # 2. Images of one size form one batch; others run one after another
        groups: dict[tuple[int, int], list[int]] = {}
        for i, t in enumerate(images):
            groups.setdefault(tuple(t.shape[-2:]), []).append(i)
        results: list[Optional[dict]] = [None] * len(images)
        for indices in groups.values():
            batch = torch.stack([images[i] for i in indices])
            user = None if user_prompts is None else [user_prompts[i] for i in indices]
            group_generator = generators if not isinstance(generators, list) else [generators[i] for i in indices]
            out = self._restore_batch(batch, user, group_generator, options)
            for j, i in enumerate(indices):  # per image: its outputs, and its entry of every round
                results[i] = {
                    "hq": out["hq"][j],
                    "lq": out["lq"][j],
                    "prompts": [round_prompts[j] for round_prompts in out["prompts"]],
                    "intermediates": [round_images[j] for round_images in out["intermediates"]],
                }
        self.maybe_free_model_hooks()

        # 3. Postprocess
        def gather(key):
            items = [r[key] for r in results]
            same_size = len({tuple(x.shape) for x in items}) == 1
            if same_size:
                return postprocess(torch.stack(items), output_type)
            return [postprocess(x[None], output_type)[0] for x in items]

        hq, lq = gather("hq"), gather("lq")
        prompts = [r["prompts"] for r in results]  # per image, by round
        intermediates = None
        if return_intermediates:
            steps = len(results[0]["intermediates"])
            intermediates = []
            for k in range(steps):
                items = [r["intermediates"][k] for r in results]
                same = len({tuple(x.shape) for x in items}) == 1
                intermediates.append(
                    postprocess(torch.stack(items), output_type)
                    if same
                    else [postprocess(x[None], output_type)[0] for x in items]
                )
        if not return_dict:
            return (hq, lq, prompts) + ((intermediates,) if return_intermediates else ())
        return IRIBRestorationPipelineOutput(
            images=hq, lq_images=lq, prompts=prompts, intermediate_lq_images=intermediates
        )

    def _restore_batch(
        self,
        batch: torch.Tensor,
        user_prompt: Optional[list[str]],
        generator: Optional[Union[torch.Generator, list[torch.Generator]]],
        options: _CallOptions,
    ) -> dict:
        """Steps 3-7 for one batch of same-size images (B, 3, H, W) in [0, 1]."""
        device = self._execution_device
        extractor, tile_size = options.prompt_extractor, options.tile_size
        # 3. Preprocess: upscale, pad to the VAE's multiple, map to [-1, 1]
        batch = upscale_image(batch, float(options.upscale))
        padded, (h, w) = pad_to_multiple(batch, self.vae_scale_factor)
        elq = (padded * 2 - 1).to(device)
        cache: dict[str, torch.Tensor] = {}
        prompts_per_round: list[list[str]] = []
        intermediates: list[torch.Tensor] = []
        tiling = tile_size is not None and max(padded.shape[-2:]) > tile_size
        vae_tiling_before = getattr(self.vae, "use_tiling", False)
        if tiling:
            self.vae.enable_tiling()
        rounds = (options.lfo_steps + 1 if options.use_projector else 0) + 1

        def crop01(x: torch.Tensor) -> torch.Tensor:
            """[-1, 1] padded -> [0, 1] at the input size."""
            return ((x.float() + 1) / 2).clamp(0, 1)[..., :h, :w]

        def noise_fn(latents: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
            return self._unet_noise(latents, embeds, tile_size, options.tile_overlap)

        alphas = self.scheduler.alphas_cumprod
        try:
            with self.progress_bar(total=rounds) as progress, self._watch_non_finite() as first_non_finite:
                # 4. Projector f with Look Forward Once (eqs. 20-22): encode the ELQ image once;
                #    round 1 is prompted from the ELQ image, every later round from the last LQ proxy
                lq = elq
                if options.use_projector:
                    elq_latents = irib.encode_elq(self.unet, self.vae, elq, generator)
                    for _ in range(options.lfo_steps + 1):
                        prompts = self._extract_prompts(extractor, crop01(lq), user_prompt)
                        # f is deterministic given its ELQ encoding and prompt: a round whose prompts
                        # repeat the last round's (fixed prompt, no extractor) would repeat its LQ proxy
                        if not prompts_per_round or prompts != prompts_per_round[-1]:
                            embeds = self.encode_prompt(prompts, device, cache)
                            lq = irib.project(self.unet, self.vae, alphas, elq_latents, embeds, noise_fn=noise_fn)
                        prompts_per_round.append(prompts)
                        if options.return_intermediates:
                            intermediates.append(crop01(lq).cpu())
                        progress.update()
                    self._check_finite(lq, "projector", first_non_finite)
                # 5. Restorer g on the LQ proxy, prompted from the LQ proxy
                lq01 = crop01(lq)
                prompts = self._extract_prompts(extractor, lq01, user_prompt)
                prompts_per_round.append(prompts)
                if options.restorer is None:
                    embeds = self.encode_prompt(prompts, device, cache)
                    out = irib.restore(self.unet, self.vae, alphas, lq, embeds, generator, noise_fn=noise_fn)
                    self._check_finite(out.images, "restorer", first_non_finite)
                    hq01 = crop01(out.images)
                else:
                    hq01 = self._run_plug_and_play(options.restorer, lq01, prompts)
                progress.update()
        finally:
            if tiling and not vae_tiling_before:
                self.vae.disable_tiling()

        # 6. Colour fix against the restorer's input, as OSEDiff does
        hq01, lq01 = hq01.float().cpu(), lq01.cpu()
        if options.color_fix is not None:
            reference = lq01
            if reference.shape[-2:] != hq01.shape[-2:]:
                reference = torch.nn.functional.interpolate(reference, size=hq01.shape[-2:], mode="bicubic").clamp(
                    0, 1
                )
            hq01 = COLOR_FIXES[options.color_fix](hq01, reference)
        return {"hq": hq01, "lq": lq01, "prompts": prompts_per_round, "intermediates": intermediates}

    # ------------------------------------------------------------------ non-finite values
    @contextlib.contextmanager
    def _watch_non_finite(self) -> Iterator[dict]:
        """Note the first component whose output holds NaN/inf (and the adapter set it ran under), so a
        non-finite result can name where it came from (NaN in the weights gave black images silently)."""
        first: dict = {}
        parts = (
            ("text encoder", self.text_encoder),
            ("VAE encoder", getattr(self.vae, "encoder", None)),
            ("UNet", self.unet),
            ("VAE decoder", getattr(self.vae, "decoder", None)),
        )

        def watch(component: str):
            def hook(module, inputs, output) -> None:
                tensor = None if first else _first_tensor(output)
                if tensor is not None and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    first["component"] = component
                    if component != "text encoder":
                        with contextlib.suppress(ValueError):
                            first["role"] = adapters.get_active_adapter_set(self.unet, self.vae)

            return hook

        handles = [m.register_forward_hook(watch(name)) for name, m in parts if isinstance(m, torch.nn.Module)]
        try:
            yield first
        finally:
            for handle in handles:
                handle.remove()

    @staticmethod
    def _check_finite(images: torch.Tensor, stage: str, first: dict) -> None:
        """Refuse a stage's non-finite output, naming the component where NaN/inf first appeared."""
        if bool(torch.isfinite(images).all()):
            return
        where = "in the pipeline's own arithmetic"
        if first:
            role = first.get("role")
            under = f" (adapter set {role!r})" if role else " (no adapter set)" if "role" in first else ""
            where = f"first in the {first['component']}{under}"
        raise NonFiniteOutputError(
            f"the {stage} produced NaN/inf values, {where}: its weights (the base model or an adapter set) hold "
            "non-finite values, or its dtype overflowed (try float32). No image is returned"
        )

    @staticmethod
    def _run_plug_and_play(restorer, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Run a user restorer on the LQ proxy (B x 3 x H x W in [0, 1])."""
        if isinstance(restorer, DiffusionPipeline):
            accepts = inspect.signature(restorer.__call__).parameters
            kwargs = {"output_type": "pt"} if "output_type" in accepts else {}
            out = restorer(prompt=prompts, image=images, **kwargs)
            out = out.images if hasattr(out, "images") else out[0]
        else:
            out = restorer(images, prompts)
        if isinstance(out, (list, tuple)) and out and isinstance(out[0], PIL.Image.Image):
            out = torch.stack([t for item in out for t in to_tensors(item)])
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[1] != 3:
            raise TypeError(
                "restorer must return a B x 3 x H x W tensor in [0, 1] (or a list of PIL images), "
                f"got {type(out).__name__}{tuple(out.shape) if isinstance(out, torch.Tensor) else ''}"
            )
        if out.shape[0] != images.shape[0]:
            raise ValueError(f"restorer returned {out.shape[0]} images for {images.shape[0]} inputs")
        return check_restorer_output(out).to(images.device).clamp(0, 1)


#: How far outside [0, 1] a plug-and-play restorer's output may stray (rounding) before it is refused.
RESTORER_RANGE_TOLERANCE = 1e-2


def check_restorer_output(images: torch.Tensor) -> torch.Tensor:
    """A plug-and-play restorer's images must be finite floats in [0, 1]: anything else would be
    silently turned into garbage (uint8 into {0, 1}, 0..255 clamped to white, NaN passed on)."""
    if not images.is_floating_point():
        raise TypeError(f"restorer returned {images.dtype} images; return floats in [0, 1] (divide uint8 by 255)")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"restorer returned NaN or infinite values ({int((~torch.isfinite(images)).sum())} of them)")
    low, high = float(images.min()), float(images.max())
    if low < -RESTORER_RANGE_TOLERANCE or high > 1 + RESTORER_RANGE_TOLERANCE:
        hint = " (0..255? divide by 255)" if high > 2 else " ([-1, 1]? map with (x + 1) / 2)" if low < -0.5 else ""
        raise ValueError(f"restorer returned values in [{low:.3g}, {high:.3g}], expected [0, 1]{hint}")
    return images
