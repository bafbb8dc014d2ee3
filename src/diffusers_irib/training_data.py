"""Training images for the IRIB script: decode defensively, crop at random, and never crash on a bad file.

The HQ crops y are the only thing the data pipeline makes; every degradation happens later, batched
on the accelerator (``IRIBObjective.make_batch``). Two sources, one sample format:

- :class:`ImageRows` (map-style) over a ``datasets.Dataset`` (a local folder, or a Hub dataset that
  is not streamed). Its order comes from the sampler, so a resumed run continues the exact order.
- :class:`StreamedImageRows` (iterable) over a ``datasets.IterableDataset`` that is already shuffled
  and split across processes (:func:`open_image_dataset`).

A sample is ``{"pixel_values": (3, R, R) float in [0, 1], "sample_id": str, "skipped": {reason: n},
"converted": 0|1}``. Bad images (unreadable, truncated, too small) are skipped and counted in the
next sample that is yielded, so the counts reach the main process through the DataLoader, whatever
the number of workers. Grayscale, palette, CMYK, 16-bit and alpha images are converted to RGB and
counted as ``converted``.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = [
    "SKIP_REASONS",
    "BadImageError",
    "ImageRows",
    "StreamedImageRows",
    "collate_images",
    "decode_image",
    "open_image_dataset",
    "ResumableBatches",
    "random_crop",
    "resize_short_side",
]

#: Why an image was skipped; each reason is counted and logged.
SKIP_REASONS = ("unreadable", "truncated", "too_small")


class BadImageError(ValueError):
    """An image the run skips; ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _image_bytes(value: Any) -> tuple[Optional[bytes], Optional[str]]:
    """(bytes, path) of a ``datasets`` Image cell with ``decode=False``, raw bytes, or a path."""
    if isinstance(value, dict):
        return value.get("bytes"), value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    if isinstance(value, (str, os.PathLike)):
        return None, os.fspath(value)
    raise BadImageError("unreadable", f"unsupported image value of type {type(value).__name__}")


def decode_image(value: Any, min_size: int = 0) -> tuple[Image.Image, bool]:
    """Decode one image cell to an RGB PIL image; returns ``(image, converted)``.

    Raises :class:`BadImageError` for an unreadable or truncated file, or one whose short side is
    below ``min_size``. ``converted`` is True when the file was not 8-bit RGB (grayscale, palette,
    CMYK, 16-bit, alpha). EXIF orientation is applied, as a viewer shows the photo.
    """
    if isinstance(value, Image.Image):
        image = value
    else:
        data, path = _image_bytes(value)
        try:
            image = Image.open(io.BytesIO(data) if data is not None else path)
            image.load()  # decode now: a truncated file must fail here, not later in a worker
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, zlib/struct errors ...
            reason = "truncated" if "truncated" in str(error).lower() else "unreadable"
            raise BadImageError(reason, f"{path or 'bytes'}: {type(error).__name__}: {error}") from None
    if min(image.size) < min_size:
        raise BadImageError("too_small", f"{image.size[0]}x{image.size[1]} is below the {min_size}-pixel short side")
    transparent = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info  # alpha, or a colour key
    converted = image.mode != "RGB" or transparent
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit: keep the brightness (65535 -> 255)
        array = np.asarray(image, dtype=np.float64)
        sixteen_bit = image.mode.startswith("I;16") or array.max() > 255
        image = Image.fromarray(np.clip(np.round(array / (257 if sixteen_bit else 1)), 0, 255).astype(np.uint8))
    if transparent:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # alpha over white
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB"), converted


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    """``image`` resized (bicubic) so that its short side is ``size``; the long side keeps the aspect."""
    width, height = image.size
    scale = size / min(width, height)
    return image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BICUBIC)


def random_crop(
    image: Image.Image,
    resolution: int,
    rng: Optional[np.random.Generator] = None,
    random_flip: bool = False,
    center: bool = False,
) -> torch.Tensor:
    """A random ``resolution`` square of ``image`` as (3, R, R) float32 in [0, 1].

    The short side is resized up (bicubic) when it is smaller than ``resolution``; a larger image is
    cropped at full resolution, as OSEDiff's LSDIR crops are. With ``random_flip`` the crop is
    mirrored left-right with probability 1/2. ``center`` takes the centre square instead (``--center_crop``);
    ``rng`` is needed only for a random position or flip.
    """
    if min(image.size) < resolution:
        image = resize_short_side(image, resolution)
    width, height = image.size
    if center:
        left, top = (width - resolution) // 2, (height - resolution) // 2
    else:
        left = int(rng.integers(0, width - resolution + 1))
        top = int(rng.integers(0, height - resolution + 1))
    crop = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(crop, dtype=np.float32) / 255.0
    if random_flip and rng.random() < 0.5:
        array = array[:, ::-1]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _sample_id(value: Any, index: Optional[int]) -> str:
    """A file's path when known, else the row index, else a short hash of its bytes."""
    if isinstance(value, dict) and value.get("path"):
        return os.path.basename(value["path"])
    if index is not None:
        return f"row-{index}"
    data, _ = _image_bytes(value) if not isinstance(value, Image.Image) else (value.tobytes(), None)
    return "sha1-" + hashlib.sha1(data or b"").hexdigest()[:12]


