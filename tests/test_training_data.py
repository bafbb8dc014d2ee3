"""The training-image pipeline: defensive decoding, random crops, bad-row skipping and its counts.

Real photos come from scikit-image's bundled data. The expected values are computed here from the
source arrays (pixel slices, palettes, the offsets an identically seeded generator draws), never by
calling the module a second time. The ``datasets`` cache goes to ``tmp_path``.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from diffusers_irib.training_data import (
    SKIP_REASONS,
    BadImageError,
    ImageRows,
    ResumableBatches,
    StreamedImageRows,
    collate_images,
    decode_image,
    open_image_dataset,
    random_crop,
)

RES = 32  # crop side used with the folder datasets
MIN_SIZE = 24  # the tiny image (16 px) is below it, every photo (48 px short side) above


def encode(array_or_image, fmt: str = "PNG", **kwargs) -> bytes:
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def shrink(array: np.ndarray, short: int) -> np.ndarray:
    """``array`` resized so its short side is ``short`` (keeps the aspect ratio)."""
    h, w = array.shape[:2]
    size = (round(w * short / min(h, w)), round(h * short / min(h, w)))
    return np.asarray(Image.fromarray(array).resize(size, Image.BICUBIC))


def as_uint8(crop: torch.Tensor) -> np.ndarray:
    """(3, R, R) float in [0, 1] -> (R, R, 3) uint8, exact for crops of 8-bit images."""
    return np.rint(crop.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def offsets(rng: np.random.Generator, width: int, height: int, resolution: int) -> tuple[int, int, bool]:
    """(left, top, flip draw fires) as a crop of a ``width`` x ``height`` image consumes ``rng``."""
    left = int(rng.integers(0, width - resolution + 1))
    top = int(rng.integers(0, height - resolution + 1))
    return left, top, bool(rng.random() < 0.5)


# --------------------------------------------------------------------------------------------------
# A folder of good and bad files, in the sorted order imagefolder lists them:
#   0 a_astronaut.png  good (RGB)
#   1 b_camera.png     good (grayscale: converted)
#   2 c_trunc.jpg      truncated (first half of a JPEG)
#   3 d_notimage.png   unreadable (text with a .png name)
#   4 e_coffee.png     good
#   5 f_tiny.png       too small (16 px < MIN_SIZE), the last row: its replacement wraps to row 0
# --------------------------------------------------------------------------------------------------
GOOD = ("a_astronaut.png", "b_camera.png", "e_coffee.png")
BAD = {"c_trunc.jpg": "truncated", "d_notimage.png": "unreadable", "f_tiny.png": "too_small"}


def write_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    Image.fromarray(shrink(data.astronaut(), 48)).save(folder / "a_astronaut.png")
    Image.fromarray(shrink(data.camera(), 48)).save(folder / "b_camera.png")
    jpeg = encode(shrink(data.chelsea(), 48), "JPEG", quality=90)
    (folder / "c_trunc.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "d_notimage.png").write_text("this is not an image\n")
    Image.fromarray(shrink(data.coffee(), 48)).save(folder / "e_coffee.png")
    Image.fromarray(shrink(data.rocket(), 16)[:16, :16]).save(folder / "f_tiny.png")
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("photos") / "train")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hf_datasets_cache"))


@pytest.fixture(autouse=True)
def _datasets_cache_in_tmp(tmp_path, monkeypatch):
    """Calls without ``cache_dir`` (even streaming ones write lock files) use ``tmp_path``, not ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets_default_cache"))


@pytest.fixture(scope="module")
def rows(folder, cache_dir):
    return open_image_dataset(train_data_dir=str(folder), cache_dir=cache_dir)


# ---------------------------------------------------------------------------------------------- decode


def test_decode_rgb_png_is_unchanged():
    source = data.astronaut()
    image, converted = decode_image(encode(source))
    assert image.mode == "RGB" and converted is False
    np.testing.assert_array_equal(np.asarray(image), source)


def test_decode_grayscale_becomes_rgb():
    source = data.camera()
    image, converted = decode_image(encode(source))
    assert image.mode == "RGB" and converted is True
    out = np.asarray(image)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], source)


def test_decode_palette_becomes_rgb_through_the_palette():
    palette_image = Image.fromarray(shrink(data.astronaut(), 64)).quantize(colors=32)
    assert palette_image.mode == "P"
    indices = np.asarray(palette_image)
    palette = np.array(palette_image.getpalette(), dtype=np.uint8).reshape(-1, 3)
    image, converted = decode_image(encode(palette_image))
    assert image.mode == "RGB" and converted is True
    np.testing.assert_array_equal(np.asarray(image), palette[indices])


