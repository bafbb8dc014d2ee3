"""irib-degrade: files written, replayable params, and clear errors that leave nothing behind."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_irib.cli.common import bundled_image_path, load_image
from diffusers_irib.cli.degrade import main as degrade_main
from diffusers_irib.degradations import (
    DegradationConfig,
    DegradationParams,
    RealESRGANDegradation,
)


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
        degrade_main([str(src), "--preset", str(config), "--seed", "3", "--size", "48", "--output-dir", str(tmp_path / out)])
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
    monkeypatch.setattr("diffusers_irib.cli.common.os.access", lambda path, mode: False)
    assert "is not writable" in run_error(["--demo", "--output-dir", str(tmp_path / "out")], capsys)