class _Cropper:
    """Decode + crop with the settings of a run; shared by both dataset kinds."""

    def __init__(
        self,
        image_column: str,
        resolution: int,
        random_flip: bool,
        seed: int,
        min_size: int,
        center_crop: bool = False,
    ):
        self.image_column, self.resolution, self.random_flip = image_column, resolution, random_flip
        self.seed, self.min_size, self.center_crop = seed, min_size, center_crop

    def sample(self, row: dict, rng: np.random.Generator, index: Optional[int], skipped: Counter) -> dict:
        value = row[self.image_column]
        image, converted = decode_image(value, self.min_size)
        return {
            "pixel_values": random_crop(image, self.resolution, rng, self.random_flip, self.center_crop),
            "sample_id": _sample_id(value, index),
            "skipped": dict(skipped),
            "converted": int(converted),
        }


class ImageRows(torch.utils.data.Dataset):
    """Map-style crops of a ``datasets.Dataset``; index ``i`` is row ``i``.

    A bad row is replaced by the next good one (``i + 1``, ``i + 2`` ... wrapping around), so every
    index yields a sample and a batch keeps its size; the skips are counted in that sample. The
    crop of index ``i`` in epoch ``e`` is seeded by ``(seed, e, i)`` (plus the replacement's offset),
    so it does not depend on the worker that reads it or on where a run was resumed, and a
    replacement is not a copy of its neighbour's crop.
    """

    def __init__(
        self,
        rows: Any,
        image_column: str,
        resolution: int,
        random_flip: bool = False,
        seed: int = 0,
        min_size: int = 0,
        center_crop: bool = False,
    ):
        if len(rows) == 0:
            raise ValueError("the training dataset has no rows")
        self.rows = rows
        self.cropper = _Cropper(image_column, resolution, random_flip, seed, min_size, center_crop)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        skipped: Counter = Counter()
        for offset in range(len(self.rows)):
            i = (index + offset) % len(self.rows)
            rng = np.random.default_rng([self.cropper.seed, self.epoch, index, offset])
            try:
                return self.cropper.sample(self.rows[i], rng, i, skipped)
            except BadImageError as error:
                skipped[error.reason] += 1
        raise RuntimeError(f"no readable image in the training dataset ({dict(skipped)} skipped)")


class StreamedImageRows(torch.utils.data.IterableDataset):
    """Crops of a (shuffled, per-process) ``datasets.IterableDataset``; bad rows are skipped.

    The n-th row a process (or DataLoader worker) reads is cropped with ``(seed, epoch, rank, worker, n)``.
    Skips after the last good row of an epoch have no sample to be counted in and are not reported. ``state_dict`` /
    ``load_state_dict`` pass through to ``datasets``, which restores the shard positions but not
    the shuffle buffer (and, with DataLoader workers, only through a stateful loader).
    """

    def __init__(
        self,
        rows: Any,
        image_column: str,
        resolution: int,
        random_flip: bool = False,
        seed: int = 0,
        min_size: int = 0,
        rank: int = 0,
        center_crop: bool = False,
    ):
        self.rows = rows
        self.cropper = _Cropper(image_column, resolution, random_flip, seed, min_size, center_crop)
        self.rank, self.epoch = rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.rows.set_epoch(epoch)  # datasets reshuffles the shards and the buffer per epoch

    def state_dict(self) -> dict:
        return self.rows.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.rows.load_state_dict(state)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        skipped: Counter = Counter()
        yielded = 0
        for n, row in enumerate(self.rows):
            rng = np.random.default_rng([self.cropper.seed, self.epoch, self.rank, worker, n])
            try:
                sample = self.cropper.sample(row, rng, None, skipped)
            except BadImageError as error:
                skipped[error.reason] += 1
                continue
            skipped, yielded = Counter(), yielded + 1
            yield sample
        if not yielded and skipped:  # an epoch of bad rows would otherwise loop forever on nothing
            raise RuntimeError(f"no readable image in this process's part of the stream ({dict(skipped)} skipped)")