def test_decode_rgba_is_composited_over_white():
    rgb = shrink(data.coffee(), 40)
    alpha = np.full(rgb.shape[:2], 255, dtype=np.uint8)
    alpha[0, 0] = 0  # fully transparent
    alpha[0, 1] = 128  # half transparent, over black
    rgb = rgb.copy()
    rgb[0, 1] = (0, 0, 0)
    rgba = np.dstack([rgb, alpha])
    image, converted = decode_image(encode(rgba))
    out = np.asarray(image)
    assert image.mode == "RGB" and converted is True
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert np.all(np.abs(out[0, 1].astype(int) - 127) <= 1)  # 255 * (1 - 128 / 255)
    np.testing.assert_array_equal(out[1:], rgb[1:])  # opaque pixels keep their colour


def test_decode_palette_with_transparency_is_composited_over_white():
    palette_image = Image.fromarray(shrink(data.astronaut(), 32)).quantize(colors=16)
    indices = np.asarray(palette_image)
    transparent = int(indices[0, 0])
    palette = np.array(palette_image.getpalette(), dtype=np.uint8).reshape(-1, 3)
    image, converted = decode_image(encode(palette_image, transparency=transparent))
    expected = palette[indices]
    expected[indices == transparent] = 255
    assert converted is True
    np.testing.assert_array_equal(np.asarray(image), expected)


def test_decode_16bit_grayscale_becomes_rgb():
    source = data.camera()  # 0 ... 255 as 16 bits: v * 257 spans 0 ... 65535
    sixteen = Image.fromarray(source.astype(np.uint16) * 257)
    assert sixteen.mode == "I;16"
    image, converted = decode_image(encode(sixteen))
    out = np.asarray(image)
    assert image.mode == "RGB" and converted is True
    for channel in range(3):
        assert np.abs(out[..., channel].astype(int) - source).max() <= 1


def test_decode_dark_16bit_image_keeps_its_brightness():
    dark = data.camera().astype(np.uint16) * 4  # at most 1020 of 65535: nearly black
    image, _ = decode_image(encode(Image.fromarray(dark)))
    assert np.asarray(image).max() <= 1020 / 257 + 1


def test_decode_cmyk_becomes_rgb():
    source = shrink(data.astronaut(), 64)
    cmyk = Image.fromarray(source).convert("CMYK")
    image, converted = decode_image(encode(cmyk, "TIFF"))  # lossless: C = 255 - R, K = 0
    assert image.mode == "RGB" and converted is True
    np.testing.assert_array_equal(np.asarray(image), source)
    image, converted = decode_image(encode(cmyk, "JPEG", quality=95))
    assert image.mode == "RGB" and converted is True
    assert np.abs(np.asarray(image).astype(int) - source).mean() < 3


