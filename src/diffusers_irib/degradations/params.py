"""The record of every random choice of one degradation, so it can be replayed as D(z; phi)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch


def _convert(value: Any, fn) -> Any:
    """Apply ``fn`` to every tensor inside a (nested) params dataclass or list, leaving the rest."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, list):  # a new list, so records written into a copy stay in the copy
        return [_convert(v, fn) for v in value]
    if dataclasses.is_dataclass(value):
        return type(value)(**{f.name: _convert(getattr(value, f.name), fn) for f in dataclasses.fields(value)})
    return value


def _to_plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if dataclasses.is_dataclass(value):
        names = [f.name for f in dataclasses.fields(value) if f.name not in _NOT_PLAIN]
        names = [n for n in names if not (n in _OMITTED_WHEN_NONE and getattr(value, n) is None)]
        return {name: _to_plain(getattr(value, name)) for name in names}
    return value


# Realised noise fields are image-sized: kept in memory for replay, left out of to_dict / JSON. A params
# object restored from JSON realises them again on its first application (identically on the same image).
_NOT_PLAIN = ("poisson_noise",)
# Added after records were written: left out while unset, so a fixed-scale record stays as it was.
_OMITTED_WHEN_NONE = ("scale",)


_POISSON_VALS = tuple(float(2**e) for e in range(9))


def _checked_vals(values: list[float | None] | None, n: int) -> list[float | None]:
    """Recorded Poisson vals from a dict: None (not recorded) or a power of two up to 256, one per sample."""
    if values is None:
        return [None] * n
    if len(values) != n or any(v is not None and v not in _POISSON_VALS for v in values):
        raise ValueError(f"poisson_vals must hold {n} entries, each null or a power of two up to 256, got {values}")
    return [None if v is None else float(v) for v in values]


class _ParamsMixin:
    def to(self, device=None, dtype=None):
        """Move (and for floating tensors, cast) every tensor; choices and seeds stay Python values."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None)

        return _convert(self, move)

    def select(self, indices: list[int]):
        """The parameters of a subset of the batch, in the given order."""
        index = torch.tensor(indices, dtype=torch.long)

        def pick(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return value[index.to(value.device)]
            if isinstance(value, list):
                return [value[i] for i in indices]
            if dataclasses.is_dataclass(value):
                return type(value)(**{f.name: pick(getattr(value, f.name)) for f in dataclasses.fields(value)})
            return value

        return pick(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists of numbers), for logging or JSON."""
        return _to_plain(self)


@dataclass
class StageParams(_ParamsMixin):
    """One blur -> resize -> noise (-> JPEG) stage, per sample."""

    kernel: torch.Tensor  # (B, K, K), zero-padded to the largest size of the config
    kernel_size: list[int]  # the taps actually used, for speed
    kernel_family: list[str]
    blur: list[bool]
    resize_scale: list[float]
    resize_mode: list[str]
    use_gaussian_noise: list[bool]
    gaussian_sigma: torch.Tensor  # (B,), on the 0..1 scale
    poisson_scale: torch.Tensor  # (B,)
    gray_noise: list[bool]
    noise_seed: list[int]
    jpeg_quality: torch.Tensor | None  # (B,); None for the second stage (its JPEG is in the final step)
    # Recorded by the first application (see DegradationParams), None until then: each Poisson sample's
    # vals = 2^ceil(log2(#levels)) and its realised noise, (C or 1, h, w) at this stage's size.
    poisson_vals: list[float | None] | None = None
    poisson_noise: list[torch.Tensor | None] | None = None


@dataclass
class FinalParams(_ParamsMixin):
    """The final step and the resize back to the input size, per sample."""

    sinc: list[bool]
    sinc_kernel: torch.Tensor  # (B, K, K); a delta where ``sinc`` is False
    kernel_size: list[int]
    resize_first: list[bool]  # [resize, sinc, JPEG] if True, else [JPEG, resize, sinc]
    resize_mode: list[str]
    jpeg_quality: torch.Tensor  # (B,)
    resize_back_mode: list[str]
    # Each sample's final scale when the config draws it (``scale_range``); None: the params' ``scale``.
    scale: list[int] | None = None


@dataclass
class DegradationParams(_ParamsMixin):
    """Everything :class:`RealESRGANDegradation` draws for one application to a batch.

    Applying the same params again reproduces the same operator, noise included, which is the
    degrade-back D(z; phi). Gaussian noise fields are drawn from per-sample seeds on the CPU (the same
    on every device). Poisson noise depends on the image it is drawn on: the first application realises
    it (counts by the inverse CDF of the seed's uniforms, so it is reproducible on any device) and
    records the noise field and its ``vals`` in the stage's ``poisson_noise`` / ``poisson_vals``; every
    later application adds the recorded field, as it adds the Gaussian one. So D(.; phi) is one fixed
    operator and D(y + d; phi) - D(y; phi) is as small with Poisson noise as with Gaussian noise.
    ``to_dict`` keeps ``vals`` but not the fields; restored params realise the fields again on their
    first application, with the recorded ``vals`` (identically if that image is the original).
    """

    height: int
    width: int
    scale: int  # the config's ``scale`` (with a ``scale_range``, its max); per sample: ``sample_scale``
    first: StageParams
    second: StageParams
    final: FinalParams

    def unrealised_noise(self) -> list[str]:
        """Where Poisson noise is drawn but not yet realised (``"first stage, sample 0"``, ...): such
        params are no fixed operator until applied to the image they degrade (see the class docstring)."""
        missing = []
        for name, stage in (("first", self.first), ("second", self.second)):
            fields = stage.poisson_noise or [None] * len(stage.use_gaussian_noise)
            missing += [
                f"{name} stage, sample {i}"
                for i, gaussian in enumerate(stage.use_gaussian_noise)
                if not gaussian and fields[i] is None
            ]
        return missing

    def sample_scale(self, i: int) -> int:
        """Sample ``i``'s final scale: drawn per sample with a ``scale_range``, else ``scale``."""
        return self.scale if self.final.scale is None else int(self.final.scale[i])

    @property
    def batch_size(self) -> int:
        return len(self.final.sinc)

    def __len__(self) -> int:
        return self.batch_size

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> DegradationParams:
        """Inverse of :meth:`to_dict` (tensors come back as float32 on the CPU)."""

        def tensor(value):
            return None if value is None else torch.tensor(value, dtype=torch.float32)

        def stage(d: dict[str, Any]) -> StageParams:
            d = dict(d)
            for key in ("kernel", "gaussian_sigma", "poisson_scale", "jpeg_quality"):
                d[key] = tensor(d[key])
            # records written before vals was recorded have none: the next application measures it
            d["poisson_vals"] = _checked_vals(d.get("poisson_vals"), len(d["noise_seed"]))
            d["poisson_noise"] = [None] * len(d["noise_seed"])
            return StageParams(**d)

        final = dict(params["final"])
        for key in ("sinc_kernel", "jpeg_quality"):
            final[key] = tensor(final[key])
        return cls(
            height=int(params["height"]),
            width=int(params["width"]),
            scale=int(params["scale"]),
            first=stage(params["first"]),
            second=stage(params["second"]),
            final=FinalParams(**final),
        )
