"""examples/train_irib_lora.py end to end on CPU: tiny components saved to a temp folder, real photos,
a local folder with bad files, a local parquet streamed like the Hub's LSDIR, and two real DDP processes.

The runs are real ``accelerate launch`` / ``torchrun`` subprocesses (offline). Independent truth:
the resumed run must end with the bit-identical weights of the uninterrupted one; the saved set must
load through ``from_pretrained`` and change the output; the two ranks must read disjoint samples and
end with one digest.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_pipeline
from lora_reference import randomize
from PIL import Image
from safetensors.torch import load_file
from skimage import data
from training_script import SCRIPT, load_script

from diffusers_irib import IRIBRestorationPipeline
from diffusers_irib.utils.image_files import center_crop_resize, load_image

BIN = Path(sys.executable).parent


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def small(array: np.ndarray, side: int = 96) -> np.ndarray:
    """A photo downsized so the tiny runs decode fast (short side ``side``)."""
    image = Image.fromarray(array)
    scale = side / min(image.size)
    return np.asarray(image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny base saved like a Hub repo, a restorer set, a messy image folder and a parquet dataset."""
    root = tmp_path_factory.mktemp("train")
    pipe = make_tiny_pipeline()
    pipe.save_pretrained(root / "base")
    pipe.add_adapter_set("restorer", conv_in=True, trainable=False)
    randomize(pipe.unet, "restorer", 1, std=0.02)
    randomize(pipe.vae, "restorer", 2, std=0.02)
    pipe.save_adapter_set(root / "restorer", "restorer")

    messy = root / "messy"
    messy.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(small(getattr(data, name)())).save(messy / f"{name}.png")
    Image.fromarray(small(data.camera())).save(messy / "camera_gray.png")  # mode L: converted, not skipped
    (messy / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    jpeg = io.BytesIO()
    Image.fromarray(small(data.rocket())).save(jpeg, format="JPEG")
    (messy / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    Image.fromarray(small(data.astronaut(), 16)).save(messy / "tiny.png")  # below --min_image_size 32

    import datasets

    rows = [
        png_bytes(small(getattr(data, n)())) for n in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field")
    ]
    rows += [
        png_bytes(small(np.ascontiguousarray(getattr(data, n)()[::-1]))) for n in ("astronaut", "coffee", "chelsea")
    ]
    rows.insert(3, b"definitely not an image")
    (root / "lsdir" / "data").mkdir(parents=True)
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in rows]}, features=datasets.Features({"image": datasets.Image()})
    )
    table.to_parquet(root / "lsdir" / "data" / "train-00000-of-00001.parquet")
    return root


def env(root: Path) -> dict:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(root / "ds-cache"),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def common_args(root: Path, output: str) -> list[str]:
    args = ["--pretrained_model_name_or_path", str(root / "base"), "--restorer_adapter", str(root / "restorer")]
    args += "--resolution 32 --min_image_size 32 --learning_rate 1e-3 --lpips_random_backbone".split()
    return args + ["--output_dir", str(root / output), "--seed", "3", "--prompt_extractor", "none"]


