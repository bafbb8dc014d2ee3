"""irib-restore as a batch tool: inputs, output names and formats, per-image failures, checks first.

The models are the tiny random pipeline, handed to the command in place of loading (the loading
itself is tested in test_cli_restore.py).
"""

import errno
import json
import os

import pytest
import torch
from PIL import Image

from diffusers_irib.cli import restore
from diffusers_irib.tiny import make_tiny_pipeline
from diffusers_irib.utils.image_files import bundled_image_path


@pytest.fixture(scope="module")
def tiny_pipe():
    pipe = make_tiny_pipeline(with_adapter_sets=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def models(monkeypatch, tiny_pipe):
    """The tiny pipeline stands in for the real models; records how often it was loaded."""
    loads = []

    def load(args, device, dtype):
        loads.append((device, dtype))
        return tiny_pipe

    monkeypatch.setattr(restore, "load_pipeline", load)
    return loads


def photo(path, size=(20, 14)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(bundled_image_path()).resize(size).save(path)
    return path


def run(argv) -> int:
    """The command's exit status, whether main returns it or exits with it."""
    try:
        return restore.main([*argv, "--device", "cpu", "--lfo-steps", "0"])
    except SystemExit as exit:
        return exit.code


# --------------------------------------------------------------------------- inputs and outputs
def test_folders_globs_and_positional_images_in_one_batch(tmp_path, models, capsys):
    photo(tmp_path / "in" / "a.png")
    photo(tmp_path / "in" / "b.jpg")
    photo(tmp_path / "more" / "c.png")
    photo(tmp_path / "d.png")
    argv = [str(tmp_path / "d.png"), "-i", str(tmp_path / "in"), "-i", str(tmp_path / "more" / "*.png")]
    assert run([*argv, "-o", str(tmp_path / "out")]) == 0
    names = sorted(os.listdir(tmp_path / "out"))
    assert names == sorted(f"{s}_{k}.png" for s in "abcd" for k in ("restored", "lq_proxy"))
    assert len(models) == 1  # the models load once for the whole batch
    assert "restored 4 of 4 image(s)" in capsys.readouterr().out


def test_suffix_ext_no_lq_proxy_and_save_prompts(tmp_path, models):
    photo(tmp_path / "a.png")
    photo(tmp_path / "b.jpg")
    argv = ["-i", str(tmp_path / "a.png"), "-i", str(tmp_path / "b.jpg"), "--output-dir", str(tmp_path / "out")]
    argv += ["--suffix", "x4", "--ext", "auto", "--no-lq-proxy", "--save-prompts", "--prompt", "a face"]
    assert run(argv) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["a_prompts.json", "a_x4.png", "b_prompts.json", "b_x4.jpg"]
    assert Image.open(tmp_path / "out" / "b_x4.jpg").format == "JPEG"
    record = json.loads((tmp_path / "out" / "a_prompts.json").read_text())
    assert record["input"] == str(tmp_path / "a.png") and record["restored"] == str(tmp_path / "out" / "a_x4.png")
    assert record["projector_prompts"] == ["a face"] and record["restorer_prompt"] == "a face"


@pytest.mark.parametrize("ext, fmt", [("jpg", "JPEG"), ("webp", "WEBP")])
def test_ext_chooses_the_output_format(tmp_path, models, ext, fmt):
    photo(tmp_path / "a.png")
    assert run([str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--ext", ext]) == 0
    assert Image.open(tmp_path / "out" / f"a_restored.{ext}").format == fmt
    assert Image.open(tmp_path / "out" / f"a_lq_proxy.{ext}").format == fmt


def test_exif_orientation_is_applied_before_restoring(tmp_path, models):
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(bundled_image_path()).resize((24, 16)).save(tmp_path / "phone.jpg", exif=exif)
    assert run([str(tmp_path / "phone.jpg"), "-o", str(tmp_path / "out")]) == 0
    assert Image.open(tmp_path / "out" / "phone_restored.png").size == (16, 24)


def test_output_files_follow_the_umask(tmp_path, models):
    photo(tmp_path / "a.png")
    old = os.umask(0o002)
    try:
        assert run([str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--save-prompts"]) == 0
    finally:
        os.umask(old)
    for name in os.listdir(tmp_path / "out"):
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o664, name


# --------------------------------------------------------------------------- never lose a file
def test_two_inputs_with_one_name_are_refused_before_loading(tmp_path, models, capsys):
    a, b = photo(tmp_path / "a" / "photo.png"), photo(tmp_path / "b" / "photo.png")
    assert run([str(a), str(b), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "photo_restored.png" in err and "written twice" in err and str(a) in err and str(b) in err
    assert models == [] and not (tmp_path / "out").exists()


def test_existing_outputs_need_overwrite(tmp_path, models, capsys):
    photo(tmp_path / "a.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a_restored.png").write_bytes(b"keep me")
    assert run([str(tmp_path / "a.png"), "-o", str(tmp_path / "out")]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err and models == []
    assert (tmp_path / "out" / "a_restored.png").read_bytes() == b"keep me"
    assert run([str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--overwrite"]) == 0
    assert Image.open(tmp_path / "out" / "a_restored.png").size == (20, 14)


def test_an_input_is_never_replaced_even_with_overwrite(tmp_path, models, capsys):
    source = photo(tmp_path / "a.png")
    before = source.read_bytes()
    assert run([str(source), "-o", str(tmp_path), "--suffix", "", "--no-lq-proxy", "--overwrite"]) == 2
    assert "is the input file" in capsys.readouterr().err and source.read_bytes() == before


# --------------------------------------------------------------------------- arguments, before any model
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tile-overlap", "64"], "--tile-overlap needs --tile-size"),
        (["--tile-size", "64", "--tile-overlap", "64"], "--tile-overlap must be less than --tile-size (64), got 64"),
        (["--tile-size", "100"], "argument --tile-size: must be a multiple of 8, got 100"),
        (["--tile-size", "32"], "argument --tile-size: must be an integer in [64, 8192], got 32"),
        (["--upscale", "nan"], "argument --upscale: must be a number in (0, 16], got nan"),
        (["--upscale", "inf"], "argument --upscale"),
        (["--upscale", "0"], "argument --upscale"),
        (["--upscale", "17"], "argument --upscale: must be a number in (0, 16], got 17"),
        (["--seed", "1e23"], "argument --seed: must be an integer in [0, 2**63 - 1], got '1e23'"),
        (["--seed", str(2**63)], "argument --seed"),
        (["--lfo-steps", "-1"], "argument --lfo-steps"),
        (["--suffix", "../x"], "argument --suffix: must be a plain file-name part"),
        (["--suffix", "a/b"], "argument --suffix"),
        (["--ext", "gif"], "argument --ext: invalid choice"),
        (["--prompt", "a", "--extractor", "clip"], "give --prompt or --extractor clip, not both"),
        (["--extractor-model", "m"], "--extractor-model needs --extractor"),
        (["--dape-checkpoint", "d.pth"], "--dape-checkpoint is only used with --extractor ram"),
        (["--extractor", "ram"], "--extractor ram needs --extractor-model"),
        (["--extractor", "ram", "--extractor-model", "nope.pth"], "--extractor-model 'nope.pth': no such file"),
        (["--dtype", "fp16"], "--dtype fp16 needs a GPU"),
        (["--device", "cuda"], "CUDA is not available"),
        (["--device", "cuda:x"], "is not a torch device"),
    ],
)
def test_bad_arguments_are_refused_before_loading_models(tmp_path, models, capsys, monkeypatch, argv, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    photo(tmp_path / "a.png")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        restore.main([str(tmp_path / "a.png"), "-o", str(out), *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and "Traceback" not in err
    assert models == [] and not out.exists()


@pytest.mark.parametrize(
    "inputs, message",
    [
        ([], "give at least one input image"),
        (["-i", "{tmp}/empty"], "holds no images"),
        (["-i", "{tmp}/*.tif"], "matches no image files"),
        (["{tmp}/missing.png"], "no such file or folder"),
    ],
)
def test_inputs_that_give_no_image_are_refused(tmp_path, models, capsys, inputs, message):
    (tmp_path / "empty").mkdir()
    assert run([s.format(tmp=tmp_path) for s in inputs] + ["-o", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err and models == []


# --------------------------------------------------------------------------- one image fails, the batch goes on
def test_an_unreadable_image_is_skipped_and_the_rest_restored(tmp_path, models, capsys):
    photo(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "b.png").write_bytes(b"\x89PNG broken")
    assert run(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "b.png" in captured.err and "cannot read image" in captured.err
    assert "restored 1 of 2 image(s)" in captured.out and "1 failed" in captured.out
    assert sorted(os.listdir(tmp_path / "out")) == ["a_lq_proxy.png", "a_restored.png"]


def test_all_images_unreadable_loads_no_model_and_makes_no_folder(tmp_path, models, capsys):
    (tmp_path / "b.png").write_bytes(b"not an image")
    assert run([str(tmp_path / "b.png"), "-o", str(tmp_path / "out")]) == 1
    assert models == [] and not (tmp_path / "out").exists()


def test_an_image_too_large_to_upscale_is_skipped_with_the_numbers(tmp_path, models, capsys):
    photo(tmp_path / "big.png", (600, 20))
    photo(tmp_path / "small.png", (4, 3))
    assert (
        run([str(tmp_path / "big.png"), str(tmp_path / "small.png"), "-o", str(tmp_path / "out"), "--upscale", "16"])
        == 1
    )
    err = capsys.readouterr().err
    assert "big.png' is 600x20 px; --upscale 16 would make it 9600x320, more than 8192 px a side" in err
    assert (tmp_path / "out" / "small_restored.png").exists()


def test_a_decompression_bomb_is_skipped(tmp_path, models, capsys, monkeypatch):
    photo(tmp_path / "bomb.png", (40, 30))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert run([str(tmp_path / "bomb.png"), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "bomb.png" in err and "decompression bomb" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), RuntimeError("out of memory")]
)
def test_out_of_memory_on_one_image_gives_a_hint_and_the_batch_goes_on(
    tmp_path, models, tiny_pipe, capsys, monkeypatch, error
):
    photo(tmp_path / "a.png")
    photo(tmp_path / "b.png")
    call = type(tiny_pipe).__call__

    def first_fails(self, image, **kwargs):
        if not getattr(first_fails, "failed", False):
            first_fails.failed = True
            raise error
        return call(self, image, **kwargs)

    monkeypatch.setattr(type(tiny_pipe), "__call__", first_fails)
    assert run([str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "a.png" in captured.err and "out of memory; try --tile-size 512" in captured.err
    assert "restored 1 of 2 image(s)" in captured.out
    assert sorted(os.listdir(tmp_path / "out")) == ["b_lq_proxy.png", "b_restored.png"]


def test_debug_reraises_a_failing_image(tmp_path, models, tiny_pipe, monkeypatch):
    photo(tmp_path / "a.png")

    def oom(self, image, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(type(tiny_pipe), "__call__", oom)
    with pytest.raises(torch.OutOfMemoryError):
        run([str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--debug"])


def test_a_full_disk_stops_the_batch_with_one_line(tmp_path, models, capsys, monkeypatch):
    photo(tmp_path / "a.png")
    photo(tmp_path / "b.png")

    def full(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    assert run([str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("irib-restore: error: cannot write ")
    assert "No space left on device" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
