"""The pipeline never passes garbage on silently: plug-and-play outputs are checked, tiny inputs are
refused with the floor in the message, generators go one per image, and meaningless values fail."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from lora_reference import tiny_pipeline_with_random_sets
from PIL import Image
from skimage import data


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline_with_random_sets()


def photo(h: int, w: int) -> torch.Tensor:
    return torch.from_numpy(data.astronaut()[:h, :w].copy()).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize(
    "output, message",
    [
        (lambda x: (x * 255).to(torch.uint8), "uint8"),
        (lambda x: x * 255, r"0\.\.255"),
        (lambda x: x * 2 - 1, r"\[-1, 1\]"),
        (lambda x: x * float("nan"), "NaN"),
    ],
)
def test_a_plug_and_play_restorer_output_outside_the_rules_is_refused(pipe, output, message):
    with pytest.raises((TypeError, ValueError), match=message):
        pipe(photo(16, 16), restorer=lambda images, prompts: output(images), output_type="pt")


def test_a_plug_and_play_output_within_rounding_of_the_range_is_accepted(pipe):
    out = pipe(photo(16, 16), restorer=lambda images, prompts: images * 1.005 - 0.002, output_type="pt")
    assert float(out.images.min()) >= 0 and float(out.images.max()) <= 1


def test_images_below_the_floor_are_refused_with_the_number(pipe):
    floor = pipe.min_image_size
    assert floor == pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    with pytest.raises(ValueError, match=rf"image 0 is 1x1: .* at least {floor} px"):
        pipe(photo(1, 1), output_type="pt")
    with pytest.raises(ValueError, match=rf"after upscale=0.01.* at least {floor} px"):
        pipe(photo(32, 32), upscale=0.01, output_type="pt")
    out = pipe(photo(floor, floor), output_type="pt", color_fix="adain")  # the floor itself works
    assert torch.isfinite(out.images).all()


def test_generators_go_one_per_image_across_size_groups(pipe):
    images = [photo(16, 16), photo(24, 16), photo(16, 16)]  # image 1 is restored in its own size group

    def gens():
        return [torch.Generator().manual_seed(s) for s in (10, 11, 12)]

    together = pipe(images, generator=gens(), output_type="pt", color_fix=None).images
    for i, image in enumerate(images):
        alone = pipe(image, generator=gens()[i], output_type="pt", color_fix=None).images[0]
        torch.testing.assert_close(together[i], alone, rtol=0, atol=1e-5)  # batched vs alone: fp32 rounding
    wrong = pipe(images[1], generator=gens()[0], output_type="pt", color_fix=None).images[0]
    assert float((together[1] - wrong).abs().max()) > 1e-3  # the test can tell generators apart
    for wrong in (gens()[:2], gens() + [torch.Generator()]):
        with pytest.raises(ValueError, match="generators for 3 images"):
            pipe(images, generator=wrong, output_type="pt")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"use_projector": "no"}, TypeError, "use_projector must be True or False"),
        ({"tile_overlap": 8}, ValueError, "without tile_size"),
        ({"upscale": float("inf")}, ValueError, "finite"),
        ({"upscale": float("nan")}, ValueError, "finite"),
    ],
)
def test_values_that_would_mean_nothing_are_refused(pipe, kwargs, error, message):
    with pytest.raises(error, match=message):
        pipe(photo(16, 16), output_type="pt", **kwargs)


def test_exif_orientation_is_applied_to_pil_inputs(pipe):
    array = data.astronaut()[:16, :32]  # 32 wide, 16 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the photo is 16 wide, 32 high
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", exif=exif, quality=95)
    out = pipe(Image.open(io.BytesIO(buffer.getvalue())), output_type="np", color_fix=None)
    assert out.images.shape == (1, 32, 16, 3)
    assert np.isfinite(out.images).all()
