"""Tests for the differentiable JPEG simulator, checked against PIL's real libjpeg codec."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from diffusers_irib.degradations.jpeg import block_dct_matrix, differentiable_jpeg, jpeg_quality_to_tables, to_blocks

LUMA_K1 = [
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99],
]
CHROMA_K2 = [
    [17, 18, 24, 47] + [99] * 4,
    [18, 21, 26, 66] + [99] * 4,
    [24, 26, 56] + [99] * 5,
    [47, 66] + [99] * 6,
] + [[99] * 8] * 4


def _crops():
    astro, coffee = data.astronaut(), data.coffee()
    return {
        "astronaut128": astro[192:320, 192:320],
        "coffee128": coffee[136:264, 236:364],
        "astronaut67x93": astro[100:167, 200:293],  # not a multiple of 8 or 16
    }


CROPS = _crops()
QUALITIES = [30, 50, 75, 95]


def _pil_jpeg(arr: np.ndarray, quality: int) -> np.ndarray:
    """Round trip through PIL's libjpeg with 4:2:0 subsampling (or grayscale for 2-D input)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality, subsampling=2)
    buf.seek(0)
    return np.asarray(Image.open(buf))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].double() / 255


def _ours(arr: np.ndarray, quality: float) -> np.ndarray:
    out = differentiable_jpeg(_to_tensor(arr), quality)
    return out[0].permute(1, 2, 0).numpy() * 255


# ---------------------------------------------------------------- against PIL / libjpeg


@pytest.mark.parametrize("name", list(CROPS))
def test_matches_pil_rgb(name):
    # Measured 40.0-44.4 dB. The residual is mostly libjpeg's "fancy" (triangular) chroma
    # upsampling in the decoder versus our nearest-neighbour upsampling, plus libjpeg's
    # integer DCT and 8-bit output rounding.
    arr = CROPS[name]
    psnr_ours, psnr_pil = [], []
    for q in QUALITIES:
        ours, pil = _ours(arr, q), _pil_jpeg(arr, q)
        assert _psnr(ours, pil) > 39.0, q
        psnr_ours.append(_psnr(ours, arr))
        psnr_pil.append(_psnr(pil, arr))
    # Same distortion level as the real codec. Nearest-neighbour chroma upsampling costs up
    # to ~1.4 dB at q=95, where chroma subsampling dominates the error (~0.5 dB at q<=75).
    np.testing.assert_allclose(psnr_ours, psnr_pil, atol=1.5)
    assert np.all(np.diff(psnr_ours) > 0), psnr_ours  # lower quality -> lower PSNR


@pytest.mark.parametrize("name", list(CROPS))
def test_matches_pil_grayscale(name):
    # Gray input has zero chroma, so this isolates the luma DCT/quantisation path from the
    # chroma upsampling difference. Measured 45.9-55.1 dB (lowest: odd size, because a
    # grayscale JPEG pads to 8 where we pad to 16).
    gray = np.asarray(Image.fromarray(CROPS[name]).convert("L"))
    x = torch.from_numpy(gray.copy()).double().div(255).expand(1, 3, *gray.shape)
    for q in QUALITIES:
        ours = differentiable_jpeg(x, q)[0].numpy() * 255
        assert np.ptp(ours, axis=0).max() < 1e-6  # stays gray
        assert _psnr(ours[0], _pil_jpeg(gray, q)) > 45.0, q


def test_tables_match_libjpeg():
    img = Image.fromarray(np.zeros((16, 16, 3), np.uint8))
    qualities = list(range(1, 101))
    luma, chroma = jpeg_quality_to_tables(torch.tensor(qualities, dtype=torch.float64))
    for i, q in enumerate(qualities):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=q)
        buf.seek(0)
        tables = Image.open(buf).quantization  # natural (row-major) order
        assert luma[i].flatten().tolist() == list(tables[0]), q
        assert chroma[i].flatten().tolist() == list(tables[1]), q


# ---------------------------------------------------------------- quality -> tables


