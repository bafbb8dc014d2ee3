"""examples/train_irib_lora.py as diffusers' examples are (issue 19): their flags with their defaults
shown in --help, a "Steps" bar, setup failures (xformers, LPIPS weights, the Hub) stopped in one line
before any model loads, an upload that fails at the end keeping everything, and a final validation
with the saved set. The Hub is always a fake (monkeypatched huggingface_hub); nothing is downloaded."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_pipeline
from PIL import Image
from skimage import data
from training_script import SCRIPT, load_script

from diffusers_irib.training_data import random_crop

BIN = Path(sys.executable).parent

# diffusers' train_text_to_image_lora.py / train_dreambooth_lora.py defaults.
EXAMPLES_DEFAULTS = {
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_weight_decay": 1e-2,
    "adam_epsilon": 1e-08,
    "scale_lr": False,
    "lr_num_cycles": 1,
    "lr_power": 1.0,
    "center_crop": False,
    "num_validation_images": 4,
}


@pytest.fixture(scope="module")
def script():
    return load_script()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny base, a restorer set and two photos."""
    root = tmp_path_factory.mktemp("conventions")
    pipe = make_tiny_pipeline()
    pipe.save_pretrained(root / "base")
    pipe.add_adapter_set("restorer", conv_in=True, trainable=False)
    pipe.save_adapter_set(root / "restorer", "restorer")
    (root / "photos").mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        image = Image.fromarray(getattr(data, name)())
        image.resize((image.width // 6, image.height // 6), Image.BICUBIC).save(root / "photos" / f"{name}.png")
    return root


def base_args(root: Path, output: str) -> list[str]:
    paths = {
        "--pretrained_model_name_or_path": root / "base",
        "--restorer_adapter": root / "restorer",
        "--train_data_dir": root / "photos",
        "--output_dir": root / output,
    }
    flags = "--resolution 32 --min_image_size 32 --lpips_random_backbone --report_to none --prompt_extractor none"
    flags = (flags + " --train_batch_size 1").split()  # 3 photos: less than one batch of the default 4
    return [str(x) for pair in paths.items() for x in pair] + flags


# --------------------------------------------------------------------------- flags
def test_the_examples_flags_exist_with_their_defaults_and_help_shows_every_default(script, workspace, capsys):
    args = script.parse_args(base_args(workspace, "never"))
    assert {name: getattr(args, name) for name in EXAMPLES_DEFAULTS} == EXAMPLES_DEFAULTS
    assert args.tracker_project_name == "irib-lora"

    with pytest.raises(SystemExit):
        script.parse_args(["--help"])
    usage, options = capsys.readouterr().out.split("\n\n", 1)
    text = " ".join(options.split())  # the option list, with argparse's line wrapping undone
    for flag, default in [
        ("--adam_beta1 ADAM_BETA1", "0.9"),
        ("--adam_beta2 ADAM_BETA2", "0.999"),
        ("--adam_weight_decay ADAM_WEIGHT_DECAY", "0.01"),
        ("--adam_epsilon ADAM_EPSILON", "1e-08"),
        ("--lr_num_cycles LR_NUM_CYCLES", "1"),
        ("--lr_power LR_POWER", "1.0"),
        ("--num_validation_images NUM_VALIDATION_IMAGES", "4"),
        ("--tracker_project_name TRACKER_PROJECT_NAME", "irib-lora"),
        ("--learning_rate LEARNING_RATE", "5e-05"),  # an option without a help text shows its default too
        ("--lr_scheduler", "constant"),
    ]:
        start = text.index(flag + " ")
        assert f"default: {default}" in text[start : start + 200], flag
    for flag in ("--scale_lr", "--center_crop", "--enable_xformers_memory_efficient_attention"):
        assert flag in text


def test_center_crop_takes_the_middle_square_at_full_resolution():
    image = Image.fromarray(np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3) % 251)
    crop = random_crop(image, 32, np.random.default_rng(0), center=True)
    expected = np.asarray(image.crop((14, 4, 46, 36)), dtype=np.float32) / 255
    assert torch.equal(crop, torch.from_numpy(expected).permute(2, 0, 1))


def test_xformers_flag_without_xformers_stops_at_parse_time_naming_the_flag(script, workspace, monkeypatch):
    monkeypatch.setitem(sys.modules, "xformers", None)  # import fails as where it is not installed
    with pytest.raises(ValueError, match="--enable_xformers_memory_efficient_attention needs xformers"):
        script.parse_args(base_args(workspace, "never") + ["--enable_xformers_memory_efficient_attention"])


# --------------------------------------------------------------------------- setup failures before any model loads
class FakeHub:
    """huggingface_hub.HfApi / get_token stand-ins that record calls and fail where told."""

    def __init__(self, monkeypatch, token="hf_t0k", create_error=None, upload_error=None):
        import huggingface_hub

        self.calls = []
        hub = self

        class Api:
            def __init__(self, token=None):
                hub.calls.append(("token", token))

            def create_repo(self, repo_id, exist_ok=False, repo_type=None):
                hub.calls.append(("create", repo_id, exist_ok, repo_type))
                if create_error is not None:
                    raise create_error
                full = repo_id if "/" in repo_id else f"me/{repo_id}"  # the Hub puts a bare name in your namespace
                return huggingface_hub.RepoUrl(f"https://huggingface.co/{full}")

            def upload_folder(self, repo_id, folder_path, commit_message=None, ignore_patterns=None):
                hub.calls.append(("upload", repo_id, folder_path))
                if upload_error is not None:
                    raise upload_error

        monkeypatch.setattr(huggingface_hub, "HfApi", Api)
        monkeypatch.setattr(huggingface_hub, "get_token", lambda: token)


@pytest.fixture
def no_models(script, monkeypatch):
    """main() must stop before this: loading models is where minutes go."""

    def refuse(*args, **kwargs):
        raise AssertionError("models were loaded")

    monkeypatch.setattr(script, "load_models", refuse)


def run_main(script, argv) -> str:
    args = script.parse_args(argv)
    with pytest.raises(SystemExit) as info:
        script.main(args)
    return str(info.value.code)


def test_push_to_hub_with_an_unreachable_hub_stops_before_the_first_step_in_one_line(
    script, workspace, monkeypatch, no_models
):
    import httpx

    hub = FakeHub(monkeypatch, create_error=httpx.ConnectError("[Errno 111] Connection refused"))
    message = run_main(script, base_args(workspace, "hub-down") + ["--push_to_hub", "--hub_model_id", "me/irib"])
    assert message == (
        "train_irib_lora.py: error: --push_to_hub: cannot create the Hub repo 'me/irib' "
        "([Errno 111] Connection refused); nothing was trained"
    )
    assert ("create", "me/irib", True, "model") in hub.calls
    assert not (workspace / "hub-down").exists()  # nothing written


def test_push_to_hub_without_a_token_stops_at_once_saying_how_to_log_in(script, workspace, monkeypatch, no_models):
    hub = FakeHub(monkeypatch, token=None)
    message = run_main(script, base_args(workspace, "no-token") + ["--push_to_hub"])
    assert "--push_to_hub needs a Hub token: run `hf auth login`" in message and "\n" not in message
    assert not [call for call in hub.calls if call[0] == "create"]


def test_missing_lpips_weights_stop_before_the_models_load_naming_the_file_and_the_ways_out(
    script, workspace, monkeypatch, tmp_path, no_models
):
    import torchvision.models._api as torchvision_weights

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torchvision_weights, "load_state_dict_from_url", no_network)
    argv = [a for a in base_args(workspace, "no-lpips") if a != "--lpips_random_backbone"]
    message = run_main(script, argv)
    assert message.startswith("train_irib_lora.py: error: LPIPS needs the VGG16 ImageNet weights vgg16-397923af.pth")
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "TORCH_HOME" in message and "--lpips_weight 0" in message and "\n" not in message


