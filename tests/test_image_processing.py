"""Input conversion, padding, colour fixes and tiling windows of the pipeline's image handling."""

import numpy as np
import PIL.Image
import pytest
import torch
from photos import photo

from diffusers_irib.image_processing import (
    adain_color_fix,
    gaussian_window,
    pad_to_multiple,
    postprocess,
    tile_starts,
    to_tensors,
    upscale_image,
    wavelet_color_fix,
    wavelet_low_frequency,
)


@pytest.fixture
def rgb8():
    return (np.arange(5 * 7 * 3) % 256).astype(np.uint8).reshape(5, 7, 3)


def test_every_input_kind_gives_the_same_tensor(rgb8):
    expected = torch.from_numpy(rgb8).permute(2, 0, 1).float() / 255
    inputs = [
        PIL.Image.fromarray(rgb8),
        rgb8,
        rgb8.astype(np.uint16) * 257,
        rgb8.astype(np.float64) / 255,
        expected,
        expected[None],
        (expected * 255).round().to(torch.uint8),
    ]
    for item in inputs:
        (got,) = to_tensors(item)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_lists_and_batches_are_flattened(rgb8):
    out = to_tensors([rgb8, torch.rand(2, 3, 4, 4), PIL.Image.fromarray(rgb8)])
    assert [tuple(t.shape) for t in out] == [(3, 5, 7), (3, 4, 4), (3, 4, 4), (3, 5, 7)]


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P", "LA", "CMYK"])
def test_any_pil_mode_becomes_rgb(mode, rgb8):
    base = PIL.Image.fromarray(rgb8)
    if mode == "I;16":
        image = PIL.Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    else:
        image = base.convert(mode)
    (t,) = to_tensors(image)
    assert t.shape == (3, 5, 7) and 0 <= t.min() and t.max() <= 1
    if mode in ("L", "I;16"):
        gray = torch.from_numpy(np.array(base.convert("L"))).float() / 255
        torch.testing.assert_close(t[0], gray, atol=1 / 255, rtol=0)


def test_transparent_pixels_are_composited_on_white():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)  # black, fully transparent
    (t,) = to_tensors(PIL.Image.fromarray(rgba, "RGBA"))
    assert torch.equal(t, torch.ones(3, 2, 2))
    (t,) = to_tensors(rgba)
    assert torch.equal(t, torch.ones(3, 2, 2))


def test_gray_arrays_and_single_channel_tensors_are_expanded():
    (a,) = to_tensors(np.full((4, 6), 0.25))
    (b,) = to_tensors(torch.full((1, 1, 4, 6), 0.25))
    assert a.shape == b.shape == (3, 4, 6)


@pytest.mark.parametrize(
    "bad,error,message",
    [
        ([], ValueError, "empty list"),
        ("photo.png", TypeError, "image must be a PIL image"),
        ([np.zeros((4, 4, 3), np.uint8), 3], TypeError, "got int"),
        (np.zeros((0, 4, 3), np.uint8), ValueError, "zero size"),
        (np.zeros((4, 4, 3), np.int32), TypeError, "dtype int32"),
        (np.zeros((4, 4, 5), np.uint8), ValueError, "C in"),
        (torch.rand(2, 4, 8, 8), ValueError, "B x 3 x H x W"),
        (torch.full((3, 4, 4), 2.0), ValueError, r"values in \[0, 1\]"),
        (torch.full((3, 4, 4), float("nan")), ValueError, "NaN"),
        (torch.zeros(3, 4, 4, dtype=torch.int64), TypeError, "int64"),
    ],
)
def test_bad_inputs_name_the_problem(bad, error, message):
    with pytest.raises(error, match=message):
        to_tensors(bad)


def test_pad_to_multiple_and_crop_back():
    x = torch.rand(1, 3, 13, 21)
    padded, size = pad_to_multiple(x, 8)
    assert padded.shape == (1, 3, 16, 24) and size == (13, 21)
    assert torch.equal(padded[..., :13, :21], x)
    tiny, _ = pad_to_multiple(torch.rand(1, 3, 2, 3), 8)  # too small to reflect
    assert tiny.shape == (1, 3, 8, 8)


def test_upscale_is_bicubic_and_stays_in_range():
    x = photo("coffee", 16)[None]
    up = upscale_image(x, 4.0)
    assert up.shape == (1, 3, 64, 64) and up.min() >= 0 and up.max() <= 1
    expected = torch.nn.functional.interpolate(x, size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 1)
    torch.testing.assert_close(up, expected)
    assert upscale_image(x, 1.0) is x


def test_adain_matches_reference_statistics():
    torch.manual_seed(0)
    image = 0.4 + 0.1 * torch.rand(1, 3, 32, 32)
    reference = 0.3 + 0.4 * photo("astronaut", 32)[None]  # no clamping needed
    fixed = adain_color_fix(image, reference)
    torch.testing.assert_close(fixed.mean(dim=(-2, -1)), reference.mean(dim=(-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        fixed.std(dim=(-2, -1)), reference.std(dim=(-2, -1)), atol=1e-3, rtol=0
    )  # eps 1e-5 in the variance


def test_wavelet_low_band_of_a_constant_is_the_constant_and_colour_fix_keeps_detail():
    const = torch.full((1, 3, 20, 20), 0.3)
    torch.testing.assert_close(wavelet_low_frequency(const), const)
    # the binomial kernel sums to 1: the low band keeps the mean of a periodic pattern
    detail = photo("astronaut", 64)[None]
    tinted = (detail * 0.5 + 0.4).clamp(0, 1)
    fixed = wavelet_color_fix(tinted, detail)
    # colour (low band) now follows the reference; the high band is the tinted image's
    low_err = (wavelet_low_frequency(fixed) - wavelet_low_frequency(detail)).abs().mean()
    assert low_err < (wavelet_low_frequency(tinted) - wavelet_low_frequency(detail)).abs().mean() / 5


def test_tile_starts_cover_the_length_with_the_last_tile_on_the_border():
    assert tile_starts(64, 96, 32) == [0]
    starts = tile_starts(200, 96, 32)
    assert starts == [0, 64, 104]
    covered = set()
    for s in starts:
        covered |= set(range(s, s + 96))
    assert covered == set(range(200))


def test_gaussian_window_is_positive_symmetric_and_peaks_in_the_middle():
    w = gaussian_window(8, 12)
    assert w.min() > 0 and torch.allclose(w, w.flip(0)) and torch.allclose(w, w.flip(1))
    assert w[3:5, 5:7].min() == w.max()


def test_postprocess_output_types():
    x = torch.rand(2, 3, 4, 5)
    pil = postprocess(x, "pil")
    assert len(pil) == 2 and pil[0].size == (5, 4)
    assert postprocess(x, "np").shape == (2, 4, 5, 3)
    assert torch.equal(postprocess(x, "pt"), x)
    with pytest.raises(ValueError, match="output_type"):
        postprocess(x, "latent")
