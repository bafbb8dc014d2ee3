"""irib-degrade: files written, replayable params, and clear errors that leave nothing behind."""

import errno
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_irib.cli.degrade import main as degrade_main
from diffusers_irib.degradations import (
    DegradationConfig,
    DegradationParams,
    RealESRGANDegradation,
)
from diffusers_irib.utils.image_files import bundled_image_path, load_image


def run_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        degrade_main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_bundled_photo_is_a_512_rgb_png():
    with Image.open(bundled_image_path()) as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (512, 512)


def test_demo_writes_lq_and_elq_with_replayable_params(tmp_path, capsys):
    assert degrade_main(["--demo", "--size", "64", "--output-dir", str(tmp_path)]) == 0
    names = sorted(os.listdir(tmp_path))
    assert names == [
        "astronaut_elq.png",
        "astronaut_elq_params.json",
        "astronaut_hq.png",
        "astronaut_lq.png",
        "astronaut_lq_params.json",
    ]
    assert "PSNR" in capsys.readouterr().out
    hq = torch.from_numpy(np.array(Image.open(tmp_path / "astronaut_hq.png"))).permute(2, 0, 1)[None].float() / 255
    for name in ("lq", "elq"):
        record = json.loads((tmp_path / f"astronaut_{name}_params.json").read_text())
        config = DegradationConfig.from_dict(record["config"])
        assert config.preset_name == name
        replayed = RealESRGANDegradation(config)(hq, DegradationParams.from_dict(record["params"]))
        written = np.asarray(Image.open(tmp_path / f"astronaut_{name}.png"))
        np.testing.assert_array_equal((replayed[0].permute(1, 2, 0) * 255).round().byte().numpy(), written)


def test_same_seed_same_files_and_json_config(tmp_path):
    src = tmp_path / "photo.png"
    Image.open(bundled_image_path()).resize((80, 60)).save(src)
    config = tmp_path / "mine.json"
    custom = DegradationConfig.realesrgan()
    custom.preset_name = "mine"
    custom.to_json_file(config)
    for out in ("a", "b"):
        degrade_main(
            [str(src), "--preset", str(config), "--seed", "3", "--size", "48", "--output-dir", str(tmp_path / out)]
        )
    a = np.asarray(Image.open(tmp_path / "a" / "photo_mine.png"))
    b = np.asarray(Image.open(tmp_path / "b" / "photo_mine.png"))
    assert a.shape == (48, 48, 3) and np.array_equal(a, b)


def test_no_resize_back_writes_the_small_image(tmp_path):
    degrade_main(["--demo", "--preset", "elq", "--size", "64", "--no-resize-back", "--output-dir", str(tmp_path)])
    assert Image.open(tmp_path / "astronaut_elq.png").size == (4, 4)


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_any_image_mode_is_read_as_rgb(tmp_path, mode):
    base = Image.open(bundled_image_path()).resize((40, 30))
    if mode == "I;16":
        image = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    else:
        image = base.convert(mode)
    path = tmp_path / f"x_{mode.replace(';', '')}.png"
    image.save(path)
    rgb = load_image(path)
    assert rgb.mode == "RGB" and rgb.size == (40, 30)
    if mode == "I;16":  # 16-bit is scaled to 8 bits, not clipped
        np.testing.assert_allclose(np.asarray(rgb)[..., 0], np.asarray(base.convert("L")), atol=1)


