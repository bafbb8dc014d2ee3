"""Adapter sets among the rest of the ecosystem: plain diffusers loading, fusing, diffusers hooks and
mixed precision, direct peft/diffusers calls, compiled/DDP wrappers and CPU offload."""

from __future__ import annotations

import socket

import pytest
import torch
from conftest import (
    make_sd21_scheduler,
    make_tiny_pipeline,
    make_tiny_text_encoder,
    make_tiny_tokenizer,
    make_tiny_unet,
    make_tiny_vae,
)
from lora_reference import build_two_sets

from diffusers_irib.adapters import (
    adapter_set_parameters,
    fused_adapter_set,
    get_active_adapter_set,
    list_adapter_sets,
    set_adapter_set,
    use_adapter_set,
)
from diffusers_irib.one_step import decode_latents, encode_image, one_step_restore, predict_noise


@pytest.fixture
def pipe():
    pipe = make_tiny_pipeline()
    build_two_sets(pipe.unet, pipe.vae)
    return pipe


def image(seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(16, 16), mode="bilinear")[0]


def restore(pipe, **kwargs) -> torch.Tensor:
    return pipe(image(), prompt="a photo", color_fix=None, output_type="pt", **kwargs).images


# --------------------------------------------------------------------------- plain diffusers
@pytest.mark.parametrize("role", ["projector", "restorer"])
def test_a_saved_set_loads_into_a_plain_stable_diffusion_pipeline(pipe, role, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe.save_adapter_set(tmp_path, role)
    tokenizer = make_tiny_tokenizer()
    plain = StableDiffusionPipeline(
        vae=make_tiny_vae(),
        text_encoder=make_tiny_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=make_tiny_unet(),
        scheduler=make_sd21_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    # The two lines the README and the model card give:
    plain.load_lora_weights(tmp_path, adapter_name=role)
    plain.vae.load_lora_adapter(tmp_path, prefix="vae", adapter_name=role, use_safetensors=True)

    g = torch.Generator().manual_seed(1)
    latents, pixels = torch.randn(2, 4, 8, 8, generator=g), torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    embeds, t = torch.randn(2, 77, 32, generator=g), torch.tensor([999, 999])
    with torch.no_grad(), pipe.use_adapter_set(role):
        ours = pipe.unet(latents, t, embeds).sample, pipe.vae.encode(pixels).latent_dist.mean
    with torch.no_grad():
        theirs = plain.unet(latents, t, embeds).sample, plain.vae.encode(pixels).latent_dist.mean
    torch.testing.assert_close(theirs[0], ours[0], rtol=0, atol=1e-5)  # measured: 0 (projector), 1.1e-6 (restorer)
    torch.testing.assert_close(theirs[1], ours[1], rtol=0, atol=1e-5)
    with torch.no_grad():  # and the set really changes both models
        assert (make_tiny_unet()(latents, t, embeds).sample - ours[0]).abs().max() > 1e-3
        assert (make_tiny_vae().encode(pixels).latent_dist.mean - ours[1]).abs().max() > 1e-3


# --------------------------------------------------------------------------- fusing
def test_fused_restorer_gives_the_unfused_output_and_pins_the_models(pipe, tmp_path):
    restorer_only, full = restore(pipe, use_projector=False), restore(pipe)
    pipe.fuse_adapter_set("restorer")
    assert fused_adapter_set(pipe.unet, pipe.vae) == "restorer"
    torch.testing.assert_close(restore(pipe, use_projector=False), restorer_only, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="'restorer' is fused into the base weights.*unfuse_adapter_set"):
        restore(pipe)  # the projector cannot run on fused restorer weights
    with pytest.raises(ValueError, match="unfuse them before saving"):
        pipe.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()  # refused before anything was written
    pipe.unfuse_adapter_set()
    torch.testing.assert_close(restore(pipe), full, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="'projector' is trainable"):
        pipe.fuse_adapter_set("projector")

    # diffusers' own fuse_lora / unfuse_lora on the models works the same way.
    with pipe.use_adapter_set("restorer"):
        pipe.unet.fuse_lora(adapter_names=["restorer"])
        pipe.vae.fuse_lora(adapter_names=["restorer"])
    torch.testing.assert_close(restore(pipe, use_projector=False), restorer_only, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="fused"):
        restore(pipe)
    pipe.unet.unfuse_lora(), pipe.vae.unfuse_lora()
    torch.testing.assert_close(restore(pipe), full, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- hooks and dtypes
def test_diffusers_layerwise_casting_survives_switching(pipe):
    expected = restore(pipe)
    pipe.unet.enable_layerwise_casting(storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
    for role in ("restorer", "projector", None, "restorer"):
        set_adapter_set(pipe.unet, pipe.vae, role)
    got = restore(pipe)
    assert pipe.unet.conv_in.base_layer.weight.dtype == torch.bfloat16  # the hooks are still there
    torch.testing.assert_close(got, expected, rtol=0, atol=0.05)  # bf16 storage of the UNet


def test_bf16_base_with_fp32_trainable_projector_trains(pipe):
    from diffusers.training_utils import cast_training_params

    pipe.unet.to(torch.bfloat16), pipe.vae.to(torch.bfloat16)
    cast_training_params(pipe.unet, dtype=torch.float32)  # the mixed-precision training recipe
    cast_training_params(pipe.vae, dtype=torch.float32)
    projector = adapter_set_parameters(pipe.unet, pipe.vae, "projector", trainable_only=True)
    assert projector and all(p.dtype == torch.float32 for p in projector)
    assert all(p.dtype == torch.bfloat16 for p in adapter_set_parameters(pipe.unet, pipe.vae, "restorer"))
    x = image()[None] * 2 - 1
    embeds = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(0))
    with use_adapter_set(pipe.unet, pipe.vae, "projector"):
        lq = one_step_restore(pipe.unet, pipe.vae, x, embeds, pipe.scheduler)
    with use_adapter_set(pipe.unet, pipe.vae, "restorer"):  # own conv_in in bf16 on a bf16 base
        hq = one_step_restore(pipe.unet, pipe.vae, lq, embeds, pipe.scheduler)
    hq.float().square().mean().backward()
    grads = [p.grad for p in projector]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().max() > 0 for g in grads)


# --------------------------------------------------------------------------- direct calls and wrappers
@pytest.mark.parametrize("damage", ["peft set_adapter on the UNet", "diffusers set_adapters, two at once"])
def test_direct_peft_or_diffusers_switches_never_mix_sets_in_a_call(pipe, damage):
    expected = restore(pipe)
    flags = {n: p.requires_grad for n, p in pipe.unet.named_parameters()}
    set_adapter_set(pipe.unet, pipe.vae, "projector")
    if damage.startswith("peft"):
        pipe.unet.set_adapter("restorer")  # UNet under the restorer, VAE still under the projector
        message = "UNet runs adapter set 'restorer' but the VAE runs 'projector'"
    else:
        pipe.unet.set_adapters(["projector", "restorer"])
        message = "runs several adapters at once"
    with pytest.raises(ValueError, match=message):
        get_active_adapter_set(pipe.unet, pipe.vae)
    assert any(p.requires_grad for p in adapter_set_parameters(pipe.unet, pipe.vae, "restorer"))  # peft's doing
    torch.testing.assert_close(restore(pipe), expected, rtol=0, atol=0)  # the call switches both models itself
    with pipe.use_adapter_set("projector"):
        assert get_active_adapter_set(pipe.unet, pipe.vae) == "projector"
    assert {n: p.requires_grad for n, p in pipe.unet.named_parameters()} == flags  # trainability re-asserted


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_switching_sees_through_compile_and_ddp_wrappers(pipe):
    compiled = torch.compile(pipe.unet)  # lazily compiled: nothing is compiled by switching
    set_adapter_set(compiled, pipe.vae, "projector")
    assert get_active_adapter_set(pipe.unet, pipe.vae) == "projector"
    assert list_adapter_sets(compiled) == ["projector", "restorer"]
    with use_adapter_set(compiled, pipe.vae, "restorer"):
        assert get_active_adapter_set(pipe.unet, pipe.vae) == "restorer"

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(pipe.unet)
        with use_adapter_set(ddp, pipe.vae, "restorer"):
            assert get_active_adapter_set(ddp, pipe.vae) == "restorer"
        assert get_active_adapter_set(pipe.unet, pipe.vae) == "projector"
    finally:
        torch.distributed.destroy_process_group()
    with pytest.raises(TypeError, match="unet must be a torch.nn.Module"):
        set_adapter_set("unet", pipe.vae, "projector")


# --------------------------------------------------------------------------- offload
def test_model_cpu_offload_runs_the_pipeline_unchanged(pipe):
    expected = restore(pipe, lfo_steps=1)
    pipe.enable_model_cpu_offload(device="cpu")
    assert hasattr(pipe.unet, "_hf_hook") and hasattr(pipe.vae, "_hf_hook")
    torch.testing.assert_close(restore(pipe, lfo_steps=1), expected, rtol=0, atol=0)


def test_one_step_functions_send_inputs_to_the_offload_execution_device(pipe):
    # enable_model_cpu_offload keeps a model on the CPU until its hook moves it to the accelerator
    # at call time; the inputs must go to the hook's execution device, not to where the weights wait.
    # The meta device stands in for the accelerator here (it computes shapes only).
    from accelerate import cpu_offload_with_hook

    cpu_offload_with_hook(pipe.vae, execution_device="meta")
    cpu_offload_with_hook(pipe.unet, execution_device="meta")
    assert pipe.unet.conv_in.base_layer.weight.device.type == "cpu"
    x = image()[None] * 2 - 1
    with torch.no_grad(), pipe.use_adapter_set("restorer"):
        latents = encode_image(pipe.vae, x)
        assert latents.device.type == "meta" and latents.shape == (1, 4, 8, 8)
        eps = predict_noise(pipe.unet, torch.zeros(1, 4, 8, 8), torch.zeros(1, 77, 32))
        assert eps.device.type == "meta" and eps.shape == (1, 4, 8, 8)
        assert decode_latents(pipe.vae, torch.zeros(1, 4, 8, 8)).device.type == "meta"
