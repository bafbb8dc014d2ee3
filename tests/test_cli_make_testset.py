"""irib-make-testset: byte-identical reruns, per-name seeds (adding a file changes no other), the crop
protocol, unreadable files skipped and counted, no overwrite without --overwrite."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage import data

from diffusers_irib.cli.make_testset import image_seed, main


def digests(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    Image.fromarray(data.astronaut()[:, :400]).save(folder / "astronaut.png")  # 512 x 400: a portrait crop
    Image.fromarray(data.coffee()).save(folder / "coffee.jpg")
    Image.fromarray(data.camera()).save(folder / "camera.png")  # grayscale
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return folder


def test_the_test_set_is_byte_identical_across_runs_and_processes(tmp_path, source):
    assert main([str(source), str(tmp_path / "a"), "--size", "64", "--also-lq"]) == 0
    subprocess.run([sys.executable, "-m", "diffusers_irib.cli.make_testset", str(source), str(tmp_path / "b"),
                    "--size", "64", "--also-lq"], check=True, capture_output=True, timeout=300)  # fmt: skip
    a, b = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert a == b
    assert set(a) == {"degradations.json"} | {
        f"{d}/{n}.png" for d in ("hq", "elq", "lq") for n in ("astronaut", "coffee", "camera")
    }
    record = json.loads((tmp_path / "a" / "degradations.json").read_text())
    assert list(record["skipped"]) == ["broken.png"] and record["presets"]["elq"]["preset_version"] >= 1
    assert record["images"]["coffee"]["seed"] == image_seed(0, "coffee.jpg")
    assert set(record["images"]["coffee"]["degradations"]) == {"elq", "lq"}


def test_adding_an_image_changes_no_other_and_a_new_seed_changes_them(tmp_path, source):
    main([str(source), str(tmp_path / "before"), "--size", "64"])
    Image.fromarray(data.chelsea()).save(source / "aaa_first.png")  # sorts first: positions shift
    main([str(source), str(tmp_path / "after"), "--size", "64"])
    before, after = digests(tmp_path / "before"), digests(tmp_path / "after")
    for name in ("astronaut", "coffee", "camera"):
        assert before[f"elq/{name}.png"] == after[f"elq/{name}.png"]
    main([str(source), str(tmp_path / "seed1"), "--size", "64", "--seed", "1"])
    assert digests(tmp_path / "seed1")["elq/coffee.png"] != after["elq/coffee.png"]


def test_hq_is_the_short_side_resize_and_centre_crop(tmp_path, source):
    main([str(source), str(tmp_path / "out"), "--size", "64"])
    hq = np.asarray(Image.open(tmp_path / "out" / "hq" / "astronaut.png"))
    src = Image.fromarray(data.astronaut()[:, :400])  # 400 wide, 512 high
    expected = np.asarray(src.resize((64, round(512 * 64 / 400)), Image.BICUBIC))  # 64 x 82
    top = (expected.shape[0] - 64) // 2
    np.testing.assert_array_equal(hq, expected[top : top + 64])


def test_existing_outputs_are_kept_without_overwrite(tmp_path, source, capsys):
    main([str(source), str(tmp_path / "out"), "--size", "64"])
    before = digests(tmp_path / "out")
    with pytest.raises(SystemExit) as exit_info:
        main([str(source), str(tmp_path / "out"), "--size", "64", "--seed", "5"])
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert digests(tmp_path / "out") == before
    assert main([str(source), str(tmp_path / "out"), "--size", "64", "--seed", "5", "--overwrite"]) == 0
    assert digests(tmp_path / "out")["elq/coffee.png"] != before["elq/coffee.png"]