def test_unreadable_file_is_named_and_nothing_is_written(tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    err = run_error([str(bundled_image_path()), str(bad), "--output-dir", str(out)], capsys)
    assert "cannot read image" in err and "broken.png" in err
    assert not out.exists()


def test_missing_file_and_bad_preset_are_clear_errors(tmp_path, capsys):
    assert "no such file" in run_error([str(tmp_path / "nope.png")], capsys)
    assert "Unknown degradation preset 'hq'" in run_error(["--demo", "--preset", "hq"], capsys)
    assert "does not exist" in run_error(["--demo", "--preset", str(tmp_path / "none.json")], capsys)
    assert "give at least one IMAGE" in run_error([], capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_unwritable_output_dir_is_a_clear_error(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert "not writable" in run_error(["--demo", "--output-dir", str(locked)], capsys)
    finally:
        locked.chmod(0o700)


def test_output_path_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    file = tmp_path / "file.txt"
    file.write_text("x")
    err = run_error(["--demo", "--output-dir", str(file / "sub")], capsys)
    assert "cannot create output directory" in err


def test_output_dir_without_write_permission_is_a_clear_error(tmp_path, capsys, monkeypatch):
    """The permission check itself, also when the tests run as root (who may write anywhere)."""
    monkeypatch.setattr("diffusers_irib.utils.output_files.os.access", lambda path, mode: False)
    assert "is not writable" in run_error(["--demo", "--output-dir", str(tmp_path / "out")], capsys)


# --------------------------------------------------------------------------- never lose a file
def small_photo(path, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(bundled_image_path()).resize(size).save(path)
    return path


def test_an_input_is_never_an_output_even_with_overwrite(tmp_path, capsys):
    photos = tmp_path / "photos"
    cat, cat_lq = small_photo(photos / "cat.png"), small_photo(photos / "cat_lq.png")
    before = cat_lq.read_bytes()
    for extra in ([], ["--overwrite"]):
        err = run_error([str(cat), str(cat_lq), "--size", "16", "--output-dir", str(photos), *extra], capsys)
        assert "cat_lq.png" in err and "input file" in err
    assert cat_lq.read_bytes() == before
    assert sorted(os.listdir(photos)) == ["cat.png", "cat_lq.png"]


def test_existing_outputs_are_kept_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "astronaut_lq.png").write_bytes(b"keep me")
    err = run_error(["--demo", "--size", "16", "-o", str(out)], capsys)
    assert "refusing to overwrite 1 existing file(s)" in err and "astronaut_lq.png" in err and "--overwrite" in err
    assert os.listdir(out) == ["astronaut_lq.png"] and (out / "astronaut_lq.png").read_bytes() == b"keep me"
    assert degrade_main(["--demo", "--size", "16", "-o", str(out), "--overwrite"]) == 0
    assert Image.open(out / "astronaut_lq.png").size == (16, 16)


def test_two_inputs_with_one_name_are_refused_naming_both(tmp_path, capsys):
    a, b = small_photo(tmp_path / "a" / "photo.png"), small_photo(tmp_path / "b" / "photo.png")
    err = run_error([str(a), str(b), "--size", "16", "-o", str(tmp_path / "out")], capsys)
    assert "written twice" in err and str(a) in err and str(b) in err
    assert not (tmp_path / "out").exists()


def write_preset(path, **fields):
    data = DegradationConfig.realesrgan().to_dict()
    data.update(fields)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"preset_name": "hq"}, "written twice"),  # would replace <stem>_hq.png
        ({"preset_name": "lq"}, "written twice"),  # the same name as the built-in lq preset
        ({"preset_name": "../evil"}, "plain name"),
        ({"preset_name": "sub/evil"}, "plain name"),
        ({"preset_name": ".."}, "plain name"),
        ({"kernel_size_range": 7}, "kernel_size_range must be a JSON list such as [7, 21], got 7"),
        ({"blur_sigma": 2.0}, "blur_sigma"),
        ({"kernel_list": "iso"}, "kernel_list must be a JSON list"),
    ],
)
def test_bad_custom_presets_are_refused_before_anything_is_written(tmp_path, capsys, fields, message):
    preset = write_preset(tmp_path / "mine.json", **fields)
    err = run_error(
        ["--demo", "--size", "16", "--preset", "lq", "--preset", str(preset), "-o", str(tmp_path / "out")], capsys
    )
    assert message in err and "mine.json" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil_params.json").exists()


def test_preset_files_that_are_not_json_objects_are_named(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "list.json").write_text("[1, 2]")
    assert "bad.json' is not readable JSON" in run_error(["--demo", "--preset", str(tmp_path / "bad.json")], capsys)
    assert "is a folder" in run_error(["--demo", "--preset", str(tmp_path / "folder.json")], capsys)
    assert "must be a JSON object" in run_error(["--demo", "--preset", str(tmp_path / "list.json")], capsys)


def test_the_same_preset_twice_is_refused(tmp_path, capsys):
    assert "written twice" in run_error(
        ["--demo", "--preset", "lq", "--preset", "lq", "-o", str(tmp_path / "o")], capsys
    )


