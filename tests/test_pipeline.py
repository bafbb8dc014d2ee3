"""IRIBRestorationPipeline on tiny components: exactness against hand-merged copies, the LFO
call-count contract, save/load round trips, tiling, plug-and-play and input handling."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import make_tiny_pipeline
from lora_reference import PROJ, REST, REST_SCALES, build_two_sets, reference_model
from photos import photo
from safetensors.torch import load_file

from diffusers_irib import IRIBRestorationPipeline
from diffusers_irib.adapters import get_active_adapter_set
from diffusers_irib.one_step import x0_coefficients


@pytest.fixture
def pipe():
    pipe = make_tiny_pipeline()
    build_two_sets(pipe.unet, pipe.vae)
    return pipe


def smooth_image(size=16, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0]


def text_embeddings(pipe, prompt: str) -> torch.Tensor:
    """CLIP last hidden states computed directly with the tokenizer and text encoder."""
    ids = pipe.tokenizer([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return pipe.text_encoder(ids)[0]


# --------------------------------------------------------------------------- exactness
def test_output_equals_hand_chained_merged_copies(pipe):
    image = smooth_image()
    out = pipe(image, prompt="a cat", color_fix=None, output_type="pt")

    embeds = text_embeddings(pipe, "a cat")
    projector = reference_model(pipe.unet, pipe.vae, "projector", PROJ["alpha"] / PROJ["rank"])
    restorer = reference_model(pipe.unet, pipe.vae, "restorer", REST["alpha"] / REST["rank"], REST_SCALES)
    with torch.no_grad():
        lq = projector(image[None] * 2 - 1, embeds)
        hq = restorer(lq, embeds)
    torch.testing.assert_close(out.lq_images, (lq + 1) / 2, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.images, (hq + 1) / 2, atol=1e-4, rtol=0)
    assert out.prompts == [["a cat"] * 4]  # one image: 3 projector rounds (default LFO x2), then the restorer


def test_restorer_alone_is_the_pretrained_baseline(pipe):
    image = smooth_image()
    out = pipe(image, use_projector=False, color_fix=None, output_type="pt")
    restorer = reference_model(pipe.unet, pipe.vae, "restorer", REST["alpha"] / REST["rank"], REST_SCALES)
    with torch.no_grad():
        hq = restorer(image[None] * 2 - 1, text_embeddings(pipe, ""))
    torch.testing.assert_close(out.images, (hq + 1) / 2, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.lq_images, image[None])


def test_switching_sets_changes_the_output_and_the_call_restores_the_active_set(pipe):
    pipe.unet.set_adapter("projector")
    image = smooth_image()
    full = pipe(image, color_fix=None, output_type="pt").images
    baseline = pipe(image, use_projector=False, color_fix=None, output_type="pt").images
    assert (full - baseline).abs().max() > 1e-3
    assert get_active_adapter_set(pipe.unet) == "projector"


def test_use_adapter_set_restores_the_previous_set_when_the_body_raises(pipe):
    before = get_active_adapter_set(pipe.unet)
    flags = {n: p.requires_grad for n, p in pipe.unet.named_parameters()}
    with pytest.raises(RuntimeError, match="boom"):
        with pipe.use_adapter_set("restorer" if before == "projector" else "projector"):
            raise RuntimeError("boom")
    assert get_active_adapter_set(pipe.unet) == before
    assert flags == {n: p.requires_grad for n, p in pipe.unet.named_parameters()}


# --------------------------------------------------------------------------- Look Forward Once
class RecordingExtractor:
    """Returns a new prompt per call and records the images it saw."""

    def __init__(self):
        self.seen: list[np.ndarray] = []

    def __call__(self, images):
        self.seen.append(np.stack([np.asarray(im) for im in images]))
        return [f"round {len(self.seen)}"] * len(images)


class CallCounter:
    def __init__(self, pipe):
        self.counts = {"encoder_projector": 0, "encoder_restorer": 0, "unet": 0, "decoder": 0, "text_encoder": 0}

        def count(key):
            return lambda *args: self.counts.__setitem__(key, self.counts[key] + 1)

        def count_encoder(*args):
            self.counts[f"encoder_{get_active_adapter_set(pipe.unet)}"] += 1

        pipe.vae.encoder.register_forward_hook(count_encoder)
        pipe.unet.register_forward_hook(count("unet"))
        pipe.vae.decoder.register_forward_hook(count("decoder"))
        pipe.text_encoder.register_forward_hook(count("text_encoder"))


@pytest.mark.parametrize("k", [0, 1, 2])
def test_lfo_call_count_contract_and_prompt_sources(pipe, k):
    counter = CallCounter(pipe)
    extractor = RecordingExtractor()
    image = smooth_image()
    out = pipe(
        image, lfo_steps=k, prompt_extractor=extractor, output_type="np", color_fix=None, return_intermediates=True
    )
    assert counter.counts == {
        "encoder_projector": 1,
        "encoder_restorer": 1,
        "unet": k + 2,
        "decoder": k + 2,
        "text_encoder": k + 2,  # one distinct prompt per round here
    }
    assert len(extractor.seen) == k + 2
    assert out.prompts == [[f"round {r + 1}" for r in range(k + 2)]]  # image 0's prompts, by round
    # round 1 sees the ELQ input, every later round the previous round's LQ proxy
    as_uint8 = lambda a: (np.asarray(a) * 255).round().astype(np.uint8)  # noqa: E731
    np.testing.assert_array_equal(extractor.seen[0][0], as_uint8(image.permute(1, 2, 0).numpy()))
    assert len(out.intermediate_lq_images) == k + 1
    for r in range(1, k + 2):
        np.testing.assert_array_equal(extractor.seen[r], as_uint8(out.intermediate_lq_images[r - 1]))
    np.testing.assert_array_equal(out.intermediate_lq_images[-1], out.lq_images)


def test_prompts_are_listed_per_image_by_round_like_images(pipe):
    """out.prompts[i] belongs to out.images[i], also when images of two sizes run as two batches."""

    def by_image_and_round(images):  # a prompt that names the image (its size and mean) and the call
        by_image_and_round.calls += 1
        return [f"{im.size[0]}px {np.asarray(im).mean():.0f} call {by_image_and_round.calls}" for im in images]

    by_image_and_round.calls = 0
    images = [torch.full((3, 16, 16), 0.2), torch.full((3, 8, 8), 0.5), torch.full((3, 16, 16), 0.8)]
    out = pipe(images, lfo_steps=1, prompt_extractor=by_image_and_round, color_fix=None, output_type="pil")
    assert len(out.prompts) == len(out.images) == 3
    assert [len(p) for p in out.prompts] == [3, 3, 3]  # projector rounds 1 + lfo_steps, then the restorer
    assert out.prompts[0][0] == "16px 51 call 1" and out.prompts[2][0] == "16px 204 call 1"  # one 16 px batch
    assert out.prompts[1][0] == "8px 128 call 4"  # the 8 px image runs after the 16 px batch's 3 rounds
    for i, image in enumerate(out.images):
        assert all(p.startswith(f"{image.size[0]}px") for p in out.prompts[i])
    assert [p.split(" call ")[1] for p in out.prompts[0]] == ["1", "2", "3"]
    assert out.prompts[1][-1].endswith("call 6")
    _, _, tuple_prompts = pipe(images, lfo_steps=1, prompt_extractor=by_image_and_round, return_dict=False)
    assert [len(p) for p in tuple_prompts] == [3, 3, 3]


def test_pipeline_default_lfo_steps_is_the_papers_best_row(pipe):
    """The default is Table 1's "LFO x2" row: three projector rounds and the restorer's."""
    from diffusers_irib.defaults import DEFAULT_LFO_STEPS

    assert DEFAULT_LFO_STEPS == 2
    assert "Table 1" in type(pipe).__call__.__doc__ and "LFO x2" in type(pipe).__call__.__doc__
    counter = CallCounter(pipe)
    pipe(smooth_image(), prompt_extractor=RecordingExtractor(), output_type="pt")
    assert counter.counts["unet"] == DEFAULT_LFO_STEPS + 2
    # the restorer alone has no projector prompt to refine: no LFO, no error
    out = pipe(smooth_image(), prompt="x", use_projector=False, output_type="pt")
    assert out.prompts == [["x"]]
    with pytest.raises(ValueError, match="use_projector=True"):  # asked for explicitly, it still is an error
        pipe(smooth_image(), lfo_steps=1, use_projector=False)


def test_rounds_that_repeat_the_last_prompt_reuse_its_lq_proxy(pipe):
    """A fixed prompt gives every LFO round the same input, so the projector runs once: the default
    lfo_steps=2 then costs (and returns) exactly what lfo_steps=0 does."""
    image = smooth_image()
    single = pipe(image, prompt="x", lfo_steps=0, output_type="pt", return_intermediates=True)
    counter = CallCounter(pipe)
    out = pipe(image, prompt="x", lfo_steps=2, output_type="pt", return_intermediates=True)
    assert counter.counts["unet"] == 2 and counter.counts["decoder"] == 2  # projector once, restorer once
    assert out.prompts == [["x", "x", "x", "x"]]  # every round is still listed
    assert len(out.intermediate_lq_images) == 3
    for lq in out.intermediate_lq_images:
        torch.testing.assert_close(lq, single.lq_images, atol=0, rtol=0)
    torch.testing.assert_close(out.images, single.images, atol=0, rtol=0)
    # a prompt that changes in round 3 only re-runs the projector there
    rounds = iter(["a", "a", "b", "b"])
    counter = CallCounter(pipe)
    pipe(image, lfo_steps=2, prompt_extractor=lambda images: [next(rounds)] * len(images))
    assert counter.counts["unet"] == 3  # rounds 1 and 3 of the projector, then the restorer


def test_text_encoder_runs_once_per_distinct_prompt(pipe):
    counter = CallCounter(pipe)
    pipe(smooth_image(), lfo_steps=2, prompt_extractor=lambda images: ["same"] * len(images))
    assert counter.counts["text_encoder"] == 1


# --------------------------------------------------------------------------- save / load
def test_save_pretrained_round_trip_reproduces_outputs_and_keeps_base_weights(pipe, tmp_path):
    image = smooth_image()
    expected = pipe(image, lfo_steps=1, output_type="pt").images
    base_unet = {k: v.clone() for k, v in make_tiny_pipeline().unet.state_dict().items()}

    pipe.save_pretrained(tmp_path)
    saved_unet = load_file(tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    assert set(saved_unet) == set(base_unet)  # no peft-wrapped keys
    for key, value in base_unet.items():
        assert torch.equal(saved_unet[key], value), key
    assert sorted(p.name for p in (tmp_path / "adapter_sets").iterdir()) == ["projector", "restorer"]

    # the pipeline that saved still works, with the same outputs
    torch.testing.assert_close(pipe(image, lfo_steps=1, output_type="pt").images, expected, atol=0, rtol=0)
    reloaded = IRIBRestorationPipeline.from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    assert reloaded.adapter_sets == ["projector", "restorer"]
    torch.testing.assert_close(reloaded(image, lfo_steps=1, output_type="pt").images, expected, atol=1e-6, rtol=0)


def test_adapter_sets_load_by_path_into_a_bare_base(pipe, tmp_path):
    image = smooth_image()
    expected = pipe(image, output_type="pt").images
    pipe.save_adapter_set(tmp_path / "proj", "projector")
    pipe.save_adapter_set(tmp_path / "rest", "restorer")
    bare = make_tiny_pipeline()
    bare.save_pretrained(tmp_path / "base")
    loaded = IRIBRestorationPipeline.from_pretrained(
        tmp_path / "base", projector=tmp_path / "proj", restorer=tmp_path / "rest"
    )
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(loaded(image, output_type="pt").images, expected, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- tiling
def test_latent_tiles_blend_without_seams(pipe, monkeypatch):
    """A random tiny UNet is global (attention, GroupNorm over the whole latent) and its noise is
    amplified ~14.6x by the x0 formula, so tiles of it cannot agree; a UNet with a 3x3 receptive
    field can. With it, the Gaussian-blended tiled run must match the untiled run."""
    a, b = x0_coefficients(pipe.scheduler)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def local_unet_noise(unet, latents, prompt_embeds):
        x0 = latents + 0.3 * conv(latents.float())
        return (a * latents - x0) / b

    monkeypatch.setattr("diffusers_irib.pipeline_irib.predict_noise", local_unet_noise)
    monkeypatch.setattr(pipe.vae, "enable_tiling", lambda: None)  # the VAE's own tiling is diffusers'
    image = smooth_image(128, seed=3)
    with torch.no_grad():
        whole = pipe(image, color_fix=None, output_type="pt").images
        for tile_size, overlap in ((32, 16), (64, 32)):
            tiled = pipe(image, color_fix=None, output_type="pt", tile_size=tile_size, tile_overlap=overlap).images
            assert (tiled - whole).abs().max() < 1e-3, (tile_size, (tiled - whole).abs().max())


def test_tiling_switches_vae_tiling_on_for_the_call_only(pipe, monkeypatch):
    states = []
    original = pipe.vae.encoder.forward
    monkeypatch.setattr(
        pipe.vae.encoder, "forward", lambda *args: states.append(pipe.vae.use_tiling) or original(*args)
    )
    out = pipe(smooth_image(64), tile_size=32, tile_overlap=16, output_type="pt")
    assert out.images.shape == (1, 3, 64, 64) and torch.isfinite(out.images).all()
    assert not pipe.vae.use_tiling
    pipe(smooth_image(16), tile_size=32, output_type="pt")  # smaller than a tile: no tiling
    assert not pipe.vae.use_tiling


# --------------------------------------------------------------------------- plug-and-play
def test_plug_and_play_restorer_gets_the_lq_proxy_and_its_prompts(pipe):
    received = {}

    def restorer(images, prompts):
        received["images"], received["prompts"] = images.clone(), prompts
        return 1 - images

    out = pipe(smooth_image(), prompt="sharp", restorer=restorer, color_fix=None, output_type="pt")
    torch.testing.assert_close(received["images"], out.lq_images)
    assert received["prompts"] == ["sharp"]
    torch.testing.assert_close(out.images, 1 - out.lq_images)


def test_plug_and_play_needs_no_restorer_set(tmp_path):
    pipe = make_tiny_pipeline()
    pipe.add_adapter_set("projector")
    out = pipe(smooth_image(), restorer=lambda images, prompts: images, output_type="pt", color_fix=None)
    torch.testing.assert_close(out.images, out.lq_images)


def test_a_restorer_returning_garbage_is_named(pipe):
    with pytest.raises(TypeError, match="restorer must return"):
        pipe(smooth_image(), restorer=lambda images, prompts: "nope")


# --------------------------------------------------------------------------- inputs and outputs
def test_odd_sizes_modes_and_upscale_come_back_at_the_right_size(pipe):
    rgba = PIL.Image.fromarray((photo("coffee", 13).permute(1, 2, 0).numpy() * 255).astype(np.uint8)).convert("RGBA")
    gray16 = (np.random.default_rng(0).random((11, 9)) * 65535).astype(np.uint16)
    out = pipe([rgba, gray16], upscale=2.0)
    assert [im.size for im in out.images] == [(26, 26), (18, 22)]
    assert [im.size for im in out.lq_images] == [(26, 26), (18, 22)]


def test_same_size_inputs_form_one_batch_and_return_dict_false_gives_a_tuple(pipe):
    images, lq, prompts = pipe(torch.rand(2, 3, 16, 16), output_type="np", return_dict=False)
    assert images.shape == lq.shape == (2, 16, 16, 3)
    assert prompts == [[""] * 4, [""] * 4]  # per image: 3 projector rounds (default LFO x2), the restorer


@pytest.mark.parametrize("color_fix", ["adain", "wavelet"])
def test_color_fixes_run_and_stay_in_range(pipe, color_fix):
    out = pipe(smooth_image(), color_fix=color_fix, output_type="pt")
    assert 0 <= out.images.min() and out.images.max() <= 1


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(image=[]), ValueError, "empty list"),
        (dict(image=object()), TypeError, "image must be a PIL image"),
        (dict(image=np.zeros((0, 5, 3), np.uint8)), ValueError, "zero size"),
        (dict(color_fix="sepia"), ValueError, "color_fix"),
        (dict(lfo_steps=-1), ValueError, "lfo_steps"),
        (dict(lfo_steps=1, use_projector=False), ValueError, "use_projector"),
        (dict(upscale=0), ValueError, "upscale"),
        (dict(output_type="latent"), ValueError, "output_type"),
        (dict(prompt=3), TypeError, "prompt"),
        (dict(prompt=["a", "b", "c"]), ValueError, "3 entries for 1 images"),
        (dict(prompt_extractor="tags"), TypeError, "prompt_extractor"),
        (dict(tile_size=12), ValueError, "tile_size"),
        (dict(tile_size=64, tile_overlap=64), ValueError, "tile_overlap"),
        (dict(prompt_extractor=lambda images: "not a list"), TypeError, "list"),
    ],
)
def test_bad_arguments_name_the_argument(pipe, kwargs, error, message):
    kwargs = {"image": smooth_image(), **kwargs}
    with pytest.raises(error, match=message):
        pipe(**kwargs)


def test_missing_adapter_set_is_named():
    pipe = make_tiny_pipeline()
    with pytest.raises(ValueError, match=r"missing adapter set\(s\) \['projector', 'restorer'\]"):
        pipe(smooth_image())
    pipe.add_adapter_set("restorer")
    with pytest.raises(ValueError, match=r"\['projector'\]"):
        pipe(smooth_image())
    pipe(smooth_image(), use_projector=False)  # the baseline needs no projector


def test_half_precision_pipeline_runs_and_stays_close_to_fp32(pipe):
    """bfloat16 weights (CPU has bf16 kernels; fp16 is checked on a GPU by the benchmark)."""
    image = smooth_image()
    expected = pipe(image, color_fix=None, output_type="pt").images
    pipe.to(dtype=torch.bfloat16)
    got = pipe(image, color_fix=None, output_type="pt").images
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - expected).abs().mean() < 0.03  # measured 0.005


def test_a_prompt_list_gives_each_image_its_own_prompt(pipe):
    out = pipe(
        [torch.rand(3, 16, 16), torch.rand(3, 8, 8), torch.rand(3, 16, 16)], prompt=["a", "b", "c"], output_type="pt"
    )
    assert out.prompts == [["a"] * 4, ["b"] * 4, ["c"] * 4]  # per image, by round (default LFO x2)
