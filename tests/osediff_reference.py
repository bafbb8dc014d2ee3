"""A fake ``osediff.pkl`` built by OSEDiff's own rules, quirks included (our own code, not OSEDiff's).

OSEDiff's ``initialize_unet`` walks ``named_parameters()``, skips names with "bias" or "norm", and
puts a module in the first group whose pattern matches (its loop breaks), so the UNet lists are
unique. Its ``initialize_vae`` has no ``break``: a name is appended once per matching pattern, and
``quant_conv`` (matched through an ``elif`` that ignores the pattern) once per pattern. The VAE
list of a real checkpoint therefore repeats names. The LoRA configs leave alpha at peft's default
(8); the three UNet adapters are all activated; ``conv_in`` is trained fully on top of its LoRA;
the checkpoint keeps every UNet key with "lora" or "conv_in" and every VAE key with "lora".
"""

from __future__ import annotations

import warnings

import torch
from conftest import make_tiny_unet, make_tiny_vae
from lora_reference import randomize
from peft import LoraConfig

UNET_PATTERNS = [
    "to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut", "conv_out",
    "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj",
]  # fmt: skip
VAE_PATTERNS = ["conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "to_k", "to_q", "to_v", "to_out.0"]


def osediff_unet_lists(unet) -> tuple[list[str], list[str], list[str]]:
    encoder, decoder, others = [], [], []
    for name, _ in unet.named_parameters():
        if "bias" in name or "norm" in name:
            continue
        for pattern in UNET_PATTERNS:
            if pattern not in name:
                continue
            module = name.replace(".weight", "")
            if "down_blocks" in name or "conv_in" in name:
                encoder.append(module)
            elif "up_blocks" in name or "conv_out" in name:
                decoder.append(module)
            else:
                others.append(module)
            break
    return encoder, decoder, others


def osediff_vae_list(vae) -> list[str]:
    modules = []
    for name, _ in vae.named_parameters():
        if "bias" in name or "norm" in name:
            continue
        for pattern in VAE_PATTERNS:  # no break: one entry per matching pattern
            if pattern in name and "encoder" in name:
                modules.append(name.replace(".weight", ""))
            elif "quant_conv" in name and "post_quant_conv" not in name:
                modules.append(name.replace(".weight", ""))
    return modules


def make_osediff_checkpoint(rank: int = 4, seed: int = 20):
    """(unet, vae, checkpoint): OSEDiff's model on the tiny base with random trained weights, and
    the dict its training script saves as ``osediff.pkl``."""
    unet, vae = make_tiny_unet(), make_tiny_vae()
    encoder, decoder, others = osediff_unet_lists(unet)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # three adapters, by design
        for name, modules in (("default_encoder", encoder), ("default_decoder", decoder), ("default_others", others)):
            unet.add_adapter(
                LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=modules), adapter_name=name
            )
    unet.set_adapter(["default_encoder", "default_decoder", "default_others"])
    vae_modules = osediff_vae_list(vae)
    vae.add_adapter(LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=vae_modules), "default_encoder")
    vae.set_adapter(["default_encoder"])
    for i, name in enumerate(("default_encoder", "default_decoder", "default_others")):
        randomize(unet, name, seed + i)
    randomize(vae, "default_encoder", seed + 10)
    g = torch.Generator().manual_seed(seed + 20)
    with torch.no_grad():  # conv_in trained fully, on top of its LoRA
        unet.conv_in.base_layer.weight.add_(torch.randn(unet.conv_in.base_layer.weight.shape, generator=g) * 0.05)
        unet.conv_in.base_layer.bias.add_(torch.randn(unet.conv_in.base_layer.bias.shape, generator=g) * 0.05)
    checkpoint = {
        "unet_lora_encoder_modules": encoder,
        "unet_lora_decoder_modules": decoder,
        "unet_lora_others_modules": others,
        "vae_lora_encoder_modules": vae_modules,
        "rank_unet": rank,
        "rank_vae": rank,
        "state_dict_unet": {k: v.clone() for k, v in unet.state_dict().items() if "lora" in k or "conv_in" in k},
        "state_dict_vae": {k: v.clone() for k, v in vae.state_dict().items() if "lora" in k},
    }
    return unet, vae, checkpoint