def test_tables_hand_computed():
    q = torch.tensor([50.0, 75.0, 10.0, 30.0, 99.0, 100.0])
    q_before = q.clone()
    luma, chroma = jpeg_quality_to_tables(q)
    assert torch.equal(q, q_before)  # caller's tensor untouched
    assert luma.shape == chroma.shape == (6, 8, 8)
    assert luma.dtype == torch.float32
    assert torch.equal(luma[0], torch.tensor(LUMA_K1, dtype=torch.float32))
    assert torch.equal(chroma[0], torch.tensor(CHROMA_K2, dtype=torch.float32))
    # q=75: scale 50 -> floor((16*50 + 50)/100) = 8, floor((99*50 + 50)/100) = 50
    assert luma[1, 0, 0] == 8 and luma[1, 7, 7] == 50 and chroma[1, 0, 0] == 9
    # q=10: scale 500 -> 16*5 + 0.5 -> 80, 11 -> 55, 99 -> 495 clamped to 255
    assert luma[2, 0, 0] == 80 and luma[2, 0, 1] == 55 and luma[2, 7, 7] == 255
    assert chroma[2, 0, 0] == 85
    # q=30: libjpeg's integer 5000 // 30 = 166 -> floor((99*166 + 50)/100) = 164 (not 165)
    assert chroma[3, 7, 7] == 164
    # high quality: entries bottom out at 1, never 0
    assert luma[4].min() == 1 and luma[4, 0, 0] == 1
    assert torch.equal(luma[5], torch.ones(8, 8)) and torch.equal(chroma[5], torch.ones(8, 8))


def test_tables_continuous_quality_monotone():
    q = torch.linspace(1.0, 100.0, 397, dtype=torch.float64)
    luma, chroma = jpeg_quality_to_tables(q)
    assert luma.dtype == torch.float64
    assert torch.all(luma.diff(dim=0) <= 0) and torch.all(chroma.diff(dim=0) <= 0)
    assert luma.min() >= 1 and luma.max() <= 255


# ---------------------------------------------------------------- block DCT as one 64x64 matrix


def test_block_dct_matches_scipy_dctn():
    """The 64x64 matrix against scipy's orthonormal 2-D DCT-II of each 8x8 block (float64 truth)."""
    from scipy.fft import dctn

    torch.manual_seed(0)
    planes = torch.rand(2, 1, 16, 24, dtype=torch.float64) * 255 - 128
    blocks = planes.reshape(2, 1, 2, 8, 3, 8).permute(0, 1, 2, 4, 3, 5).reshape(-1, 8, 8).numpy()
    expected = torch.from_numpy(np.stack([dctn(b, type=2, norm="ortho") for b in blocks]).reshape(2, 1, 6, 64))
    for dtype, atol in ((torch.float64, 1e-9), (torch.float32, 1e-5 * 255)):  # 1e-5 of the 0..1 scale
        got = to_blocks(planes.to(dtype)) @ block_dct_matrix("cpu", dtype).T
        torch.testing.assert_close(got.double(), expected, rtol=0, atol=atol)
    inverse = (to_blocks(planes) @ block_dct_matrix("cpu", torch.float64).T) @ block_dct_matrix("cpu", torch.float64)
    torch.testing.assert_close(inverse, to_blocks(planes), rtol=0, atol=1e-9)


def test_float32_codec_matches_float64_codec():
    """Everywhere within 1e-5 but where a coefficient sits at a rounding tie and flips: measured 0 to 2e-4
    of the pixels of the 512 px astronaut, depending on the thread count (the 8x8 path did the same)."""
    x = torch.from_numpy(data.astronaut().copy()).permute(2, 0, 1)[None].double() / 255
    for quality in (10.0, 50.0, 95.0):
        diff = (differentiable_jpeg(x.float(), quality).double() - differentiable_jpeg(x, quality)).abs()
        assert (diff > 1e-5).float().mean() < 1e-3, quality


# ---------------------------------------------------------------- API behaviour