def run(command: list[str], root: Path) -> str:
    result = subprocess.run(command, cwd=root, env=env(root), capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def accelerate_launch(root: Path, args: list[str]) -> str:
    return run([str(BIN / "accelerate"), "launch", "--num_processes", "1", "--cpu", str(SCRIPT), *args], root)


@pytest.fixture(scope="module")
def short_run(workspace):
    """3 steps on the messy folder, checkpoint every 2, validation on a real photo, tensorboard on."""
    args = common_args(workspace, "run") + ["--train_data_dir", str(workspace / "messy")]
    args += "--train_batch_size 2 --max_train_steps 3 --checkpointing_steps 2".split()
    args += ["--validation_images", str(workspace / "messy" / "astronaut.png"), "--validation_steps", "2"]
    return args, accelerate_launch(workspace, args)


def test_the_short_run_skips_bad_images_counts_them_and_saves_everything(workspace, short_run):
    _, log = short_run
    out = workspace / "run"
    last = [line for line in log.splitlines() if "step 3/3" in line][-1]
    counts = json.loads(re.search(r"images skipped (\{.*?\})", last).group(1).replace("'", '"'))
    assert set(counts) <= {"unreadable", "truncated", "too_small"} and sum(counts.values()) > 0, last
    assert "data wait" in last and re.search(r"converted \d+", last)
    saved = {"adapter_set_config.json", "pytorch_lora_weights.safetensors", "README.md", "validation.png"}
    assert {p.name for p in out.iterdir()} >= saved | {"checkpoint-2", "logs", "validation"}
    state = {"projector", "regularizer", "optimizer.bin", "optimizer_1.bin", "random_states_0.pkl"}
    assert {p.name for p in (out / "checkpoint-2").iterdir()} >= state
    assert json.loads((out / "checkpoint-2" / "irib_checkpoint.json").read_text())["step"] == 2  # staged, complete
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left
    assert list((out / "logs").rglob("events.out.tfevents.*"))  # tensorboard
    grid = np.asarray(Image.open(out / "validation" / "step-000002.png"))
    assert grid.shape[1] == 4 * 256  # ELQ | LQ proxy | restored | HQ, 32 px crops shown 8 x larger
    # the last column is the validation image's 32 px centre crop (enlarged), below the column labels
    hq = np.asarray(center_crop_resize(load_image(workspace / "messy" / "astronaut.png"), 32))
    hq = np.kron(hq, np.ones((8, 8, 1), dtype=np.uint8))
    tops = [y for y in range(grid.shape[0] - 256 + 1) if np.array_equal(grid[y : y + 256, 768:], hq)]
    assert len(tops) == 1 and tops[0] >= 12 and (grid[: tops[0]].min(axis=-1) < 100).any()


def test_resuming_from_checkpoint_2_ends_with_the_weights_of_the_uninterrupted_run(workspace, short_run):
    args, _ = short_run
    resumed = workspace / "resumed"
    resumed.mkdir()
    shutil.copytree(workspace / "run" / "checkpoint-2", resumed / "checkpoint-2")
    args = [a if a != str(workspace / "run") else str(resumed) for a in args]
    log = accelerate_launch(workspace, args + ["--resume_from_checkpoint", "latest", "--report_to", "none"])
    assert "from step 2" in log and "step 3/3" in log and "step 1/3" not in log
    full = load_file(workspace / "run" / "pytorch_lora_weights.safetensors")
    again = load_file(resumed / "pytorch_lora_weights.safetensors")
    assert full.keys() == again.keys()
    for key in full:
        assert torch.equal(full[key], again[key]), key
    assert any(float(v.abs().max()) > 0 for k, v in full.items() if "lora_B" in k)  # it did train


def test_the_saved_set_loads_into_the_pipeline_and_changes_its_output(workspace, short_run):
    from huggingface_hub import ModelCard

    base, restorer = workspace / "base", workspace / "restorer"
    trained = IRIBRestorationPipeline.from_pretrained(base, projector=workspace / "run", restorer=restorer)
    untrained = IRIBRestorationPipeline.from_pretrained(base, restorer=restorer)
    untrained.add_adapter_set("projector", trainable=False)  # LoRA B = 0: the base model as f
    image = torch.from_numpy(small(data.coffee(), 32)[:32, :32].copy()).permute(2, 0, 1).float() / 255
    a = trained(image, output_type="pt", color_fix=None).images
    b = untrained(image, output_type="pt", color_fix=None).images
    assert a.shape == b.shape == (1, 3, 32, 32) and float((a - b).abs().max()) > 1e-3

    card = ModelCard.load(workspace / "run" / "README.md")
    assert card.data.base_model is None and card.data.library_name == "diffusers"  # a local base: no Hub model
    assert "| base model | a local base model |" in card.text and f"huggingface.co/{base}" not in card.text
    assert card.data.pipeline_tag == "image-to-image" and card.data.license == "openrail++"
    assert {"lora", "irib", "projector"} <= set(card.data.tags)
    assert "| steps | 3 |" in card.text and "![validation](validation.png)" in card.text


def test_push_to_hub_uploads_the_set_folder_and_nothing_else(workspace, short_run, monkeypatch):
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, exist_ok=False, repo_type=None):
            calls["create"] = (repo_id, exist_ok, repo_type)
            return huggingface_hub.RepoUrl(f"https://huggingface.co/me/{repo_id}")

        def upload_folder(self, repo_id, folder_path, commit_message=None, ignore_patterns=None):
            calls["upload"] = (repo_id, Path(folder_path), ignore_patterns)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    script = load_script()
    out = workspace / "run"
    assert script.publish_to_hub(str(out), "irib-test", token="t0k") == "me/irib-test"
    repo_id, folder, ignore = calls["upload"]
    assert calls["create"] == ("irib-test", True, "model") and calls["token"] == "t0k" and folder == out
    files = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    uploaded = set(filter_repo_objects(files, ignore_patterns=ignore))
    assert uploaded == {"README.md", "adapter_set_config.json", "pytorch_lora_weights.safetensors", "validation.png"}