# --------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seed", "1e23"], "argument --seed: must be an integer in [0, 2**63 - 1], got '1e23'"),
        (["--seed", "-1"], "argument --seed"),
        (["--seed", str(2**63)], "argument --seed"),
        (["--size", "0"], "argument --size: must be an integer in [8, 8192], got 0"),
        (["--size", "100000"], "argument --size"),
    ],
)
def test_bad_numbers_are_argument_errors(tmp_path, capsys, argv, message):
    assert message in run_error(["--demo", "-o", str(tmp_path / "out"), *argv], capsys)
    assert not (tmp_path / "out").exists()


def test_a_size_below_a_presets_downscale_is_refused(tmp_path, capsys):
    err = run_error(["--demo", "--size", "8", "--preset", "elq", "-o", str(tmp_path / "out")], capsys)
    assert "--size 8 is smaller than the final downscale of preset 'elq' (16)" in err
    assert not (tmp_path / "out").exists()


def test_the_largest_seed_works(tmp_path):
    assert (
        degrade_main(["--demo", "--size", "16", "--preset", "lq", "--seed", str(2**63 - 1), "-o", str(tmp_path)]) == 0
    )


@pytest.mark.parametrize("device, message", [("cuda", "CUDA is not available"), ("gpu", "is not a torch device")])
def test_unusable_devices_are_refused_and_leave_no_folder(tmp_path, capsys, monkeypatch, device, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = run_error(["--demo", "--size", "16", "--device", device, "-o", str(tmp_path / "out")], capsys)
    assert message in err and f"--device {device!r}" in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- input conventions
def test_folders_globs_and_output_alias(tmp_path):
    small_photo(tmp_path / "in" / "a.png")
    small_photo(tmp_path / "in" / "b.jpg")
    small_photo(tmp_path / "more" / "c.png")
    argv = ["-i", str(tmp_path / "in"), "-i", str(tmp_path / "more" / "*.png"), "--preset", "lq", "--size", "16"]
    assert degrade_main([*argv, "-o", str(tmp_path / "out")]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        f"{s}_{k}" for s in "abc" for k in ("hq.png", "lq.png", "lq_params.json")
    )


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.new("RGB", (40, 20), "red").save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_decompression_bombs_are_refused(tmp_path, capsys, monkeypatch):
    path = small_photo(tmp_path / "bomb.png", (40, 30))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1200 pixels > 2 x 100: PIL raises
    err = run_error([str(path), "-o", str(tmp_path / "out")], capsys)
    assert "bomb.png" in err and "decompression bomb" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- writing
def test_a_full_disk_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    def full(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(SystemExit) as info:
        degrade_main(["--demo", "--size", "16", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert info.value.code == 1 and "Traceback" not in err
    assert err.startswith("irib-degrade: error: cannot write ") and "No space left on device" in err
    assert not (tmp_path / "out").exists()  # no half-written file, no temporary file, no empty folder


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        degrade_main(["--demo", "--size", "16", "--preset", "lq", "-o", str(tmp_path / "out")])
    finally:
        os.umask(old)
    modes = {name: (tmp_path / "out" / name).stat().st_mode & 0o777 for name in os.listdir(tmp_path / "out")}
    assert set(modes.values()) == {0o640}, modes


def test_batches_change_the_memory_not_the_files(tmp_path):
    # Parameters are drawn for the whole run up front, so batch 1 writes what one batch of 3 writes.
    from skimage import data

    for name in ("coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(data, name)()).save(tmp_path / f"{name}.png")
    argv = ["-i", str(tmp_path / "*.png"), "--preset", "elq", "--preset", "lq", "--size", "64", "--seed", "5"]
    assert degrade_main([*argv, "-o", str(tmp_path / "one"), "--batch-size", "3"]) == 0
    assert degrade_main([*argv, "-o", str(tmp_path / "each"), "--batch-size", "1"]) == 0
    for name in ("coffee", "chelsea", "rocket"):
        for kind in ("elq", "lq"):
            a = np.asarray(Image.open(tmp_path / "one" / f"{name}_{kind}.png"))
            b = np.asarray(Image.open(tmp_path / "each" / f"{name}_{kind}.png"))
            assert np.array_equal(a, b), (name, kind)
            params_a = json.loads((tmp_path / "one" / f"{name}_{kind}_params.json").read_text())
            params_b = json.loads((tmp_path / "each" / f"{name}_{kind}_params.json").read_text())
            assert params_a == params_b
