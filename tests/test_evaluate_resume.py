"""irib-evaluate resumes only images that the same method, models (path and content) and options made.

Rerun into the same folder after the projector changed (same path, new weights), it must not reuse
the stale irib images: it refuses, naming the projector; with --overwrite it restores them again
and they equal a fresh run's, while the restorer's images (which do not depend on the projector) are
reused.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_pipeline
from lora_reference import randomize
from PIL import Image
from skimage import data

from diffusers_irib.cli.make_testset import main as make_testset
from diffusers_irib.evaluation.evaluate import main as evaluate


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate-resume")
    pipe = make_tiny_pipeline()
    pipe.save_pretrained(root / "base")
    for role, seed, conv_in in (("projector", 1, False), ("restorer", 2, True)):
        pipe.add_adapter_set(role, conv_in=conv_in, trainable=False)
        randomize(pipe.unet, role, seed, std=0.02)
        pipe.save_adapter_set(root / role, role)
    randomize(pipe.unet, "projector", 5, std=0.05)  # the retrained projector, saved later over the first
    pipe.save_adapter_set(root / "projector-v2", "projector")
    (root / "photos").mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(data, name)()).save(root / "photos" / f"{name}.png")
    assert make_testset([str(root / "photos"), str(root / "testset"), "--size", "32"]) == 0
    return root


def argv(root: Path, out: str, *extra: str) -> list[str]:
    models = [
        "--base",
        str(root / "base"),
        "--projector",
        str(root / "projector"),
        "--restorer",
        str(root / "restorer"),
        "--extractor",
        "none",
    ]
    return [
        str(root / "testset"),
        str(root / out),
        *models,
        "--methods",
        "restorer",
        "irib",
        "--metrics",
        "psnr",
        *extra,
    ]


def pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def test_a_changed_projector_is_not_resumed_from_stale_images(workspace, capsys):
    out = workspace / "out" / "images"
    assert evaluate(argv(workspace, "out")) == 0
    stale = pixels(out / "irib")
    restorer_images = pixels(out / "restorer")

    shutil.rmtree(workspace / "projector")
    shutil.copytree(workspace / "projector-v2", workspace / "projector")  # same path, other weights
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        evaluate(argv(workspace, "out"))
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "Traceback" not in err
    err = err.splitlines()[-1]  # (above it: the progress bars of loading the models)
    assert err.startswith("irib-evaluate: error: ")
    assert "images/irib" in err and "--projector" in err and str(workspace / "projector") in err
    assert "--overwrite" in err
    assert all(np.array_equal(a, b) for a, b in zip(pixels(out / "irib").values(), stale.values()))  # untouched

    assert evaluate(argv(workspace, "out", "--overwrite")) == 0
    log = capsys.readouterr().out
    assert "restorer: restored 0 image(s)" in log and "irib: restored 2 image(s)" in log
    assert all(np.array_equal(a, b) for a, b in zip(pixels(out / "restorer").values(), restorer_images.values()))
    assert evaluate(argv(workspace, "fresh")) == 0  # the truth: a run that never saw the old projector
    fresh = pixels(workspace / "fresh" / "images" / "irib")
    now = pixels(out / "irib")
    assert now.keys() == fresh.keys() and all(np.array_equal(now[k], fresh[k]) for k in now)
    assert any(not np.array_equal(now[k], stale[k]) for k in now)

    assert evaluate(argv(workspace, "out")) == 0  # same setup again: everything resumed
    assert capsys.readouterr().out.count("all images already there") == 2


def test_images_without_a_record_or_made_with_other_options_are_not_resumed(workspace, capsys):
    assert evaluate(argv(workspace, "options", "--methods", "restorer")) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        evaluate(argv(workspace, "options", "--methods", "restorer", "--dtype", "bf16"))
    assert "dtype 'fp32' then, 'bf16' now" in capsys.readouterr().err
    (workspace / "options" / "images" / "restorer" / "run.json").unlink()  # images of an older version
    with pytest.raises(SystemExit):
        evaluate(argv(workspace, "options", "--methods", "restorer"))
    assert "no run.json records what made them" in capsys.readouterr().err
