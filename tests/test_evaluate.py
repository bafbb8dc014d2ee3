"""irib-evaluate end to end on a 4-image test set: tiny pipeline, every method, the table with PSNR/SSIM
filled in (checked against scikit-image on the written images) and the unavailable metrics marked,
resumable reruns, and a 2-process torchrun that equals the 1-process run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from conftest import make_tiny_pipeline
from lora_reference import randomize
from metric_fakes import mean_colour, random_backbones  # noqa: F401  (a fixture)
from PIL import Image
from skimage import data
from skimage.metrics import peak_signal_noise_ratio

from diffusers_irib.cli.make_testset import main as make_testset
from diffusers_irib.evaluation import library_metrics
from diffusers_irib.evaluation.evaluate import main as evaluate

BIN = Path(sys.executable).parent


def mirror(images, prompts):
    """A plug-and-play restorer for the test: any callable (images, prompts) -> images. (A mirror, not
    a brightening: the AdaIN colour fix would undo a global colour change.)"""
    return images.flip(-1)


def random_rrdbnet_state_dict(num_feat: int = 16, num_grow_ch: int = 32) -> dict:
    """Real-ESRGAN x4plus's RRDBNet key layout (``params_ema``; one block instead of 23), random weights."""
    g = torch.Generator().manual_seed(0)

    def conv(out_ch, in_ch):
        return torch.randn(out_ch, in_ch, 3, 3, generator=g) * 0.05, torch.zeros(out_ch)

    layers = {"conv_first": conv(num_feat, 3)}
    for r in (1, 2, 3):
        for k in range(5):
            layers[f"body.0.rdb{r}.conv{k + 1}"] = conv(num_grow_ch if k < 4 else num_feat, num_feat + k * num_grow_ch)
    layers.update({name: conv(num_feat, num_feat) for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr")})
    layers["conv_last"] = conv(3, num_feat)
    return {f"{name}.{kind}": t for name, (w, b) in layers.items() for kind, t in (("weight", w), ("bias", b))}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    pipe = make_tiny_pipeline()
    pipe.save_pretrained(root / "base")
    for role, seed, conv_in in (("projector", 1, False), ("restorer", 2, True), ("direct", 3, False)):
        pipe.add_adapter_set(role, conv_in=conv_in, trainable=False)
        randomize(pipe.unet, role, seed, std=0.02)
        pipe.save_adapter_set(root / role, role)
    torch.save({"params_ema": random_rrdbnet_state_dict()}, root / "RealESRGAN_x4plus_random.pth")
    (root / "photos").mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(data, name)()).save(root / "photos" / f"{name}.png")
    assert make_testset([str(root / "photos"), str(root / "testset"), "--size", "32"]) == 0
    return root


def args_for(root: Path, out: str, *extra: str, extractor: Optional[str] = "none") -> list[str]:
    """The command line for the workspace; ``extractor=None`` leaves the default (the paper's DAPE)."""
    flags = [] if extractor is None else ["--extractor", extractor]
    return [str(root / "testset"), str(root / out), "--base", str(root / "base"), "--projector", str(root / "projector"),
            "--restorer", str(root / "restorer"), *flags, *extra]  # fmt: skip


def test_every_method_runs_and_the_table_has_psnr_ssim_and_marks_the_rest_unavailable(workspace, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    methods = ["restorer", "irib", "irib-lfo1", "direct", "callable", "irib+callable", "classical"]
    argv = args_for(workspace, "out", "--methods", *methods, "--direct", str(workspace / "direct"),
                    "--restorer-callable", "test_evaluate:mirror", "--convention", "both", "--paper", "div2k",
                    "--classical-model", str(workspace / "RealESRGAN_x4plus_random.pth"))  # fmt: skip
    assert evaluate(argv) == 0
    out = workspace / "out"
    for method in methods:
        assert len(list((out / "images" / method).glob("*.png"))) == 4
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {(r["method"], r["convention"]) for r in rows} == {(m, c) for m in methods for c in ("y", "rgb")}
    # PSNR (RGB) of the written images, recomputed independently with scikit-image
    for row in [r for r in rows if r["convention"] == "rgb"]:
        values = []
        for hq_path in sorted((workspace / "testset" / "hq").glob("*.png")):
            hq = np.asarray(Image.open(hq_path)).astype(np.float64) / 255
            restored = np.asarray(Image.open(out / "images" / row["method"] / hq_path.name)).astype(np.float64) / 255
            values.append(peak_signal_noise_ratio(hq, restored, data_range=1.0))
        assert row["psnr"] == pytest.approx(np.mean(values), abs=1e-6), row["method"]
    table = (out / "results.md").read_text()
    assert "| Method | Training type | LFO | PSNR/SSIM on | PSNR ↑ | SSIM ↑ | LPIPS ↓" in table
    assert "n/a" in table and "- fid: unavailable" in table and "- lpips: unavailable" in table
    assert "paper: OSEDiff + Ours" in table and "OSDiff" not in table  # --paper: the published rows beside ours
    # a 4-image, 32 px test set is not the paper's: one caveat line right under the paper's table
    last = table.split("The paper's")[1].split("\n- ")[0].strip().splitlines()[-1]
    assert last.startswith("Caveat: this test set is not the paper's DIV2K at 512 x 512 (4 image(s)")
    assert "32 x 32 px" in last
    ours = table.split("The paper's")[0]
    assert ours.count("| Method |") == 2 and ours.count("**") == 2 * 2 * 2  # best PSNR and SSIM, per convention
    # grid.png: ELQ | LQ proxy of each projector method | each method | HQ, 256 px panels, one row per image
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape[1] == 256 * (1 + 3 + len(methods) + 1) and grid.shape[0] > 4 * 256
    hq = np.kron(np.asarray(Image.open(workspace / "testset" / "hq" / "astronaut.png")), np.ones((8, 8, 1), np.uint8))
    assert [y for y in range(grid.shape[0] - 256 + 1) if np.array_equal(grid[y : y + 256, -256:], hq)]
    assert sorted(p.name for p in (out / "lq_proxies").iterdir()) == ["irib", "irib+callable", "irib-lfo1"]
    per_image = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(per_image) == 4 * len(methods) and {"psnr_y", "ssim_rgb"} <= set(per_image[0])
    # the plug-and-play restorer really ran: callable = the mirrored ELQ
    elq = np.asarray(Image.open(workspace / "testset" / "elq" / "coffee.png")).astype(np.float64) / 255
    mirrored = np.asarray(Image.open(out / "images" / "callable" / "coffee.png")) / 255
    assert np.abs(mirrored - elq[:, ::-1]).max() < 0.05 < np.abs(mirrored - elq).max()

    capsys.readouterr()
    assert evaluate(argv) == 0  # resumable: nothing is restored again
    assert capsys.readouterr().out.count("all images already there") == len(methods)


def test_a_method_without_its_model_is_refused_before_loading(workspace, capsys):
    with pytest.raises(SystemExit) as info:
        evaluate(
            [
                str(workspace / "testset"),
                str(workspace / "never"),
                "--methods",
                "irib",
                "--base",
                str(workspace / "base"),
            ]
        )
    assert info.value.code == 2 and "needs --projector, --restorer" in capsys.readouterr().err
    assert not (workspace / "never").exists()


def test_two_processes_give_the_one_process_results(workspace):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    one = args_for(workspace, "one", "--methods", "irib")
    two = args_for(workspace, "two", "--methods", "irib")
    subprocess.run([sys.executable, "-m", "diffusers_irib.evaluation.evaluate", *one], env=env, check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    result = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "diffusers_irib.evaluation.evaluate", *two],
                            env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("restored 2 image(s) on this process") == 2  # each rank did its half
    a = json.loads((workspace / "one" / "results.json").read_text())["rows"]
    b = json.loads((workspace / "two" / "results.json").read_text())["rows"]
    assert a == b
    for p in (workspace / "one" / "images" / "irib").glob("*.png"):
        assert torch.equal(torch.from_numpy(np.asarray(Image.open(p))),
                           torch.from_numpy(np.asarray(Image.open(workspace / "two" / "images" / "irib" / p.name))))  # fmt: skip


@pytest.mark.usefixtures("random_backbones")
def test_library_metrics_and_fid_fill_the_table_and_the_tradeoff_plot(workspace, monkeypatch):
    # Random backbones for LPIPS/DISTS and a closed-form FID extractor (no weights can be downloaded here).
    monkeypatch.setattr(library_metrics, "load_fid_extractor", lambda device: (mean_colour, ""))
    argv = args_for(workspace, "library", "--methods", "restorer", "irib", "--metrics", "psnr", "lpips", "dists", "fid",
                    "niqe", "--grid", "0")  # fmt: skip
    assert evaluate(argv) == 0
    out = workspace / "library"
    results = json.loads((out / "results.json").read_text())
    assert set(results["unavailable"]) == {"niqe"}  # pyiqa is not installed here
    hq = sorted((workspace / "testset" / "hq").glob("*.png"))
    for row in results["rows"]:
        assert row["lpips"] > 0 and row["dists"] > 0 and row["fid"] > 0
        restored = [out / "images" / row["method"] / p.name for p in hq]  # FID pairs the method with the HQ set
        assert row["fid"] == pytest.approx(library_metrics.fid_of_files(restored, hq, mean_colour), rel=1e-9)
    per_image = list(csv.DictReader(open(out / "per_image.csv")))
    assert "fid" not in per_image[0] and float(per_image[0]["lpips"]) > 0  # FID is per set, LPIPS per image
    assert "| FID ↓" in (out / "results.md").read_text()
    assert Image.open(out / "tradeoff.png").size[0] > 0  # PSNR-FID drawn (MUSIQ unavailable)


def test_examples_evaluate_irib_is_the_irib_evaluate_program():
    """examples/evaluate_irib.py and irib-evaluate are one program: the same parser, said in its docstring."""
    script = Path(__file__).parents[1] / "examples" / "evaluate_irib.py"
    assert "same program as the ``irib-evaluate`` command" in script.read_text().replace("\n", " ")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    example = subprocess.run([sys.executable, str(script), "--help"], env=env, capture_output=True, text=True)
    command = subprocess.run([str(BIN / "irib-evaluate"), "--help"], env=env, capture_output=True, text=True)
    assert example.returncode == command.returncode == 0
    assert example.stdout == command.stdout and "--methods" in command.stdout


# ------------------------------------------------------------------ prompts: DAPE by default, LFO without prompts
def fake_dape(monkeypatch) -> dict:
    """A stand-in `ram` package with the RAM-with-LoRA builder (as OSEDiff ships it): records how it
    was built, and tags each image from its mean (ImageNet-normalised), so an LQ proxy that differs
    from the ELQ gets other tags, as DAPE's do."""
    record: dict = {}
    words = ("sky", "tree", "cat", "dog", "car", "sea", "hill", "road", "boat", "wall")

    def build(**kwargs):
        record["build"] = kwargs
        return torch.nn.Linear(1, 1)

    def inference_ram(images, model):
        means = images.float().mean(dim=(1, 2, 3))
        return [f"{words[int(m.abs() * 100) % 10]}, {words[int(m.abs() * 1000) % 10]}" for m in means]

    ram, models, lora = (types.ModuleType(n) for n in ("ram", "ram.models", "ram.models.ram_lora"))
    ram.inference_ram, ram.models, models.ram, models.ram_lora, lora.ram = inference_ram, models, build, lora, build
    for module in (ram, models, lora):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return record


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fails the test if the pipeline is loaded (the checks must come first)."""
    from diffusers_irib.pipeline_irib import IRIBRestorationPipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the models were loaded before the extractor was checked")

    monkeypatch.setattr(IRIBRestorationPipeline, "from_pretrained", refuse)


@pytest.mark.usefixtures("no_model_loading")
def test_the_default_dape_prompts_stop_before_loading_when_ram_or_its_checkpoints_are_missing(
    workspace, capsys, monkeypatch, tmp_path
):
    monkeypatch.setitem(sys.modules, "ram", None)  # `import ram` fails, installed or not
    with pytest.raises(SystemExit) as info:
        evaluate(args_for(workspace, "no-ram", "--methods", "irib", "irib-lfo1", extractor=None))
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1  # one line
    for part in (
        "--extractor ram, the default",
        "the `ram` package with ram.models.ram_lora",
        "--extractor-model PATH to RAM's ram_swin_large_14m.pth",
        "--dape-checkpoint PATH to DAPE.pth",
        "Or pass --extractor none",
    ):
        assert part in err, part
    assert not (workspace / "no-ram").exists()

    with pytest.raises(SystemExit):  # --dape-checkpoint none: plain RAM, which upstream's package provides
        evaluate(
            args_for(workspace, "no-ram", "--extractor-model", "ram.pth", "--dape-checkpoint", "none", extractor=None)
        )
    err = capsys.readouterr().err
    assert "the `ram` package (plain RAM: pip install" in err and "'ram.pth': no such file" in err
    assert "ram_lora" not in err and "DAPE.pth" not in err

    fake_dape(monkeypatch)  # the package is there now; one checkpoint is, the other is not
    (tmp_path / "ram_swin_large_14m.pth").write_bytes(b"")
    ram_ckpt, dape_ckpt = str(tmp_path / "ram_swin_large_14m.pth"), str(tmp_path / "DAPE.pth")
    argv = args_for(
        workspace, "no-dape", "--extractor-model", ram_ckpt, "--dape-checkpoint", dape_ckpt, extractor=None
    )
    with pytest.raises(SystemExit) as info:
        evaluate(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"--dape-checkpoint {dape_ckpt!r}: no such file" in err
    assert "`ram` package" not in err and "--extractor-model" not in err


def test_dape_prompts_by_default_make_the_lfo_rounds_differ(workspace, capsys, monkeypatch, tmp_path):
    record = fake_dape(monkeypatch)
    ram_ckpt, dape_ckpt = tmp_path / "ram_swin_large_14m.pth", tmp_path / "DAPE.pth"
    ram_ckpt.write_bytes(b"")
    dape_ckpt.write_bytes(b"")
    flags = "--methods irib irib-lfo1 --metrics psnr --grid 0 --num-images 2".split()
    argv = args_for(
        workspace,
        "dape",
        *flags,
        "--extractor-model",
        str(ram_ckpt),
        "--dape-checkpoint",
        str(dape_ckpt),
        extractor=None,
    )
    assert evaluate(argv) == 0
    assert record["build"]["pretrained_condition"] == str(dape_ckpt)  # DAPE: RAM + its LoRA, as OSEDiff builds it
    assert "warning" not in capsys.readouterr().err
    out = workspace / "dape"
    changed = [
        not np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(out / "images" / "irib-lfo1" / p.name)))
        for p in sorted((out / "images" / "irib").glob("*.png"))
    ]
    assert len(changed) == 2 and any(changed)  # the LQ proxy's tags re-prompted the projector
    assert not any("repeat_of" in r for r in json.loads((out / "results.json").read_text())["rows"])
    assert "(= irib)" not in (out / "results.md").read_text()


def test_without_an_extractor_the_lfo_rows_repeat_irib_and_say_so(workspace, capsys):
    flags = "--methods restorer irib irib-lfo1 irib-lfo2 --metrics psnr ssim --grid 0 --num-images 2".split()
    argv = args_for(workspace, "no-prompts", *flags)
    assert evaluate(argv) == 0
    captured = capsys.readouterr()
    warning = "irib-evaluate: warning: irib-lfo1 and irib-lfo2 without a prompt extractor (--extractor none)"
    assert warning in captured.err and "restored" not in captured.err  # said at the start, on stderr
    out = workspace / "no-prompts"
    for lfo in ("irib-lfo1", "irib-lfo2"):  # the same prompt each round: the same images, bit for bit
        for p in (out / "images" / "irib").glob("*.png"):
            assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(out / "images" / lfo / p.name)))
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["method"]: r.get("repeat_of") for r in rows} == {
        "restorer": None,
        "irib": None,
        "irib-lfo1": "irib",
        "irib-lfo2": "irib",
    }
    table = (out / "results.md").read_text()
    for lfo in ("irib-lfo1", "irib-lfo2"):
        (line,) = [x for x in table.splitlines() if x.startswith(f"| {lfo} (= irib) |")]
        assert "**" not in line and "<u>" not in line  # never ranked, neither best nor second
    assert "every LFO round repeats the same empty prompt, so these rows equal irib's" in table
    assert "a row marked (= METHOD) repeats that method's images and is not ranked" in table
