"""A tiny, randomly initialised IRIBRestorationPipeline: the real code paths without weights.

Used by ``irib-demo --tiny`` (a fresh machine has no SD2.1 weights and no network) and by the
tests. Its outputs are noise-like: it shows that everything runs, not what a trained model does.
"""

from __future__ import annotations

import string

import torch

TINY_CROSS_ATTENTION_DIM = 32


def make_tiny_unet(seed: int = 0):
    """SD2-style UNet (linear projections) with block_out_channels (32, 64)."""
    from diffusers import UNet2DConditionModel

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


def make_tiny_vae(seed: int = 1):
    """Two-block AutoencoderKL (downsampling x2), 4 latent channels, encoder mid-block attention."""
    from diffusers import AutoencoderKL

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


def make_sd21_scheduler():
    """DDPMScheduler with Stable Diffusion 2.1-base's training schedule (epsilon prediction)."""
    from diffusers import DDPMScheduler

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


def make_tiny_pipeline(with_adapter_sets: bool = False):
    """IRIBRestorationPipeline on the tiny components; optionally with fresh projector/restorer sets
    (gaussian init: their LoRA B is zero, so both act as the bare tiny base)."""
    from .pipeline_irib import IRIBRestorationPipeline

    tokenizer = make_tiny_tokenizer()
    pipe = IRIBRestorationPipeline(
        vae=make_tiny_vae(),
        text_encoder=make_tiny_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=make_tiny_unet(),
        scheduler=make_sd21_scheduler(),
    )
    if with_adapter_sets:
        pipe.add_adapter_set("projector", trainable=False)
        pipe.add_adapter_set("restorer", trainable=False)
    return pipe