# --------------------------------------------------------------------------- the end of a run
def test_a_failed_upload_keeps_the_folder_and_prints_the_hf_upload_command(script, tmp_path, monkeypatch):
    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)
    for name in ("README.md", "adapter_set_config.json", "pytorch_lora_weights.safetensors"):
        (out / name).write_text(name)
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    FakeHub(monkeypatch, upload_error=OSError("[Errno 101] Network is unreachable"))
    message = script.upload_or_explain(str(out), "me/irib-projector")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before
    first, command = message.split("\n")
    assert "upload to the Hub repo 'me/irib-projector' failed ([Errno 101] Network is unreachable)" in first
    assert command.strip() == (
        f"hf upload me/irib-projector {out} . --exclude 'checkpoint-*' --exclude 'checkpoint-*/**' "
        "--exclude 'logs/**' --exclude 'validation/**'"
    )
    # The command is the installed huggingface_hub's CLI, with these options.
    help_text = subprocess.run([str(BIN / "hf"), "upload", "--help"], capture_output=True, text=True, timeout=60)
    assert help_text.returncode == 0 and "--exclude" in help_text.stdout
    assert script.upload_or_explain(str(out), "me/irib-projector") is not None
    FakeHub(monkeypatch)
    assert script.upload_or_explain(str(out), "me/irib-projector") is None


