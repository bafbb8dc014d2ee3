"""The last silent and cryptic cases of the hostile battery (#18): threads, NaN weights, strings as
flags, empty paths, impossible numbers, odd image modes and suffixes, damaged checkpoints and full
disks. Each ends in a correct result or one clear error that names the value, the file or the
component; full disks are simulated by a write that raises OSError(ENOSPC)."""

from __future__ import annotations

import errno
import json
import threading

import numpy as np
import pytest
import torch
from conftest import make_tiny_pipeline
from lora_reference import tiny_pipeline_with_random_sets
from PIL import Image

from diffusers_irib.adapters import add_adapter_set, load_adapter_set, set_adapter_set_trainable
from diffusers_irib.degradations import differentiable_jpeg
from diffusers_irib.degradations.kernels import (
    anisotropic_gaussian_kernel,
    circular_lowpass_kernel,
    isotropic_gaussian_kernel,
    plateau_kernel,
)
from diffusers_irib.image_processing import to_tensors
from diffusers_irib.losses import prior_loss, regularizer_loss, sample_timesteps
from diffusers_irib.tiny import make_sd21_scheduler
from diffusers_irib.training_utils import IRIBLossConfig

FULL_DISK = OSError(errno.ENOSPC, "No space left on device")


def smooth(seed: int, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0]