def collate_images(samples: list[dict]) -> dict:
    """Stack the crops; sum the skip and conversion counts of the batch."""
    skipped: Counter = Counter()
    for sample in samples:
        skipped.update(sample["skipped"])
    return {
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        "sample_ids": [s["sample_id"] for s in samples],
        "skipped": dict(skipped),
        "converted": sum(s["converted"] for s in samples),
    }


class ResumableBatches:
    """The training batches as ``(epoch, batch)``, epoch after epoch, resumable from a checkpoint.

    Register it with ``accelerator.register_for_checkpointing``: its state is the epoch and, for a
    stream read without DataLoader workers, the stream's position (``datasets`` keeps it; with workers
    it lives in their copies and is not saved). Map-style data resumes exactly: the epoch and the
    batches already used follow from the number of batches done, and a seeded sampler (accelerate's
    ``use_seedable_sampler``) repeats the epoch's order.
    """

    def __init__(self, dataset: Any, loader: Any, batch_size: int, process_index: int = 0):
        self.dataset, self.loader = dataset, loader
        self.batch_size, self.process_index = batch_size, process_index
        self.epoch, self.stream_state = 0, None

    @property
    def streaming(self) -> bool:
        return isinstance(self.dataset, StreamedImageRows)

    def state_dict(self) -> dict:
        state = {"epoch": self.epoch}
        if self.streaming and self.stream_state is not None:
            state["stream"] = self.stream_state
        return state

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state.get("epoch", 0))
        self.stream_state = state.get("stream")

    def restore_stream_position(self) -> bool:
        """After a checkpoint was loaded: move a stream to its saved position. False when a stream's
        position was not saved (DataLoader workers): it restarts from the beginning."""
        if self.streaming and self.stream_state is not None:
            self.dataset.load_state_dict(self.stream_state)
        return not self.streaming or self.stream_state is not None

    def iterate(self, batches_done: int = 0) -> Iterator[tuple[int, dict]]:
        """``(epoch, batch)`` forever, continuing after ``batches_done`` batches of map-style data (a
        stream continues from its restored position)."""
        from accelerate import skip_first_batches

        epoch, done = self.epoch, 0
        if not self.streaming:
            epoch, done = divmod(batches_done, len(self.loader))
        record_position = self.streaming and self.loader.num_workers == 0
        while True:
            self.epoch = epoch
            self.dataset.set_epoch(epoch)
            source = self.loader
            if not self.streaming:
                self.loader.set_epoch(epoch)
                source = skip_first_batches(self.loader, num_batches=done) if done else self.loader
                done = 0
            empty = True
            for batch in source:
                empty = False
                if record_position:
                    self.stream_state = self.dataset.state_dict()
                yield epoch, batch
            if empty:  # e.g. fewer readable images than one batch per process: never spin on nothing
                raise RuntimeError(
                    f"epoch {epoch} gave no batch of {self.batch_size} images on process {self.process_index}: "
                    "the dataset is too small or unreadable"
                )
            epoch += 1


def open_image_dataset(
    dataset_name: Optional[str] = None,
    dataset_config_name: Optional[str] = None,
    train_data_dir: Optional[str] = None,
    image_column: str = "image",
    streaming: bool = False,
    cache_dir: Optional[str] = None,
    revision: Optional[str] = None,
    token: Optional[str] = None,
) -> Any:
    """The ``train`` split of a Hub dataset or of a local image folder, images not decoded.

    The image column is cast to ``datasets.Image(decode=False)`` so rows carry bytes or paths and
    :func:`decode_image` decides what a bad file means (``datasets`` would raise inside its iterator).
    """
    import datasets

    if (dataset_name is None) == (train_data_dir is None):
        raise ValueError("give exactly one of dataset_name and train_data_dir")
    if train_data_dir is not None:
        if not os.path.isdir(train_data_dir):
            raise ValueError(f"--train_data_dir {train_data_dir!r} is not a folder")
        rows = datasets.load_dataset(
            "imagefolder", data_dir=train_data_dir, split="train", streaming=streaming, cache_dir=cache_dir
        )
    else:
        rows = datasets.load_dataset(
            dataset_name,
            dataset_config_name,
            split="train",
            streaming=streaming,
            cache_dir=cache_dir,
            revision=revision,
            token=token,
        )
    columns = rows.column_names if rows.column_names is not None else list(rows.features or {})
    if image_column not in columns:
        raise ValueError(f"--image_column {image_column!r} is not a column of the dataset; it has {columns}")
    return rows.cast_column(image_column, datasets.Image(decode=False))
