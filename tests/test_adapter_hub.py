"""Adapter-set folders as Hub repos: the model card, loading back from a repo id (with a local folder
standing in for the Hub, no network), and save_pretrained keeping the parameters an optimiser holds."""

from __future__ import annotations

import pathlib

import pytest
import torch
from conftest import make_tiny_pipeline
from diffusers import DiffusionPipeline
from huggingface_hub import ModelCard
from huggingface_hub.errors import LocalEntryNotFoundError
from lora_reference import build_two_sets

import diffusers_irib.pipeline_irib as pipeline_module
from diffusers_irib import IRIBRestorationPipeline
from diffusers_irib.adapters import AdapterSetConfig, get_adapter_set_config
from diffusers_irib.degradations import DegradationConfig

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def pipe():
    pipe = make_tiny_pipeline()
    build_two_sets(pipe.unet, pipe.vae)
    return pipe


def restore(pipe) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(16, 16), mode="bilinear")[0]
    return pipe(image, prompt="a photo", color_fix=None, output_type="pt").images


def test_a_saved_set_is_a_hub_repo_with_a_model_card(pipe, tmp_path):
    preset = DegradationConfig.extreme().to_dict()
    config = get_adapter_set_config(pipe.unet, "projector")
    config.degradation_preset = preset
    pipe.save_adapter_set(tmp_path, "projector", config)
    assert not (tmp_path / "adapter_config.json").exists()  # peft's file name is peft's
    assert AdapterSetConfig.from_json_file(tmp_path / "adapter_set_config.json").degradation_preset == preset

    card = ModelCard.load(tmp_path / "README.md")
    data = card.data.to_dict()
    assert "base_model" not in data  # the tiny base was built in memory: no Hub model to name
    assert "| base model | a local base model |" in card.text and "huggingface.co/sd2-community" not in card.text
    assert (data["library_name"], data["pipeline_tag"], data["license"]) == (
        "diffusers",
        "image-to-image",
        "openrail++",
    )
    assert {"lora", "image-restoration", "super-resolution", "irib", "projector"} <= set(data["tags"])
    text = card.text
    assert 'pipe.load_lora_weights("PATH_OR_REPO_ID", adapter_name="projector")' in text
    assert 'pipe.vae.load_lora_adapter("PATH_OR_REPO_ID", prefix="vae", adapter_name="projector"' in text
    assert 'projector="PATH_OR_REPO_ID"' in text
    assert "rank 4, alpha 8 (scale 2)" in text and "`elq` (version 1)" in text
    assert "$" not in text  # every template field was filled

    pipe.save_adapter_set(tmp_path / "restorer", "restorer")
    restorer_card = ModelCard.load(tmp_path / "restorer" / "README.md")
    assert "restorer" in restorer_card.data.tags and "full-rank LoRA with a bias" in restorer_card.text


def test_the_packaged_template_is_the_repository_model_card():
    packaged = REPO_ROOT / "src" / "diffusers_irib" / "templates" / "model_card.md"
    assert packaged.read_text(encoding="utf-8") == (REPO_ROOT / "model_card.md").read_text(encoding="utf-8")


def test_from_pretrained_of_a_hub_repo_brings_back_its_adapter_sets(pipe, tmp_path, monkeypatch):
    expected = restore(pipe)
    pipe.save_pretrained(tmp_path / "repo")  # what an upload of save_pretrained's folder holds
    pipe.save_adapter_set(tmp_path / "projector-repo", "projector")
    calls = {"base": [], "snapshot": [], "file": []}
    base_loader = DiffusionPipeline.from_pretrained.__func__

    def fake_base(cls, name, **kwargs):
        calls["base"].append((name, kwargs))
        return base_loader(cls, tmp_path / "repo")

    def fake_snapshot(repo_id, **kwargs):
        calls["snapshot"].append((repo_id, kwargs))
        return str(tmp_path / "repo")

    def fake_file(repo_id, filename, **kwargs):
        calls["file"].append((repo_id, filename, kwargs))
        return str(tmp_path / "projector-repo" / filename)

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(fake_base))
    monkeypatch.setattr(pipeline_module, "snapshot_download", fake_snapshot)
    monkeypatch.setattr("diffusers_irib.hub_utils.is_cached", lambda *args, **kwargs: True)  # the fake Hub's repos
    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_file)

    loaded = IRIBRestorationPipeline.from_pretrained("org/irib-sd21", revision="v1", cache_dir=str(tmp_path / "c"))
    loaded.set_progress_bar_config(disable=True)
    assert loaded.adapter_sets == ["projector", "restorer"]
    torch.testing.assert_close(restore(loaded), expected, rtol=0, atol=1e-6)
    assert calls["snapshot"] == [
        ("org/irib-sd21", {"cache_dir": str(tmp_path / "c"), "revision": "v1", "allow_patterns": ["adapter_sets/*"]})
    ]

    # An explicit adapter repo gets the session options, never the base repo's revision.
    IRIBRestorationPipeline.from_pretrained(
        "org/irib-sd21", revision="v1", cache_dir=str(tmp_path / "c"), projector="org/projector"
    )
    assert calls["file"] and all(repo == "org/projector" for repo, _, _ in calls["file"])
    assert all(kw == {"cache_dir": str(tmp_path / "c")} for _, _, kw in calls["file"])
    calls["file"].clear()
    IRIBRestorationPipeline.from_pretrained(
        "org/irib-sd21", projector="org/projector", adapter_set_kwargs={"revision": "r2"}
    )
    assert all(kw == {"revision": "r2"} for _, _, kw in calls["file"])

    # Offline with the base cached but not its adapter_sets/: the base still loads.
    def offline_snapshot(repo_id, **kwargs):
        raise LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(pipeline_module, "snapshot_download", offline_snapshot)
    assert IRIBRestorationPipeline.from_pretrained("org/irib-sd21").adapter_sets == []


def test_save_pretrained_keeps_the_parameters_an_optimiser_holds(pipe, tmp_path):
    params = {id(p) for p in [*pipe.unet.parameters(), *pipe.vae.parameters()]}
    trainable = [p for p in pipe.unet.parameters() if p.requires_grad] + [
        p for p in pipe.vae.parameters() if p.requires_grad
    ]
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    before = restore(pipe)
    pipe.save_pretrained(tmp_path)
    assert {id(p) for p in [*pipe.unet.parameters(), *pipe.vae.parameters()]} == params
    torch.testing.assert_close(restore(pipe), before, rtol=0, atol=0)
    with pipe.use_adapter_set("projector"):  # one training step on the projector
        loss = pipe.unet(torch.ones(1, 4, 8, 8), 999, torch.ones(1, 77, 32)).sample.square().mean()
    loss.backward()
    optimizer.step()
    assert (restore(pipe) - before).abs().max() > 1e-4  # the optimiser still trains the live model