def test_per_sample_quality():
    x = _to_tensor(CROPS["astronaut67x93"]).expand(2, -1, -1, -1)
    quality = torch.tensor([20.0, 90.0])
    q_before = quality.clone()
    out = differentiable_jpeg(x, quality)
    assert torch.equal(quality, q_before)
    assert not torch.allclose(out[0], out[1])
    torch.testing.assert_close(out[:1], differentiable_jpeg(x[:1], 20.0))
    torch.testing.assert_close(out[1:], differentiable_jpeg(x[1:], torch.tensor([90.0])))


def test_scalar_quality_forms_agree():
    x = _to_tensor(CROPS["coffee128"][:40, :40]).expand(2, -1, -1, -1)
    ref = differentiable_jpeg(x, 60.0)
    torch.testing.assert_close(differentiable_jpeg(x, 60), ref)
    torch.testing.assert_close(differentiable_jpeg(x, torch.tensor(60.0)), ref)
    torch.testing.assert_close(differentiable_jpeg(x, torch.tensor([60, 60])), ref)


def test_non_contiguous_input():
    hwc = torch.from_numpy(CROPS["coffee128"][:48, :40].copy()).double()[None] / 255
    permuted = hwc.permute(0, 3, 1, 2)  # (B, 3, H, W) view, not contiguous
    assert not permuted.is_contiguous()
    ref = differentiable_jpeg(permuted.contiguous(), 40.0)
    for x in (permuted, permuted.contiguous(memory_format=torch.channels_last), permuted.flip(-1).flip(-1)):
        out = differentiable_jpeg(x, 40.0)
        assert out.is_contiguous()
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)
    assert ref.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_dtype_preserved(dtype):
    x = _to_tensor(CROPS["astronaut128"][:32, :32])
    out = differentiable_jpeg(x.to(dtype), 70.0)
    assert out.dtype == dtype and out.device == x.device
    torch.testing.assert_close(out.double(), differentiable_jpeg(x, 70.0), rtol=0, atol=2e-2)


@pytest.mark.parametrize("quality", [1.0, 99.9, 100.0])
def test_no_nan_extreme_quality(quality):
    torch.manual_seed(0)
    x = torch.cat([torch.rand(1, 3, 24, 24), torch.zeros(1, 3, 24, 24), torch.ones(1, 3, 24, 24)])
    out = differentiable_jpeg(x, quality)
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (17, 33)])
def test_odd_sizes(size):
    torch.manual_seed(0)
    x = torch.rand(2, 3, *size)
    out = differentiable_jpeg(x, torch.tensor([30.0, 80.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1


def test_bad_shape_raises():
    with pytest.raises(ValueError):
        differentiable_jpeg(torch.rand(1, 1, 8, 8), 50.0)


# ---------------------------------------------------------------- gradients


def test_gradient_nonzero_and_finite():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 20, 28, requires_grad=True)
    weights = torch.randn(2, 3, 20, 28)
    (differentiable_jpeg(x, torch.tensor([10.0, 90.0])) * weights).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad.abs() > 0).float().mean() > 0.9


def test_gradient_straight_through_on_gray():
    # With straight-through rounding/clamping the backward pass is the (linear) codec
    # without quantisation, which preserves the image sum exactly.
    x = torch.full((1, 3, 32, 48), 0.5, dtype=torch.float64, requires_grad=True)
    differentiable_jpeg(x, 25.0).mean().backward()
    assert x.grad.sum().item() == pytest.approx(1.0, rel=1e-9)
    torch.testing.assert_close(x.grad * x.numel(), torch.ones_like(x))


def test_gradient_through_saturation():
    x = torch.ones(1, 3, 16, 16, requires_grad=True)  # output clamps at 1
    differentiable_jpeg(x, 50.0).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = _to_tensor(CROPS["astronaut67x93"])  # float64: fp32 could flip a .5 rounding
    q = torch.tensor([35.0])
    out = differentiable_jpeg(x.cuda(), q.cuda())
    assert out.is_cuda and out.dtype == torch.float64
    torch.testing.assert_close(out.cpu(), differentiable_jpeg(x, q), rtol=0, atol=1e-9)
    out32 = differentiable_jpeg(x.float().cuda().requires_grad_(), 35.0)
    out32.sum().backward()
    assert _psnr(out32.detach().cpu().double().numpy() * 255, out.cpu().numpy() * 255) > 50