def test_decode_truncated_jpeg():
    jpeg = encode(data.astronaut(), "JPEG", quality=90)
    with pytest.raises(BadImageError) as info:
        decode_image(jpeg[: len(jpeg) // 2])
    assert info.value.reason == "truncated"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("payload", [np.random.default_rng(0).bytes(4096), b"just some text\n"])
def test_decode_garbage_is_unreadable(payload, tmp_path):
    with pytest.raises(BadImageError) as info:
        decode_image(payload)
    assert info.value.reason == "unreadable"
    path = tmp_path / "fake.png"
    path.write_bytes(payload)
    with pytest.raises(BadImageError) as info:
        decode_image({"bytes": None, "path": str(path)})
    assert info.value.reason == "unreadable"
    assert "fake.png" in str(info.value)


def test_decode_missing_file_and_unsupported_value_are_unreadable(tmp_path):
    for value in (str(tmp_path / "missing.png"), 12345, {"bytes": None, "path": None}):
        with pytest.raises(BadImageError) as info:
            decode_image(value)
        assert info.value.reason == "unreadable"


def test_decode_too_small_names_the_size():
    small = encode(np.zeros((12, 30, 3), dtype=np.uint8))
    with pytest.raises(BadImageError) as info:
        decode_image(small, min_size=16)
    assert info.value.reason == "too_small"
    assert "30x12" in str(info.value) and "16" in str(info.value)
    image, _ = decode_image(small, min_size=12)  # the short side equal to min_size is kept
    assert image.size == (30, 12)
    assert set(SKIP_REASONS) == {"unreadable", "truncated", "too_small"}


def test_decode_accepts_every_value_form(tmp_path):
    source = shrink(data.chelsea(), 40)
    png = encode(source)
    path = tmp_path / "chelsea.png"
    path.write_bytes(png)
    forms = [
        {"bytes": png, "path": None},
        {"bytes": None, "path": str(path)},
        {"bytes": png, "path": "ignored-when-bytes-are-given.png"},
        png,
        bytearray(png),
        str(path),
        path,
        Image.fromarray(source),
    ]
    for value in forms:
        image, converted = decode_image(value)
        assert converted is False, type(value)
        np.testing.assert_array_equal(np.asarray(image), source)


def test_decode_applies_exif_orientation():
    source = shrink(data.chelsea(), 60)  # 60 high, 90 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer rotates 90 degrees clockwise
    jpeg = encode(source, "JPEG", quality=95, exif=exif.tobytes())
    image, _ = decode_image(jpeg)
    assert image.size == (60, 90)  # (width, height) transposed
    out = np.asarray(image).astype(float)
    clockwise = np.rot90(source, k=-1).astype(float)
    counter_clockwise = np.rot90(source, k=1).astype(float)
    assert np.abs(out - clockwise).mean() < 4
    assert np.abs(out - counter_clockwise).mean() > 4 * np.abs(out - clockwise).mean()


# ------------------------------------------------------------------------------------------ random_crop


def test_random_crop_is_the_slice_at_the_drawn_offsets():
    source = data.chelsea()  # 300 high, 451 wide: swapped axes would show
    height, width = source.shape[:2]
    for seed in range(5):
        crop = random_crop(Image.fromarray(source), 128, np.random.default_rng(seed))
        assert crop.shape == (3, 128, 128) and crop.dtype == torch.float32
        assert 0.0 <= crop.min() and crop.max() <= 1.0
        left, top, _ = offsets(np.random.default_rng(seed), width, height, 128)
        expected = source[top : top + 128, left : left + 128].astype(np.float32) / 255
        torch.testing.assert_close(crop, torch.from_numpy(expected).permute(2, 0, 1), rtol=0, atol=1e-6)


def test_random_crop_offsets_cover_the_image():
    source = Image.fromarray(data.astronaut())
    firsts = {tuple(as_uint8(random_crop(source, 64, np.random.default_rng(s)))[0, 0]) for s in range(8)}
    assert len(firsts) > 1  # different seeds, different places


def test_random_crop_upsizes_a_small_image():
    source = shrink(data.coffee(), 40)  # 40 high, 60 wide
    assert source.shape[:2] == (40, 60)
    crop = random_crop(Image.fromarray(source), 64, np.random.default_rng(3))
    assert crop.shape == (3, 64, 64)
    up = np.asarray(Image.fromarray(source).resize((96, 64), Image.BICUBIC))  # short side -> 64
    left, top, _ = offsets(np.random.default_rng(3), 96, 64, 64)
    assert top == 0
    np.testing.assert_array_equal(as_uint8(crop), up[:, left : left + 64])


def test_random_crop_flip_mirrors():
    source = data.astronaut()
    fired = [s for s in range(20) if offsets(np.random.default_rng(s), 512, 512, 96)[2]]
    kept = [s for s in range(20) if s not in fired]
    assert fired and kept
    for seed, flips in ((fired[0], True), (kept[0], False)):
        plain = random_crop(Image.fromarray(source), 96, np.random.default_rng(seed), random_flip=False)
        maybe = random_crop(Image.fromarray(source), 96, np.random.default_rng(seed), random_flip=True)
        if flips:
            torch.testing.assert_close(maybe, plain.flip(-1), rtol=0, atol=0)
            left, top, _ = offsets(np.random.default_rng(seed), 512, 512, 96)
            mirrored = source[top : top + 96, left : left + 96][:, ::-1]
            np.testing.assert_array_equal(as_uint8(maybe), mirrored)
        else:
            torch.testing.assert_close(maybe, plain, rtol=0, atol=0)


def test_random_crop_of_a_one_pixel_high_image():
    row = shrink(data.astronaut(), 32)[:1, :40]  # 1 high, 40 wide
    crop = random_crop(Image.fromarray(row), 8, np.random.default_rng(0))
    assert crop.shape == (3, 8, 8)
    assert 0.0 <= crop.min() and crop.max() <= 1.0
    torch.testing.assert_close(crop, crop[:, :1].expand_as(crop), rtol=0, atol=1 / 255)  # every row alike


# ---------------------------------------------------------------------------------------------- ImageRows


def test_folder_rows_are_sorted_and_undecoded(rows, folder):
    names = [os.path.basename(rows[i]["image"]["path"]) for i in range(len(rows))]
    assert names == sorted([*GOOD, *BAD])
    assert rows.features["image"].decode is False


def test_image_rows_one_pass_counts_every_skip(rows):
    dataset = ImageRows(rows, "image", RES, seed=7, min_size=MIN_SIZE)
    assert len(dataset) == 6
    samples = [dataset[i] for i in range(len(dataset))]
    for sample in samples:
        assert sample["pixel_values"].shape == (3, RES, RES)
        assert sample["pixel_values"].dtype == torch.float32
    # index 2 passes over c_trunc and d_notimage to e_coffee; index 3 over d_notimage to e_coffee;
    # index 5 (f_tiny) wraps around to a_astronaut.
    assert [s["sample_id"] for s in samples] == [
        "a_astronaut.png",
        "b_camera.png",
        "e_coffee.png",
        "e_coffee.png",
        "e_coffee.png",
        "a_astronaut.png",
    ]
    assert [s["skipped"] for s in samples] == [
        {},
        {},
        {"truncated": 1, "unreadable": 1},
        {"unreadable": 1},
        {},
        {"too_small": 1},
    ]
    total = Counter()
    for sample in samples:
        total.update(sample["skipped"])
    assert total == Counter({"truncated": 1, "unreadable": 2, "too_small": 1})
    assert [s["converted"] for s in samples] == [0, 1, 0, 0, 0, 0]  # only the grayscale photo


def test_image_rows_crop_is_the_slice_seeded_by_seed_epoch_index_offset(rows, folder):
    dataset = ImageRows(rows, "image", RES, seed=11, min_size=MIN_SIZE)
    dataset.set_epoch(3)
    source = np.asarray(Image.open(folder / "a_astronaut.png"))
    height, width = source.shape[:2]
    for index, offset in ((0, 0), (5, 1)):  # row 0, and index 5 (a bad row) replaced by row 0 at offset 1
        left, top, _ = offsets(np.random.default_rng([11, 3, index, offset]), width, height, RES)
        np.testing.assert_array_equal(
            as_uint8(dataset[index]["pixel_values"]), source[top : top + RES, left : left + RES]
        )


def test_image_rows_are_reproducible_per_seed_epoch_index(rows, folder, cache_dir):
    first = ImageRows(rows, "image", RES, random_flip=True, seed=5, min_size=MIN_SIZE)
    first.set_epoch(2)
    fresh_rows = open_image_dataset(train_data_dir=str(folder), cache_dir=cache_dir)
    again = ImageRows(fresh_rows, "image", RES, random_flip=True, seed=5, min_size=MIN_SIZE)
    again.set_epoch(2)
    for index in range(len(first)):
        torch.testing.assert_close(first[index]["pixel_values"], again[index]["pixel_values"], rtol=0, atol=0)
    again.set_epoch(3)
    differs = [not torch.equal(first[i]["pixel_values"], again[i]["pixel_values"]) for i in (0, 1, 4)]
    assert all(differs)


def test_image_rows_all_bad_raises_with_counts(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    jpeg = encode(shrink(data.astronaut(), 48), "JPEG")
    (bad / "a.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (bad / "b.png").write_text("not an image")
    (bad / "c.png").write_text("not an image either")
    rows = open_image_dataset(train_data_dir=str(bad), cache_dir=str(tmp_path / "cache"))
    dataset = ImageRows(rows, "image", RES)
    with pytest.raises(RuntimeError) as info:
        dataset[1]
    message = str(info.value)
    assert "'truncated': 1" in message and "'unreadable': 2" in message


def test_image_rows_rejects_an_empty_dataset():
    empty = datasets.Dataset.from_dict({"image": []}, features=datasets.Features({"image": datasets.Image()}))
    with pytest.raises(ValueError, match="no rows"):
        ImageRows(empty, "image", RES)


def test_dataloader_workers_deliver_the_same_batches_and_counts(rows):
    dataset = ImageRows(rows, "image", RES, random_flip=True, seed=1, min_size=MIN_SIZE)

    def batches(workers: int) -> list[dict]:
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=2, shuffle=False, num_workers=workers, collate_fn=collate_images
        )
        return list(loader)

    in_process, with_workers = batches(0), batches(2)
    assert [b["sample_ids"] for b in with_workers] == [b["sample_ids"] for b in in_process]
    for a, b in zip(in_process, with_workers):
        torch.testing.assert_close(a["pixel_values"], b["pixel_values"], rtol=0, atol=0)
        assert a["skipped"] == b["skipped"] and a["converted"] == b["converted"]
    total = Counter()
    for batch in with_workers:
        assert batch["pixel_values"].shape == (2, 3, RES, RES)
        total.update(batch["skipped"])
    assert total == Counter({"truncated": 1, "unreadable": 2, "too_small": 1})


def seeded_loader(dataset, batch_size: int) -> torch.utils.data.DataLoader:
    """A shuffled loader as the training script prepares it (accelerate's seedable sampler)."""
    from accelerate.data_loader import prepare_data_loader

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, collate_fn=collate_images, drop_last=True
    )
    return prepare_data_loader(loader, put_on_device=False, use_seedable_sampler=True)


def test_resumable_batches_resume_map_style_data_after_the_batches_done(rows):
    """6 rows in batches of 2: 3 per epoch. Resuming after 4 batches is epoch 1's second batch onwards,
    the same batches as the uninterrupted run, and each epoch is shuffled anew."""
    dataset = ImageRows(rows, "image", RES, seed=1, min_size=MIN_SIZE)

    def take(batches_done: int, count: int) -> list[tuple[int, list[str], torch.Tensor]]:
        stream = ResumableBatches(dataset, seeded_loader(dataset, 2), batch_size=2).iterate(batches_done)
        return [
            (epoch, batch["sample_ids"], batch["pixel_values"])
            for epoch, batch in (next(stream) for _ in range(count))
        ]

    full, resumed = take(0, 7), take(4, 3)
    assert [epoch for epoch, _, _ in full] == [0, 0, 0, 1, 1, 1, 2]
    assert [epoch for epoch, _, _ in resumed] == [1, 1, 2]
    for (_, ids, pixels), (_, resumed_ids, resumed_pixels) in zip(full[4:], resumed):
        assert resumed_ids == ids
        assert torch.equal(resumed_pixels, pixels)
    assert [ids for _, ids, _ in full[:3]] != [ids for _, ids, _ in full[3:6]]


def test_resumable_batches_resume_a_stream_at_its_saved_position(folder, cache_dir):
    """A stream read without workers records its position with every batch; a checkpoint's state
    continues with the next good image (a_astronaut, b_camera, then e_coffee)."""

    def batches() -> ResumableBatches:
        stream = open_image_dataset(train_data_dir=str(folder), streaming=True, cache_dir=cache_dir)
        dataset = StreamedImageRows(stream, "image", RES, seed=3, min_size=MIN_SIZE)
        loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=collate_images)
        return ResumableBatches(dataset, loader, batch_size=1)

    first = batches()
    stream = first.iterate()
    assert [next(stream)[1]["sample_ids"] for _ in range(2)] == [["a_astronaut.png"], ["b_camera.png"]]
    state = first.state_dict()
    assert state["epoch"] == 0 and "stream" in state

    second = batches()
    second.load_state_dict(state)
    assert second.restore_stream_position()
    assert next(second.iterate())[1]["sample_ids"] == ["e_coffee.png"]

    unsaved = batches()
    unsaved.load_state_dict({"epoch": 0})  # a checkpoint written with DataLoader workers
    assert not unsaved.restore_stream_position()


def test_resumable_batches_refuse_an_epoch_without_a_batch(folder, cache_dir):
    """3 readable images give no full batch of 8: an error naming the epoch and process, never a spin."""
    stream = open_image_dataset(train_data_dir=str(folder), streaming=True, cache_dir=cache_dir)
    dataset = StreamedImageRows(stream, "image", RES, min_size=MIN_SIZE)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=collate_images, drop_last=True)
    with pytest.raises(RuntimeError, match="epoch 0 gave no batch of 8 images on process 1"):
        next(ResumableBatches(dataset, loader, batch_size=8, process_index=1).iterate())


