"""irib-web without a browser: the page's callback on the tiny pipeline, its refusals, the missing-
models mode, the temporary folder, the layout (built, not launched) and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from diffusers_irib.tiny import make_tiny_pipeline
from diffusers_irib.utils.image_files import bundled_image_path
from diffusers_irib.utils.model_sources import ModelSpec, missing_models_message
from diffusers_irib.web import RestoreOptions, WebLimits, WebRestorer, WorkDir
from diffusers_irib.web import server as web_cli
from diffusers_irib.web.service import fit_side, tile_size_for

SIDE = 64  # the bundled 512 px photo is downscaled to this (max_side): a restore takes about a second


@pytest.fixture(scope="module")
def pipe():
    pipe = make_tiny_pipeline(with_adapter_sets=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def workdir(tmp_path):
    wd = WorkDir(tmp_path / "irib-web")
    yield wd
    wd.cleanup()


@pytest.fixture
def restorer(pipe, workdir):
    return WebRestorer(pipe, workdir, WebLimits(max_side=SIDE), tiny=True)


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def save_png(path, width, height, color=(200, 120, 40)):
    Image.new("RGB", (width, height), color).save(path)
    return path


# --------------------------------------------------------------------------- restoring
def test_bundled_photo_gives_the_restored_image_every_round_and_a_download(restorer, workdir):
    result = restorer.restore(bundled_image_path(), RestoreOptions(lfo_steps=1, prompt="an astronaut"))
    assert result.ok, result.message
    shown, restored = result.comparison
    assert pixels(shown).shape == pixels(restored).shape == (SIDE, SIDE, 3)
    assert "512x512 to 64x64" in result.message and "UNTRAINED" in result.message
    assert result.seconds > 0 and f"{result.seconds:.1f} s" in result.message
    # one LQ proxy per projector round (1 + lfo_steps), captioned with its round's prompt
    assert [caption for _, caption in result.lq_proxies] == ["round 1: an astronaut", "round 2: an astronaut"]
    assert all(pixels(path).shape == (SIDE, SIDE, 3) for path, _ in result.lq_proxies)
    lines = result.prompts.splitlines()
    assert lines[0] == "Prompts (your prompt, in every round):"
    assert lines[1:] == [
        "projector round 1 (from the input): an astronaut",
        "projector round 2 (LFO step 1, from LQ proxy 1): an astronaut",
        "restorer (from LQ proxy 2): an astronaut",
    ]
    assert os.path.basename(result.download) == "astronaut_restored.png"
    for path in [result.download, *result.comparison, *(p for p, _ in result.lq_proxies)]:
        assert os.path.isfile(path) and workdir.contains(path)


def test_degrading_first_changes_the_input_shown_and_is_reproducible(restorer):
    def shown(degrade="none", seed=0):
        result = restorer.restore(
            bundled_image_path(), RestoreOptions(degrade=degrade, degrade_seed=seed, lfo_steps=0)
        )
        assert result.ok, result.message
        return pixels(result.comparison[0]), result

    clean, _ = shown()
    elq, result = shown("ELQ", 3)
    assert "degraded first with the ELQ preset, seed 3" in result.message
    assert np.abs(elq.astype(int) - clean.astype(int)).mean() > 5  # ELQ is far from the clean photo
    np.testing.assert_array_equal(shown("ELQ", 3)[0], elq)  # same seed, same picture
    assert not np.array_equal(shown("ELQ", 4)[0], elq)


def test_upscale_and_tiles(restorer):
    result = restorer.restore(bundled_image_path(), RestoreOptions(lfo_steps=0, upscale=1.5, tile="256"))
    assert result.ok, result.message
    shown, restored = result.comparison
    assert pixels(shown).shape == pixels(restored).shape == (96, 96, 3)  # the slider compares equal sizes
    assert "upscale 1.5" in result.message and "tiles of 256 px" in result.message
    assert tile_size_for(96, 96, "auto", 1024) is None
    assert tile_size_for(1500, 800, "auto", 1024) == 1024
    assert tile_size_for(1500, 800, "auto", 0) is None and tile_size_for(100, 100, "off", 64) is None
    assert fit_side(512, 256, 128) == (128, 64) and fit_side(100, 50, 128) == (100, 50) and fit_side(9, 9, 0) == (9, 9)


# --------------------------------------------------------------------------- refusals
def test_bad_uploads_get_a_message_naming_the_problem(pipe, workdir, tmp_path):
    restorer = WebRestorer(pipe, workdir, WebLimits(max_pixels=100 * 100, max_upload_mb=1), tiny=True)
    text = tmp_path / "notes.png"
    text.write_text("these are notes, not a picture\n")
    cases = {
        text: ["'notes.png' is not an image", "unknown format"],
        save_png(tmp_path / "big.png", 120, 100): [
            "120x100 px (12000 pixels)",
            "at most 10000 pixels",
            "downscale it first",
        ],
        save_png(tmp_path / "dot.png", 1, 1): ["1x1 px", "too small", "at least 4 px a side"],
        tmp_path / "gone.png": ["'gone.png' is gone"],
    }
    heavy = tmp_path / "heavy.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)).save(heavy)
    cases[heavy] = ["'heavy.png' is 1.4 MB", "up to 1 MB"]
    for path, expected in cases.items():
        result = restorer.restore(path, RestoreOptions(lfo_steps=0))
        assert not result.ok and result.comparison is None and result.download is None
        for part in expected:
            assert part in result.message, (path.name, result.message)
        assert str(tmp_path) not in result.message  # the server's paths stay on the server
    assert "Upload an image" in restorer.restore(None, RestoreOptions()).message
    small = WebRestorer(pipe, workdir, WebLimits(max_pixels=90 * 90), tiny=True)
    upscaled = small.restore(save_png(tmp_path / "ok.png", 64, 64), RestoreOptions(lfo_steps=0, upscale=2))
    assert "upscale 2 would make 64x64 px into 128x128" in upscaled.message and "lower the upscale" in upscaled.message
    assert list(workdir.results.iterdir()) == []  # nothing written for a refusal


@pytest.mark.parametrize(
    "options, expected",
    [
        (RestoreOptions(lfo_steps=99), "LFO steps must be an integer in [0, 10]"),
        (RestoreOptions(upscale=float("nan")), "upscale must be a number in [1, 4]"),
        (RestoreOptions(extractor="clip"), "'clip' is not loaded on this server; choose one of none"),
        (RestoreOptions(degrade="XLQ"), "degrade first must be one of none, LQ, ELQ"),
        (RestoreOptions(tile="100"), "tile size must be one of auto, off"),
        (RestoreOptions(color_fix="sepia"), "colour fix must be one of adain, wavelet, none"),
        (RestoreOptions(prompt="x" * 301), "at most 300 characters"),
        (RestoreOptions(degrade_seed=-1), "seed must be an integer"),
    ],
)
def test_options_sent_through_the_api_are_checked(restorer, options, expected):
    result = restorer.restore(bundled_image_path(), options)
    assert not result.ok and expected in result.message


def test_the_elq_degradation_needs_16_pixels(pipe, workdir, tmp_path):
    restorer = WebRestorer(pipe, workdir, WebLimits(), tiny=True)
    result = restorer.restore(save_png(tmp_path / "small.png", 12, 12), RestoreOptions(degrade="ELQ", lfo_steps=0))
    assert not result.ok and "at least 16 px a side" in result.message and "12x12" in result.message


def test_a_failing_pipeline_gives_a_message(workdir, tmp_path):
    class Broken:
        min_image_size = 8

        def __call__(self, *args, **kwargs):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB\nmore lines")

    result = WebRestorer(Broken(), workdir).restore(save_png(tmp_path / "a.png", 32, 32), RestoreOptions())
    assert not result.ok and result.message.startswith("out of memory: choose a smaller tile size")


# --------------------------------------------------------------------------- missing models
def test_without_models_restore_answers_how_to_get_them(workdir, tmp_path):
    specs = [ModelSpec(role, str(tmp_path / role)) for role in ("base", "projector", "restorer")]
    message = missing_models_message(specs, tiny_command="irib-web --tiny")
    restorer = WebRestorer(None, workdir, missing_message=message)
    result = restorer.restore(bundled_image_path(), RestoreOptions())
    assert not result.ok and result.message == message
    assert "how to get it" in message and "`irib-web --tiny`" in message and "irib-convert-osediff" in message
    with pytest.raises(ValueError, match="missing_message"):
        WebRestorer(None, workdir)


def test_the_command_line_serves_without_models_and_says_so(tmp_path, monkeypatch):
    args = web_cli.build_parser().parse_args(
        ["--base", str(tmp_path / "b"), "--projector", str(tmp_path / "p"), "--restorer", str(tmp_path / "r")]
    )
    pipe, message = web_cli.load_models(args, "cpu", None)
    assert pipe is None and "base: " in message and "`irib-web --tiny`" in message


# --------------------------------------------------------------------------- the temporary folder
def test_workdir_prunes_old_restores_and_is_removed(tmp_path):
    wd = WorkDir(tmp_path / "w", keep_seconds=60)
    old, new = wd.new_request_dir(), wd.new_request_dir()
    assert wd.contains(old) and not wd.contains(tmp_path / "elsewhere")
    os.utime(old, (time.time() - 120, time.time() - 120))
    assert wd.prune() == 1 and not old.exists() and new.exists()
    wd.cleanup()
    assert not wd.root.exists()
    wd.cleanup()  # twice is fine
    default = WorkDir()
    assert default.root.name.startswith("irib-web-") and default.gradio_cache.is_dir()
    default.cleanup()
    assert not default.root.exists()


# --------------------------------------------------------------------------- the page
def test_build_demo_constructs_the_page_in_the_work_folder(pipe, workdir, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(workdir.root / "before"))  # restored after the test
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "True")
    import gradio as gr

    from diffusers_irib.web import build_demo

    demo = build_demo(pipe, tiny=True, workdir=workdir, limits=WebLimits(max_side=SIDE))
    assert isinstance(demo, gr.Blocks) and demo.irib_workdir is workdir
    assert os.environ["GRADIO_TEMP_DIR"] == str(workdir.gradio_cache)
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False" and demo.analytics_enabled is False
    config = json.dumps(demo.get_config_file())
    assert "UNTRAINED" in config and "irib-restore" in config and "irib-slider" in config
    assert (workdir.root / "samples" / "astronaut.png").is_file()  # the example is served from the work folder
    missing = build_demo(
        None, missing_message="These models are missing:\n  - base: 'x'\n      how to get it: y", workdir=workdir
    )
    config = json.dumps(missing.get_config_file())
    assert "**base**: 'x'" in config and "how to get it: y" in config


def test_the_callback_turns_page_values_into_outputs(pipe, workdir, tmp_path):
    from diffusers_irib.web.app import make_callback, message_markdown

    callback = make_callback(WebRestorer(pipe, workdir, WebLimits(max_side=SIDE), tiny=True))
    # sliders and numbers arrive as floats
    status, comparison, gallery, prompts, download = callback(
        str(bundled_image_path()), "LQ", 1.0, 0.0, "", "none", "wavelet", 1.0, "auto"
    )
    assert status.startswith("**Restored** 64x64 px") and len(comparison) == 2 and len(gallery) == 1
    assert "restorer (from LQ proxy 1): (empty prompt)" in prompts and download.endswith("astronaut_restored.png")
    text = tmp_path / "x.png"
    text.write_text("no")
    with pytest.warns(UserWarning, match="not an image"):  # gr.Warning outside a page: a Python warning
        status, comparison, gallery, prompts, download = callback(
            str(text), "none", 0, 2, "", "none", "adain", 1, "auto"
        )
    assert status.startswith("**Not restored:** 'x.png' is not an image")
    assert (comparison, gallery, prompts, download) == (None, [], "", None)  # the last results are cleared
    assert message_markdown("A:\n  - base: 'b'\n      how: c\nEnd.") == "A:\n\n**base**: 'b'  \nhow: c\n\nEnd."


# --------------------------------------------------------------------------- the command line
HELP_CHECK = textwrap.dedent(
    """
    import json, sys, time
    start = time.perf_counter()
    from diffusers_irib.cli.web import main
    codes = []
    for argv in (["--help"], ["--auto-tile-above", "30"], ["--port", "0"], ["--prompt", "x", "--extractor", "clip"]):
        try:
            main(argv)
        except SystemExit as exit:
            codes.append(exit.code)
    heavy = [m for m in ("torch", "diffusers", "gradio", "transformers") if m in sys.modules]
    print(json.dumps({"codes": codes, "heavy": heavy, "seconds": time.perf_counter() - start}))
    """
)


def test_help_and_argument_errors_are_fast_and_import_nothing_heavy():
    result = subprocess.run([sys.executable, "-c", HELP_CHECK], capture_output=True, text=True, timeout=120)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["codes"] == [0, 2, 2, 2] and report["heavy"] == [] and report["seconds"] < 2.0, report
    assert "--auto-tile-above: must be an integer in [64, 8192]" in result.stderr
    assert "give --prompt or --extractor clip, not both" in result.stderr


def test_a_space_configures_the_server_with_environment_variables():
    env = {"IRIB_PROJECTOR": "me/projector", "IRIB_TINY": "1", "IRIB_WEB_ARGS": "--max-side 256 --prompt 'a photo'"}
    argv = web_cli.args_from_env(env)
    assert argv == ["--projector", "me/projector", "--tiny", "--max-side", "256", "--prompt", "a photo"]
    args = web_cli.build_parser().parse_args(argv)
    assert args.tiny and args.max_side == 256 and args.prompt == "a photo" and args.host == "127.0.0.1"
    assert web_cli.args_from_env({}) == []