def usage_error(main, argv, capsys) -> str:
    """argparse's refusal: exit 2, the usage, then one ``prog: error: ...`` line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def one_line_error(main, argv, capsys, code=2) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == code, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline_with_random_sets()


# --------------------------------------------------------------------------- threads
def test_two_threads_calling_one_pipeline_get_the_results_of_serial_calls(pipe):
    images = [smooth(seed) for seed in range(2)]
    kwargs = dict(lfo_steps=1, prompt="a photo", output_type="pt")
    serial = [pipe(image, **kwargs).images for image in images]
    rounds = 4
    barrier = threading.Barrier(2)
    results: dict[int, list] = {0: [], 1: []}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(rounds):
                barrier.wait()  # both calls start together, every round
                results[i].append(pipe(images[i], **kwargs).images)
        except BaseException as err:  # noqa: BLE001 (reported below)
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for i in range(2):
        assert len(results[i]) == rounds
        for out in results[i]:
            torch.testing.assert_close(out, serial[i], rtol=0, atol=0)


# --------------------------------------------------------------------------- NaN in the weights
@pytest.mark.parametrize(
    "module, component",
    [("vae.encoder.conv_in", "VAE encoder"), ("unet.conv_out", "UNet"), ("vae.decoder.conv_out", "VAE decoder")],
)
def test_nan_in_a_base_weight_is_refused_naming_the_component(module, component):
    pipe = tiny_pipeline_with_random_sets()
    layer = pipe
    for part in module.split("."):
        layer = getattr(layer, part)
    layer = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
    with torch.no_grad():
        layer.weight.view(-1)[0] = float("nan")
    with pytest.raises(RuntimeError, match=rf"NaN/inf values, first in the {component} \(adapter set 'projector'\)"):
        pipe(smooth(0), output_type="pt")
    # without the projector, the restorer is named
    with pytest.raises(RuntimeError, match=rf"restorer produced NaN/inf values, first in the {component}"):
        pipe(smooth(0), use_projector=False, output_type="pt")


# --------------------------------------------------------------------------- strings as flags
def test_trainable_must_be_a_bool_not_a_string(tmp_path):
    source = make_tiny_pipeline()
    source.add_adapter_set("projector")
    source.save_adapter_set(tmp_path / "projector", "projector")
    pipe = make_tiny_pipeline()
    with pytest.raises(TypeError, match=r"trainable must be True or False, got 'no'"):
        load_adapter_set(pipe.unet, pipe.vae, tmp_path / "projector", trainable="no")
    with pytest.raises(TypeError, match=r"got 'no'"):
        pipe.load_adapter_set(tmp_path / "projector", trainable="no")
    assert pipe.adapter_sets == []  # nothing was loaded
    with pytest.raises(TypeError, match=r"got 'yes'"):
        add_adapter_set(pipe.unet, pipe.vae, "restorer", trainable="yes")
    pipe.load_adapter_set(tmp_path / "projector")
    with pytest.raises(TypeError, match=r"trainable must be True or False, got 'false'"):
        set_adapter_set_trainable(pipe.unet, pipe.vae, "projector", "false")
    with pytest.raises(TypeError, match=r"got 'false'"):
        pipe.set_adapter_set_trainable("projector", "false")
    assert not any(p.requires_grad for p in pipe.unet.parameters())  # still frozen
    pipe.set_adapter_set_trainable("projector", np.bool_(True))  # numpy's bool is a bool
    assert any(p.requires_grad for p in pipe.unet.parameters())


# --------------------------------------------------------------------------- empty paths
def test_irib_restore_refuses_an_empty_output_path(tmp_path, capsys, monkeypatch):
    from diffusers_irib.cli import restore

    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    err = usage_error(restore.main, ["a.png", "-o", "", "--projector", "p", "--restorer", "r"], capsys)
    assert err.startswith("irib-restore: error: argument -o/--output/--output-dir: empty path ''")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


@pytest.mark.parametrize(
    "command, argv",
    [
        ("degrade", ["a.png", "-o", ""]),
        ("degrade", ["", "-o", "out"]),
        ("restore", ["-i", "", "-o", "out"]),
        ("demo", ["--tiny", "-o", " "]),
        ("make_testset", ["", "out"]),
        ("make_testset", [".", ""]),
        ("convert", ["", "out"]),
        ("convert", ["x.pkl", ""]),
        ("evaluate", ["", "out"]),
        ("evaluate", ["testset", ""]),
        ("plots", ["run", "-o", ""]),
    ],
)
def test_every_command_refuses_empty_paths(command, argv, capsys, tmp_path, monkeypatch):
    import importlib

    module = (
        importlib.import_module(f"diffusers_irib.evaluation.{command}")
        if command in ("evaluate", "plots")
        else importlib.import_module(f"diffusers_irib.cli.{command}")
    )
    monkeypatch.chdir(tmp_path)
    assert "error: argument" in usage_error(module.main, argv, capsys).split("empty path")[0]
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- numerical helpers
def test_jpeg_quality_nan_or_out_of_range_is_refused_with_the_value():
    x = torch.rand(1, 3, 16, 16)
    for quality in (float("nan"), float("inf"), 0.0, 101, torch.tensor([50.0, float("nan")])):
        with pytest.raises(ValueError, match=r"JPEG quality must be in \[1, 100\], got (nan|inf|0\.0|101\.0)"):
            differentiable_jpeg(x.expand(2, -1, -1, -1), quality)
    assert torch.isfinite(differentiable_jpeg(x, np.float32(50))).all()  # numpy scalars are numbers


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda z: isotropic_gaussian_kernel(7, z), "sigma_x"),
        (lambda z: anisotropic_gaussian_kernel(7, torch.ones(1, dtype=z.dtype), z, torch.zeros_like(z)), "sigma_y"),
        (lambda z: plateau_kernel(7, torch.ones_like(z), torch.ones_like(z), torch.zeros_like(z), z), "beta"),
        (lambda z: circular_lowpass_kernel(7, z), "cutoff"),
    ],
)
def test_kernels_refuse_zero_or_negative_widths_naming_the_parameter(make, name):
    for value in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=rf"{name} must be a positive, finite number, got {value}"):
            make(torch.tensor([value], dtype=torch.float64))


def test_timestep_ranges_outside_the_schedule_are_refused():
    scheduler = make_sd21_scheduler()
    latents, embeds = torch.zeros(1, 4, 8, 8), torch.zeros(1, 77, 32)

    def score(noisy, t, embeds):
        return torch.zeros_like(noisy)

    for bad in ((-5, 10), (10, 1000), (50, 10), (0.5, 10)):
        with pytest.raises(ValueError, match=r"timestep_range must be integers 0 <= low <= high <= 999, got"):
            regularizer_loss(latents, embeds, score, scheduler, timestep_range=bad)
        with pytest.raises(ValueError, match=r"timestep_range must be integers"):
            prior_loss(latents, embeds, embeds, score, score, scheduler, timestep_range=bad)
    with pytest.raises(ValueError, match=r"got \(-1, 3\)"):
        sample_timesteps(2, -1, 3, device="cpu")
    assert regularizer_loss(latents, embeds, score, scheduler, timestep_range=(0, 999)).item() > 0


def test_a_loss_config_with_every_weight_zero_is_refused():
    zero = dict(lq_weight=0.0, prior_weight=0.0, l2_weight=0.0, lpips_weight=0.0, blur_weight=0.0)
    with pytest.raises(ValueError, match=r"every loss weight of mode 'irib' is 0 \(lq_weight=0, prior_weight=0"):
        IRIBLossConfig(**zero)
    with pytest.raises(ValueError, match=r"mode 'direct'"):  # lq_weight does not count where it is not used
        IRIBLossConfig(**{**zero, "lq_weight": 1.0}, mode="direct")
    assert IRIBLossConfig(**{**zero, "blur_weight": 0.5}).blur_weight == 0.5


# --------------------------------------------------------------------------- images and plots
def test_sixteen_bit_values_in_a_mode_f_image_are_scaled_not_saturated():
    values = np.linspace(0, 65535, 64 * 64, dtype=np.float32).reshape(64, 64)
    image = Image.fromarray(values, mode="F")
    gray = to_tensors(image)[0][0].numpy()
    assert (gray >= 0.999).mean() < 0.01  # was 92% white
    np.testing.assert_allclose(gray, np.round(values / 65535 * 255) / 255, atol=1 / 255 + 1e-6)
    # 8-bit values and [0, 1] floats in mode F keep their meaning; impossible values are refused
    np.testing.assert_allclose(to_tensors(Image.fromarray(values / 257, mode="F"))[0][0].numpy(), gray, atol=1 / 255)
    np.testing.assert_allclose(to_tensors(Image.fromarray(values / 65535, mode="F"))[0][0].numpy(), gray, atol=1 / 255)
    for bad in (values - 1, values * 2):
        with pytest.raises(ValueError, match=r"mode-F image must hold values in \[0, 65535\]"):
            to_tensors(Image.fromarray(bad, mode="F"))
    sixteen = Image.fromarray(values.astype(np.uint16))  # I;16: 16-bit by definition, even when dark
    assert sixteen.mode == "I;16"
    np.testing.assert_allclose(to_tensors(sixteen)[0][0].numpy(), gray, atol=1 / 255)
    dark = Image.fromarray((values / 1000).astype(np.uint16))
    assert float(to_tensors(dark)[0].max()) < 0.01


def write_run(folder, **metrics):
    folder.mkdir(parents=True)
    row = {"method": "irib", "convention": "y", **metrics}
    (folder / "results.json").write_text(json.dumps({"rows": [row]}))
    return str(folder)


def test_plot_tradeoff_writes_the_format_of_the_suffix_and_refuses_others(tmp_path, capsys):
    from diffusers_irib.evaluation import plots

    runs = [write_run(tmp_path / f"r{i}", psnr=20.0 + i, fid=50.0 - i) for i in range(2)]
    assert plots.main([*runs, "-o", str(tmp_path / "plot.jpg")]) == 0
    assert (tmp_path / "plot.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, not PNG bytes
    with Image.open(tmp_path / "plot.jpg") as image:
        assert image.format == "JPEG"
    assert plots.main([*runs, "-o", str(tmp_path / "plot.pdf")]) == 0
    assert (tmp_path / "plot.pdf").read_bytes()[:4] == b"%PDF"
    err = one_line_error(plots.main, [*runs, "-o", str(tmp_path / "plot.txt")], capsys)
    assert "plot.txt" in err and ".png" in err and ".jpg" in err
    assert not (tmp_path / "plot.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.jpg", "plot.pdf", "r0", "r1"]  # no temporary left


@pytest.mark.filterwarnings("ignore:No artists with labels")  # Axes.plot is recorded, not drawn
def test_plot_tradeoff_leaves_out_string_metrics_with_a_note(tmp_path, capsys, monkeypatch):
    from diffusers_irib.evaluation import plots

    runs = [
        write_run(tmp_path / "a", psnr=20.0, fid=50.0),
        write_run(tmp_path / "b", psnr=21.0, fid="n/a"),
        write_run(tmp_path / "c", psnr="22", fid=40.0),
        write_run(tmp_path / "d", psnr=23.0, fid=30.0),
    ]
    points = []
    monkeypatch.setattr("matplotlib.axes.Axes.plot", lambda self, xs, ys, **kw: points.append((list(xs), list(ys))))
    assert plots.main([*runs, "-o", str(tmp_path / "plot.png")]) == 0
    assert points == [([20.0, 23.0], [50.0, 30.0])]  # numbers only: no category axis
    err = capsys.readouterr().err
    assert "fid = 'n/a' is not a number; point left out" in err and "psnr = '22'" in err


# --------------------------------------------------------------------------- irib-convert-osediff
@pytest.fixture(scope="module")
def osediff_file(tmp_path_factory):
    from osediff_reference import make_osediff_checkpoint

    path = tmp_path_factory.mktemp("osediff") / "osediff.pkl"
    torch.save(make_osediff_checkpoint()[2], path)
    return path


def convert_argv(pkl, out):
    return [str(pkl), str(out), "--base", "nowhere-needed"]


def test_convert_on_a_full_disk_says_so_in_one_line(osediff_file, tmp_path, capsys, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    from diffusers_irib.cli import convert

    def full(*args, **kwargs):  # what safetensors raises when the disk is full
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    base = make_tiny_pipeline()
    monkeypatch.setattr(convert, "load_base", lambda name: (base.unet, base.vae))
    argv = [str(osediff_file), str(tmp_path / "set"), "--check-against-base"]
    err = one_line_error(convert.main, argv, capsys, code=1)
    assert "cannot write the adapter set" in err and "No space left on device" in err and "IoError" not in err
    assert not (tmp_path / "set").exists() and list(tmp_path.iterdir()) == []


def test_convert_names_a_truncated_checkpoint(osediff_file, tmp_path, capsys):
    from diffusers_irib.cli import convert

    data = osediff_file.read_bytes()
    assert len(data) > 8192
    (tmp_path / "cut.pkl").write_bytes(data[:5000])  # torch's zip reader: "[Errno 22] Invalid argument"
    err = one_line_error(convert.main, [str(tmp_path / "cut.pkl"), str(tmp_path / "out")], capsys)
    assert "'" + str(tmp_path / "cut.pkl") + "' is truncated or damaged" in err and "Errno" not in err


def test_convert_names_a_zip_that_is_not_a_torch_checkpoint(tmp_path, capsys):
    import zipfile

    from diffusers_irib.cli import convert

    with zipfile.ZipFile(tmp_path / "notes.pkl", "w") as archive:
        archive.writestr("notes.txt", "hello")
    err = one_line_error(convert.main, [str(tmp_path / "notes.pkl"), str(tmp_path / "out")], capsys)
    assert "is a zip file but not a PyTorch checkpoint" in err and "enforce fail" not in err


# --------------------------------------------------------------------------- irib-web
def test_web_full_disk_while_writing_a_result_is_a_message_not_an_oserror(tmp_path, monkeypatch):
    from diffusers_irib.utils.image_files import bundled_image_path
    from diffusers_irib.web import RestoreOptions, WebLimits, WebRestorer, WorkDir

    pipe = make_tiny_pipeline()
    pipe.add_adapter_set("projector", trainable=False)
    pipe.add_adapter_set("restorer", trainable=False)
    workdir = WorkDir(tmp_path / "web")
    restorer = WebRestorer(pipe, workdir, WebLimits(max_side=64), tiny=True)
    saved = []

    def full(self, fp, *args, **kwargs):
        saved.append(fp)
        if len(saved) == 2:  # the first file is written, the second finds the disk full
            raise FULL_DISK
        return real_save(self, fp, *args, **kwargs)

    real_save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", full)
    result = restorer.restore(bundled_image_path(), RestoreOptions(lfo_steps=0))
    assert not result.ok and "could not be written" in result.message and "No space left on device" in result.message
    assert list(workdir.results.iterdir()) == []  # the half-written request folder is gone
    workdir.cleanup()


def test_space_app_with_bad_web_args_ends_in_one_line(capsys, monkeypatch):
    from diffusers_irib.web import server as web

    monkeypatch.setenv("IRIB_WEB_ARGS", '--max-pixels "1048576')
    with pytest.raises(SystemExit) as exit_info:
        web.space_main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert err.startswith("irib-web: error: IRIB_WEB_ARGS is not valid shell quoting (No closing quotation)")


# --------------------------------------------------------------------------- stray folders, sizes, numbers
def test_a_stray_folder_in_adapter_sets_does_not_break_loading(pipe, tmp_path, caplog):
    from diffusers_irib import IRIBRestorationPipeline

    pipe.save_pretrained(tmp_path / "saved")
    sets = tmp_path / "saved" / "adapter_sets"
    (sets / ".ipynb_checkpoints").mkdir()
    (sets / ".ipynb_checkpoints" / "adapter_set_config-checkpoint.json").write_text("{}")
    (sets / "notes").mkdir()
    (sets / "notes" / "todo.txt").write_text("retrain")
    loaded = IRIBRestorationPipeline.from_pretrained(tmp_path / "saved")
    loaded.set_progress_bar_config(disable=True)
    assert sorted(loaded.adapter_sets) == ["projector", "restorer"]
    assert "notes" in caplog.text and "ipynb" not in caplog.text  # hidden folders are skipped silently
    torch.testing.assert_close(loaded(smooth(1), output_type="pt").images, pipe(smooth(1), output_type="pt").images)


def test_upscale_is_bounded_as_the_cli_bounds_it(pipe):
    with pytest.raises(ValueError, match=r"upscale must be a finite number in \(0, 16\], got 1000"):
        pipe(smooth(0), upscale=1000, output_type="pt")
    with pytest.raises(ValueError, match=r"upscale=16 would make it 8192x16384, more than 8192 px a side"):
        pipe(torch.zeros(3, 1024, 512), upscale=16, output_type="pt")


def test_numpy_scalars_are_accepted_where_python_numbers_are(pipe):
    reference = pipe(smooth(0), lfo_steps=1, upscale=2.0, output_type="pt").images
    for lfo_steps, upscale in ((np.int64(1), np.float32(2.0)), (np.int32(1), np.float64(2.0)), (1, np.int64(2))):
        out = pipe(smooth(0), lfo_steps=lfo_steps, upscale=upscale, output_type="pt").images
        torch.testing.assert_close(out, reference, rtol=0, atol=0)
    out = pipe(smooth(0, 96), tile_size=np.int64(64), tile_overlap=np.int64(32), output_type="pt")
    assert out.images.shape == (1, 3, 96, 96)
    with pytest.raises(ValueError, match="lfo_steps must be a non-negative integer"):  # a bool is no count
        pipe(smooth(0), lfo_steps=np.bool_(True), output_type="pt")