# --------------------------------------------------------------------------------------- StreamedImageRows


def test_streamed_rows_skip_bad_files_and_count_them(folder, cache_dir):
    stream = open_image_dataset(train_data_dir=str(folder), streaming=True, cache_dir=cache_dir)
    assert isinstance(stream, datasets.IterableDataset)
    samples = list(StreamedImageRows(stream, "image", RES, seed=3, min_size=MIN_SIZE))
    assert [s["sample_id"] for s in samples] == list(GOOD)
    assert [s["skipped"] for s in samples] == [{}, {}, {"truncated": 1, "unreadable": 1}]
    # f_tiny comes after the last good image: no sample is left to carry its count
    for sample in samples:
        assert sample["pixel_values"].shape == (3, RES, RES)
    source = np.asarray(Image.open(folder / "e_coffee.png"))
    left, top, _ = offsets(np.random.default_rng([3, 0, 0, 0, 4]), source.shape[1], source.shape[0], RES)
    np.testing.assert_array_equal(as_uint8(samples[2]["pixel_values"]), source[top : top + RES, left : left + RES])


def test_streamed_rows_from_a_local_parquet_file(tmp_path):
    photos = [shrink(data.astronaut(), 40), shrink(data.coffee(), 40), shrink(data.chelsea(), 40)]
    cells = [{"bytes": encode(p), "path": None} for p in photos]
    cells.insert(1, {"bytes": b"corrupt: not an image at all", "path": None})
    shard = tmp_path / "shards" / "train-00000.parquet"
    shard.parent.mkdir()
    table = datasets.Dataset.from_dict({"image": cells}, features=datasets.Features({"image": datasets.Image()}))
    table.to_parquet(str(shard))

    # datasets' own way to read a parquet file: open_image_dataset has no data_files argument.
    cache = str(tmp_path / "cache")
    stream = datasets.load_dataset("parquet", data_files=str(shard), split="train", streaming=True, cache_dir=cache)
    stream = stream.cast_column("image", datasets.Image(decode=False))
    samples = list(StreamedImageRows(stream, "image", RES, seed=0))
    assert len(samples) == 3
    assert [s["skipped"] for s in samples] == [{}, {"unreadable": 1}, {}]
    assert all(s["sample_id"].startswith("sha1-") for s in samples)
    assert len({s["sample_id"] for s in samples}) == 3
    for n, (sample, photo) in enumerate(zip(samples, photos)):
        row = n + (n > 0)  # the rows' positions in the stream, the corrupt one being row 1
        left, top, _ = offsets(np.random.default_rng([0, 0, 0, 0, row]), photo.shape[1], photo.shape[0], RES)
        np.testing.assert_array_equal(as_uint8(sample["pixel_values"]), photo[top : top + RES, left : left + RES])

    # A local folder of parquet shards given as dataset_name is read with the parquet builder.
    via_folder = open_image_dataset(dataset_name=str(shard.parent), streaming=True, cache_dir=cache)
    assert [s["skipped"] for s in StreamedImageRows(via_folder, "image", RES)] == [{}, {"unreadable": 1}, {}]
    mapped = open_image_dataset(dataset_name=str(shard.parent), cache_dir=cache)
    ids = [ImageRows(mapped, "image", RES)[i]["sample_id"] for i in range(len(mapped))]
    assert ids == ["row-0", "row-2", "row-2", "row-3"]