def test_a_run_shows_a_steps_bar_uses_the_optimizer_flags_and_ends_with_a_final_validation(workspace):
    """One real 3-step run (accelerate launch, CPU): the optimizer's hyper-parameters, the polynomial
    schedule's closed form, the bar, the trackers' project, at most --num_validation_images images,
    and the final grid made from the saved set."""
    out = workspace / "run"
    flags = (
        "--train_batch_size 2 --gradient_accumulation_steps 1 --max_train_steps 3 --checkpointing_steps 2 "
        "--learning_rate 1e-4 --scale_lr --adam_beta1 0.8 --adam_beta2 0.95 --adam_epsilon 1e-6 "
        "--adam_weight_decay 0.05 --lr_scheduler polynomial --lr_power 2 --center_crop --report_to tensorboard "
        "--tracker_project_name my-project --num_validation_images 1 --validation_steps 2"
    ).split()
    photos = [str(workspace / "photos" / name) for name in ("astronaut.png", "coffee.png")]
    argv = base_args(workspace, "run") + flags + ["--validation_images", *photos]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "HF_DATASETS_CACHE": str(workspace / "ds-cache"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [str(BIN / "accelerate"), "launch", "--num_processes", "1", "--cpu", str(SCRIPT), *argv]
    result = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]

    assert "Steps: 100%" in log and "loss=" in log and "prior=" in log  # the bar and its postfix
    assert "step 1/3" not in log and "step 3/3: loss" in log  # one summary line, not one per step
    state = torch.load(out / "checkpoint-2" / "optimizer.bin", weights_only=False)
    group = state["param_groups"][0]
    scaled = 1e-4 * 2  # --scale_lr: x batch 2 x accumulation 1 x 1 process
    assert math.isclose(group["initial_lr"], scaled)
    assert group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6 and group["weight_decay"] == 0.05
    lr_end = 1e-7  # diffusers' polynomial schedule: (lr - end) * (1 - step / total) ** power + end
    assert math.isclose(group["lr"], (scaled - lr_end) * (1 - 2 / 3) ** 2 + lr_end, rel_tol=1e-6)
    assert (out / "logs" / "my-project").is_dir()

    # 1 of the 2 images: one row of 4 labelled panels, enlarged from 32 px to 256 px (the package's grid)
    width, height = Image.open(out / "validation" / "step-000002.png").size
    assert width == 4 * 256 and 256 < height < 2 * 256
    final = np.asarray(Image.open(out / "validation" / "final.png"))
    assert final.shape == (height, width, 3) and "final at step 3" in log
    card = (out / "README.md").read_text()
    assert "![validation](validation.png)" in card
    assert np.array_equal(np.asarray(Image.open(out / "validation.png")), final)  # the card shows the final grid
    shutil.rmtree(out)