def test_bad_arguments_fail_before_any_model_loads_with_a_message_naming_them(workspace, monkeypatch):
    script = load_script()
    base = common_args(workspace, "never") + ["--train_data_dir", str(workspace / "messy")]

    def error(extra: list[str], flags=base) -> str:
        with pytest.raises(ValueError) as info:
            script.parse_args(flags + extra)
        return str(info.value)

    assert "--elq_preset" in error(["--elq_preset", "extreme-ish"])
    assert "--lq_preset" in error(["--lq_preset", str(workspace / "missing.json")])
    assert "multiple of 8" in error(["--resolution", "100"])
    assert "--train_data_dir" in error(["--train_data_dir", str(workspace / "nowhere")], common_args(workspace, "x"))
    assert "--validation_images" in error(["--validation_images", str(workspace / "messy" / "corrupt.png")])
    assert "--restorer_adapter" in error(
        [], [a for a in base if a != str(workspace / "restorer") and a != "--restorer_adapter"]
    )
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as where it is not installed
    assert "bitsandbytes" in error(["--use_8bit_adam"])
    assert "max_train_steps" in error(["--streaming"])

    other = workspace / "restorer-768"  # a restorer made for another base (SD2.1 768-v has sample_size 96)
    shutil.copytree(workspace / "restorer", other, dirs_exist_ok=True)
    config = json.loads((other / "adapter_set_config.json").read_text())
    config["base_architecture"]["unet"]["sample_size"] = 96
    (other / "adapter_set_config.json").write_text(json.dumps(config))
    message = error([], [a if a != str(workspace / "restorer") else str(other) for a in base])
    assert "another base model" in message and "sample_size" in message

    result = subprocess.run(
        [sys.executable, str(SCRIPT), *base, "--resolution", "30"],
        env=env(workspace),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr and "--resolution" in result.stderr
    assert not (workspace / "never").exists()


def test_the_ram_default_stops_before_loading_with_what_is_missing_and_the_way_out(workspace, monkeypatch):
    script = load_script()
    flags = [a for a in common_args(workspace, "never") if a not in ("--prompt_extractor", "none")]
    flags += ["--train_data_dir", str(workspace / "messy")]
    assert script.parse_args(flags + ["--prompt_extractor", "none"]).prompt_extractor == "none"

    def error(extra: list[str]) -> str:
        with pytest.raises(ValueError) as info:
            script.parse_args(flags + extra)
        return str(info.value)

    monkeypatch.setitem(sys.modules, "ram", None)  # not installed
    message = error([])
    assert "`ram` package" in message and "--prompt_extractor none" in message and "\n" not in message
    import importlib.machinery
    import types

    fake = types.ModuleType("ram")
    fake.__spec__ = importlib.machinery.ModuleSpec("ram", None)
    monkeypatch.setitem(sys.modules, "ram", fake)  # installed, but no checkpoint given / found
    message = error([])
    assert "--prompt_extractor_model" in message and "ram_swin_large_14m.pth" in message
    assert "--prompt_extractor none" in message
    missing = str(workspace / "ram_swin_large_14m.pth")
    assert missing in error(["--prompt_extractor_model", missing])
    assert script.parse_args(flags + ["--prompt_source", "none"]).prompt_extractor == "ram"  # no prompts: no RAM

    command = [sys.executable, str(SCRIPT), *flags]
    result = subprocess.run(command, env=env(workspace), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr and "--prompt_extractor none" in result.stderr
    assert not (workspace / "never").exists()


def test_direct_mode_starts_from_the_restorer_with_osediffs_loss(workspace):
    """One step at learning rate 0 saves the restorer itself: same tensors, same restorations."""
    script = load_script()
    args = common_args(workspace, "direct") + ["--train_data_dir", str(workspace / "messy"), "--mode", "direct"]
    args += ["--learning_rate", "0", "--max_train_steps", "1", "--train_batch_size", "1", "--report_to", "none"]
    parsed = script.parse_args(args)
    assert (parsed.lpips_weight, parsed.blur_weight, parsed.lq_weight) == (2.0, 0.0, 1.0)  # lq: unused in direct
    without_restorer = [a for a in args if a not in ("--restorer_adapter", str(workspace / "restorer"))]
    with pytest.raises(ValueError, match="--direct_init base"):
        script.parse_args(without_restorer)
    log = accelerate_launch(workspace, args)
    assert "starts from the restorer" in log and "step 1/1" in log
    saved, restorer = (load_file(workspace / d / "pytorch_lora_weights.safetensors") for d in ("direct", "restorer"))
    assert saved.keys() == restorer.keys()
    for key in saved:
        assert torch.equal(saved[key], restorer[key]), key
    config = json.loads((workspace / "direct" / "adapter_set_config.json").read_text())
    assert config["has_conv_in"] and config["degradation_preset"]["preset_name"] == "elq"

    image = torch.from_numpy(small(data.coffee(), 32)[:32, :32].copy()).permute(2, 0, 1).float() / 255
    outputs = []
    for folder in ("restorer", "direct"):
        pipe = IRIBRestorationPipeline.from_pretrained(workspace / "base")
        pipe.load_adapter_set(workspace / folder, role="restorer")
        outputs.append(pipe(image, use_projector=False, output_type="pt", color_fix=None).images)
    assert torch.equal(outputs[0], outputs[1])
    fresh = script.parse_args(args + ["--direct_init", "base", "--overwrite_output_dir"])
    assert fresh.direct_init == "base"


def test_two_ddp_processes_read_disjoint_streamed_samples_and_end_with_the_same_weights(workspace):
    """torchrun gives accelerate's MULTI_CPU (gloo): a real 2-process DDP run on the streamed parquet."""
    args = common_args(workspace, "ddp") + ["--dataset_name", str(workspace / "lsdir"), "--streaming"]
    args += (
        "--train_batch_size 1 --max_train_steps 2 --checkpointing_steps 100 --log_sample_ids --report_to none".split()
    )
    log = run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(SCRIPT), *args], workspace)
    assert "MULTI_CPU" in log and "Num processes: 2" in log
    digests = re.findall(r"\[RANK (\d)\] trained weights sha256 ([0-9a-f]{64})", log)
    assert sorted(rank for rank, _ in digests) == ["0", "1"] and len({d for _, d in digests}) == 1
    seen = {}
    for rank in (0, 1):
        lines = (workspace / "ddp" / "logs" / f"samples-rank{rank}.jsonl").read_text().splitlines()
        seen[rank] = [i for line in lines for i in json.loads(line)["ids"]]
        assert len(seen[rank]) == 2
    assert not set(seen[0]) & set(seen[1])  # split_dataset_by_node: each rank reads its own rows
    card_data = (workspace / "ddp" / "README.md").read_text()
    assert f"- {workspace / 'lsdir'}" in card_data  # the dataset in the card's metadata