# --------------------------------------------------------------------------------------- collate / open


def test_collate_images_stacks_and_sums():
    samples = [
        {"pixel_values": torch.full((3, 4, 4), 0.25), "sample_id": "x", "skipped": {}, "converted": 1},
        {"pixel_values": torch.full((3, 4, 4), 0.5), "sample_id": "y", "skipped": {"truncated": 2}, "converted": 0},
        {
            "pixel_values": torch.full((3, 4, 4), 0.75),
            "sample_id": "z",
            "skipped": {"truncated": 1, "too_small": 3},
            "converted": 1,
        },
    ]
    batch = collate_images(samples)
    assert batch["pixel_values"].shape == (3, 3, 4, 4)
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [0.25, 0.5, 0.75]
    assert batch["sample_ids"] == ["x", "y", "z"]
    assert batch["skipped"] == {"truncated": 3, "too_small": 3}
    assert batch["converted"] == 2


def test_open_image_dataset_argument_errors(tmp_path, folder, cache_dir):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(ValueError, match="no_such_folder"):
        open_image_dataset(train_data_dir=str(missing))
    with pytest.raises(ValueError, match="exactly one"):
        open_image_dataset()
    with pytest.raises(ValueError, match="exactly one"):
        open_image_dataset(dataset_name="some/dataset", train_data_dir=str(folder))
    for streaming in (False, True):
        with pytest.raises(ValueError) as info:
            open_image_dataset(
                train_data_dir=str(folder), image_column="img", streaming=streaming, cache_dir=cache_dir
            )
        assert "'img'" in str(info.value) and "['image']" in str(info.value)
