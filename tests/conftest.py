"""Shared offline fixtures: tiny SD2-style components built from configs (no Hub access)."""

from __future__ import annotations

import os
import string

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

# Text-embedding width of the tiny UNet (SD2.1 uses 1024); prompts are 77 tokens as in SD.
TINY_CROSS_ATTENTION_DIM = 32
TINY_IMAGE_SIZE = 16  # pixels; the two-block VAE halves it to an 8x8 latent


def make_tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    """SD2-style (linear projections, head dims (2, 4)) UNet with block_out_channels (32, 64)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=8,
    ).eval()


def make_tiny_vae(seed: int = 1) -> AutoencoderKL:
    """Two-block AutoencoderKL (downsampling x2) with 4 latent channels and an encoder mid-block attention."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    ).eval()


def make_sd21_scheduler() -> DDPMScheduler:
    """DDPMScheduler with Stable Diffusion 2.1-base's training schedule (epsilon prediction)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )


def make_tiny_tokenizer(model_max_length: int = 77):
    """A CLIP tokenizer built in memory: character-level BPE (no merges), so any word tokenises."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ".,'-":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def make_tiny_text_encoder(tokenizer, seed: int = 4):
    """A 2-layer CLIP text model whose width matches the tiny UNet's cross-attention."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TINY_CROSS_ATTENTION_DIM, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return CLIPTextModel(config).eval()


def make_tiny_pipeline():
    """IRIBRestorationPipeline on the tiny components, without adapter sets."""
    from diffusers_irib import IRIBRestorationPipeline

    tokenizer = make_tiny_tokenizer()
    pipe = IRIBRestorationPipeline(
        vae=make_tiny_vae(),
        text_encoder=make_tiny_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=make_tiny_unet(),
        scheduler=make_sd21_scheduler(),
    )
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
