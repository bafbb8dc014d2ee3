"""Shared offline fixtures: tiny SD2-style components built from configs (no Hub access)."""

from __future__ import annotations

import os

import pytest
import torch

# Before diffusers and huggingface_hub are imported: no test may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One thread per pytest-xdist worker (the README runs two on two cores); else what OMP_NUM_THREADS says.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else int(os.environ.get("OMP_NUM_THREADS", "1")))

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402

from diffusers_irib.tiny import (  # noqa: E402, F401  (re-exported for the tests)
    TINY_CROSS_ATTENTION_DIM,
    make_sd21_scheduler,
    make_tiny_text_encoder,
    make_tiny_tokenizer,
    make_tiny_unet,
    make_tiny_vae,
)
from diffusers_irib.tiny import make_tiny_pipeline as _make_tiny_pipeline  # noqa: E402

TINY_IMAGE_SIZE = 16  # pixels; the two-block VAE halves it to an 8x8 latent


def make_tiny_pipeline():
    """The tiny pipeline without adapter sets, progress bars off."""
    pipe = _make_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def tiny_unet() -> UNet2DConditionModel:
    return make_tiny_unet()


@pytest.fixture
def tiny_vae() -> AutoencoderKL:
    return make_tiny_vae()


@pytest.fixture
def sd21_scheduler() -> DDPMScheduler:
    return make_sd21_scheduler()


@pytest.fixture
def prompt_embeds() -> torch.Tensor:
    """Stand-in for CLIP last hidden states: (1, 77, cross_attention_dim)."""
    g = torch.Generator().manual_seed(2)
    return torch.randn(1, 77, TINY_CROSS_ATTENTION_DIM, generator=g)


@pytest.fixture
def tiny_images() -> torch.Tensor:
    """Two smooth-ish RGB images in [-1, 1], shape (2, 3, 16, 16)."""
    g = torch.Generator().manual_seed(3)
    coarse = torch.rand(2, 3, 4, 4, generator=g) * 1.6 - 0.8
    fine = torch.rand(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=g) * 0.2 - 0.1
    up = torch.nn.functional.interpolate(coarse, size=(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), mode="bilinear")
    return (up + fine).clamp(-1, 1)
