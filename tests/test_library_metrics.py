"""The library metrics (LPIPS, DISTS, FID, pyiqa's no-reference ones) and the Figure 7 plots.

No weights can be downloaded here, so the networks get random ImageNet backbones (torchvision's
weight loader is patched to hand them out: no network is touched) and FID gets a feature extractor
whose features are known in closed form. The checks are against the libraries' own entry points and
against the Frechet distance of Gaussians with equal covariances (the squared mean shift).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from metric_fakes import mean_colour, random_backbones  # noqa: F401  (a fixture)
from PIL import Image
from skimage import data

from diffusers_irib.evaluation import library_metrics
from diffusers_irib.evaluation.plots import main as plot_tradeoff


def solid_images(folder: Path, colours: np.ndarray) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, colour in enumerate(colours):
        path = folder / f"{i:02d}.png"
        Image.new("RGB", (40, 24), tuple(int(c) for c in colour)).save(path)
        paths.append(path)
    return paths


def test_fid_of_a_shifted_set_of_colours_is_the_squared_shift(tmp_path):
    # Same covariance, means apart by d: the Frechet distance is exactly |d|^2.
    colours = np.random.default_rng(0).integers(40, 200, size=(7, 3))
    shift = np.array([12, -7, 3])
    a = solid_images(tmp_path / "a", colours)
    b = solid_images(tmp_path / "b", colours + shift)
    assert library_metrics.fid_of_files(a, b, mean_colour) == pytest.approx(float(shift @ shift), rel=1e-4)
    assert library_metrics.fid_of_files(a, a, mean_colour) == pytest.approx(0.0, abs=1e-3)


def test_fid_needs_two_images_on_each_side(tmp_path):
    a = solid_images(tmp_path / "a", np.array([[10, 20, 30]]))
    with pytest.raises(ValueError, match="at least 2 images"):
        library_metrics.fid_of_files(a, a + a, mean_colour)


def test_offline_and_uncached_metrics_are_unavailable_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(library_metrics, "hub_offline", lambda: True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(library_metrics, "CLEANFID_INCEPTION", tmp_path / "inception-2015-12-05.pt")
    for name, needs in (("lpips", "AlexNet"), ("dists", "VGG16")):
        score, reason = library_metrics.load_image_metric(name)
        assert score is None and needs in reason and "HF_HUB_OFFLINE" in reason
    extractor, reason = library_metrics.load_fid_extractor()
    assert extractor is None and "Inception" in reason and "not cached" in reason
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # not installed
    for name in ("niqe", "musiq", "clipiqa"):
        score, reason = library_metrics.load_image_metric(name)
        assert score is None and "pyiqa" in reason and "PolyForm-Noncommercial" in reason


def photo_pair(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    hq = torch.from_numpy(data.astronaut()[100 : 100 + size, 180 : 180 + size]).permute(2, 0, 1).float() / 255
    noisy = (hq + 0.1 * torch.randn(hq.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    return noisy, hq


@pytest.mark.usefixtures("random_backbones")
def test_lpips_scales_to_the_library_range_and_is_zero_on_identical_images():
    import lpips

    score, reason = library_metrics.load_image_metric("lpips")
    assert reason == "" and score is not None
    restored, hq = photo_pair()
    reference = lpips.LPIPS(net="alex", verbose=False)(restored[None], hq[None], normalize=True).item()  # [0,1] in
    assert score(restored, hq) == pytest.approx(reference, rel=1e-5) and reference > 0
    assert score(hq, hq) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.usefixtures("random_backbones")
def test_dists_equals_torchmetrics_functional_and_is_zero_on_identical_images():
    from torchmetrics.functional.image.dists import deep_image_structure_and_texture_similarity

    score, reason = library_metrics.load_image_metric("dists")
    assert reason == "" and score is not None
    restored, hq = photo_pair()
    reference = deep_image_structure_and_texture_similarity(restored[None], hq[None]).item()
    assert score(restored, hq) == pytest.approx(reference, rel=1e-5) and reference > 0
    assert score(hq, hq) == pytest.approx(0.0, abs=1e-4)


def test_a_pyiqa_no_reference_metric_sees_the_image_alone(monkeypatch):
    calls = []

    class Metric:
        metric_mode = "NR"

        def __call__(self, *images):
            calls.append(len(images))
            return images[0].mean()

    fake = types.SimpleNamespace(create_metric=lambda name, device: Metric())
    monkeypatch.setitem(sys.modules, "pyiqa", fake)
    monkeypatch.setattr(library_metrics, "hub_offline", lambda: False)
    score, reason = library_metrics.load_image_metric("musiq")
    restored, hq = photo_pair()
    assert reason == "" and score(restored, hq) == pytest.approx(restored.mean().item()) and calls == [1]


# --------------------------------------------------------------------------- plots
def fake_run(folder: Path, method: str, unavailable: dict | None = None, **values) -> Path:
    folder.mkdir(parents=True)
    rows = [{"method": method, "convention": "y", "psnr": values.get("psnr"), "musiq": values.get("musiq"),
             "fid": values.get("fid")}]  # fmt: skip
    (folder / "results.json").write_text(json.dumps({"rows": rows, "unavailable": unavailable or {}}))
    return folder


def test_a_sweep_of_runs_becomes_the_two_tradeoff_panels(tmp_path, capsys):
    runs = [fake_run(tmp_path / f"blur{b}", "irib", psnr=19.5 + b / 2, musiq=71 - b, fid=62 + b) for b in (0, 1, 2)]
    fake_run(tmp_path / "finetuned", "direct", psnr=20.1, musiq=69.9, fid=68.1)
    out = tmp_path / "fig7.png"
    argv = [*map(str, runs), "-o", str(out), "--labels", "0", "1", "2", "--baseline", f"{tmp_path / 'finetuned'}:direct",
            "--paper", "div2k"]  # fmt: skip
    assert plot_tradeoff(argv) == 0
    assert "PSNR against MUSIQ, FID" in capsys.readouterr().out
    width, height = Image.open(out).size
    assert width > 1.8 * height  # two panels side by side
    with pytest.raises(SystemExit):
        plot_tradeoff(argv)  # exists: needs --overwrite


def test_a_run_without_musiq_or_fid_is_refused_not_silently_dropped_beside_the_papers_points(tmp_path, capsys):
    """The report of #19: "wrote fig7.png" while the only run (no MUSIQ, no FID) was not in it."""
    why = {"musiq": "musiq needs pyiqa", "fid": "FID needs clean-fid's Inception network"}
    run = fake_run(tmp_path / "ours", "irib", unavailable=why, psnr=20.0)
    with pytest.raises(SystemExit) as info:
        plot_tradeoff([str(run), "--paper", "div2k", "-o", str(tmp_path / "fig7.png")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "none of these runs can be drawn" in err and "only the paper's points" in err
    assert "musiq needs pyiqa" in err and "Inception network" in err and not (tmp_path / "fig7.png").exists()


def test_points_left_out_of_a_panel_are_listed_with_the_reason_and_noted_in_the_figure(tmp_path, capsys):
    runs = [
        fake_run(tmp_path / "blur0", "irib", psnr=19.5, musiq=71.0, fid=62.0),
        fake_run(tmp_path / "blur1", "irib", unavailable={"musiq": "musiq needs pyiqa"}, psnr=20.0, fid=63.0),
    ]
    out = tmp_path / "fig7.png"
    assert plot_tradeoff([*map(str, runs), "-o", str(out), "--labels", "0", "1"]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "PSNR against MUSIQ, FID" in printed
    left = [line for line in printed.splitlines() if "left out" in line]
    assert len(left) == 1 and "ours '1' is not in the PSNR-MUSIQ panel" in left[0] and "musiq needs pyiqa" in left[0]
    # the note under the panels is red (firebrick) text: the PNG says it too
    pixels = np.asarray(Image.open(out).convert("RGB")).astype(int)
    bottom = pixels[int(0.9 * pixels.shape[0]) :]
    assert ((bottom[..., 0] > 150) & (bottom[..., 1] < 80) & (bottom[..., 2] < 80)).any()
    # only the paper's figure, asked for as such, is still drawn
    assert plot_tradeoff(["--paper", "div8k", "-o", str(tmp_path / "paper.png")]) == 0


def test_plot_errors_name_the_problem(tmp_path, capsys):
    run = fake_run(tmp_path / "run", "irib", psnr=20.0)
    cases = [
        ([str(tmp_path)], "no results.json"),
        ([str(run), "--method", "direct"], "has no method 'direct' (it has: irib)"),
        ([str(run), "--labels", "a", "b"], "--labels has 2 entries for 1 runs"),
        ([str(run)], "no point has PSNR together with MUSIQ or FID, so none of these runs can be drawn"),
        ([], "nothing to plot"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as info:
            plot_tradeoff([*argv, "-o", str(tmp_path / "x.png")])
        assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_a_pyiqa_metric_whose_weights_cannot_be_fetched_is_unavailable(monkeypatch):
    def create_metric(name, device):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load this file")

    monkeypatch.setitem(sys.modules, "pyiqa", types.SimpleNamespace(create_metric=create_metric))
    monkeypatch.setattr(library_metrics, "hub_offline", lambda: True)
    score, reason = library_metrics.load_image_metric("clipiqa")
    assert score is None and "pyiqa could not load it: We couldn't connect" in reason and "HF_HUB_OFFLINE" in reason
