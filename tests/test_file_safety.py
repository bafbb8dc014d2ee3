"""Nothing the user had is lost and nothing half-written is left: staged saves with simulated failures,
file modes from the umask, NaN/Inf weights refused, and a set never taken for another role."""

from __future__ import annotations

import errno
import os
import stat

import pytest
import torch
from conftest import make_tiny_pipeline
from lora_reference import randomize, tiny_pipeline_with_random_sets
from safetensors.torch import load_file, save_file

from diffusers_irib import IRIBRestorationPipeline
from diffusers_irib.adapters import AdapterSetConfig
from diffusers_irib.file_utils import staged_folder


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def listing(folder) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (hidden leftovers included)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


@pytest.fixture
def pipe():
    return tiny_pipeline_with_random_sets()


# --------------------------------------------------------------------------- staged_folder
def test_a_failed_save_creates_nothing_and_leaves_no_staging_folder(tmp_path):
    with pytest.raises(OSError):
        with staged_folder(tmp_path / "new") as staging:
            open(os.path.join(staging, "a.txt"), "w").write("partial")
            disk_full()
    with pytest.raises(OSError):  # nor the parent folders it had to create
        with staged_folder(tmp_path / "runs" / "day1" / "new"):
            disk_full()
    assert os.listdir(tmp_path) == []


def test_a_save_replaces_only_its_own_entries_and_keeps_the_others(tmp_path):
    target = tmp_path / "out"
    (target / "checkpoint-2").mkdir(parents=True)
    (target / "checkpoint-2" / "state.bin").write_text("keep me")
    (target / "weights.bin").write_text("old")
    with staged_folder(target) as staging:
        open(os.path.join(staging, "weights.bin"), "w").write("new")
    assert listing(target) == {"weights.bin": b"new", os.path.join("checkpoint-2", "state.bin"): b"keep me"}


def test_a_failure_while_moving_in_puts_the_old_entries_back(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    for name in ("a.json", "b.safetensors", "c.md"):
        (target / name).write_text(f"old {name}")
    before = listing(target)
    real_replace, calls = os.replace, []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == 4:  # a's backup + a in place, b's backup, then b fails: undo a
            disk_full()
        return real_replace(src, dst)

    with pytest.raises(OSError):
        with staged_folder(target) as staging:
            for name in ("a.json", "b.safetensors", "c.md"):
                open(os.path.join(staging, name), "w").write(f"new {name}")
            monkeypatch.setattr(os, "replace", flaky_replace)
    monkeypatch.setattr(os, "replace", real_replace)
    assert listing(target) == before  # no new file, no backup left over
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_saved_files_and_folders_get_the_umask_permissions(tmp_path, pipe):
    old = os.umask(0o022)
    try:
        pipe.save_adapter_set(tmp_path / "set", "projector")
        pipe.save_pretrained(tmp_path / "pipe")
    finally:
        os.umask(old)
    for folder in (tmp_path / "set", tmp_path / "pipe", tmp_path / "pipe" / "adapter_sets" / "restorer"):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o755, folder
    for path in [*(tmp_path / "set").iterdir(), tmp_path / "pipe" / "model_index.json"]:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path


# --------------------------------------------------------------------------- adapter sets
def test_a_resave_that_fails_leaves_the_previous_set_whole_and_loadable(tmp_path, pipe, monkeypatch):
    folder = tmp_path / "projector"
    pipe.save_adapter_set(folder, "projector")
    before = listing(folder)
    randomize(pipe.unet, "projector", 99)  # new weights that must not reach the folder
    monkeypatch.setattr(AdapterSetConfig, "to_json_file", disk_full)  # the config write fails
    with pytest.raises(OSError):
        pipe.save_adapter_set(folder, "projector")
    monkeypatch.undo()
    assert listing(folder) == before
    fresh = make_tiny_pipeline()
    fresh.load_adapter_set(folder)
    assert torch.equal(
        load_file(folder / "pytorch_lora_weights.safetensors")["unet.conv_out.lora_B.weight"],
        fresh.unet.conv_out.lora_B["projector"].weight,
    )


def test_a_fresh_save_that_fails_creates_no_folder(tmp_path, pipe, monkeypatch):
    monkeypatch.setattr(AdapterSetConfig, "to_json_file", disk_full)
    with pytest.raises(OSError):
        pipe.save_adapter_set(tmp_path / "projector", "projector")
    assert os.listdir(tmp_path) == []


def test_pipeline_save_is_all_or_nothing_and_a_deleted_set_does_not_come_back(tmp_path, pipe, monkeypatch):
    from diffusers import DiffusionPipeline

    target = tmp_path / "pipe"
    pipe.save_pretrained(target)
    before = listing(target)

    real = DiffusionPipeline.save_pretrained

    def half_then_full_disk(self, save_directory, **kwargs):
        real(self, save_directory, **kwargs)  # the base components are written ...
        disk_full()  # ... then the disk fills up

    monkeypatch.setattr(DiffusionPipeline, "save_pretrained", half_then_full_disk)
    with pytest.raises(OSError):
        pipe.save_pretrained(tmp_path / "fresh")
    pipe.delete_adapter_set("projector")
    with pytest.raises(OSError):
        pipe.save_pretrained(target)
    monkeypatch.undo()
    assert not (tmp_path / "fresh").exists() and listing(target) == before
    assert sorted(os.listdir(tmp_path)) == ["pipe"]  # no staging folder left behind

    pipe.save_pretrained(target)  # the projector was deleted: it must not come back on load
    assert IRIBRestorationPipeline.from_pretrained(target).adapter_sets == ["restorer"]


# --------------------------------------------------------------------------- garbage weights
def test_nan_or_inf_weights_are_refused_at_load_naming_the_tensor(tmp_path, pipe):
    folder = tmp_path / "projector"
    pipe.save_adapter_set(folder, "projector")
    weights = folder / "pytorch_lora_weights.safetensors"
    from safetensors import safe_open

    with safe_open(weights, "pt") as f:
        metadata = f.metadata()
    tensors = load_file(weights)
    tensors["unet.conv_out.lora_B.weight"][0, 0] = float("nan")
    save_file(tensors, weights, metadata=metadata)
    with pytest.raises(ValueError, match=r"unet\.conv_out\.lora_B\.weight.*NaN"):
        make_tiny_pipeline().load_adapter_set(folder)

    with torch.no_grad():
        pipe.unet.conv_out.lora_B["projector"].weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="conv_out"):
        pipe.save_adapter_set(tmp_path / "never", "projector")  # never written either
    assert not (tmp_path / "never").exists()


def test_damaged_weights_are_named(tmp_path, pipe):
    folder = tmp_path / "projector"
    pipe.save_adapter_set(folder, "projector")
    weights = folder / "pytorch_lora_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    with pytest.raises(ValueError, match=r"pytorch_lora_weights\.safetensors is damaged"):
        make_tiny_pipeline().load_adapter_set(folder)


# --------------------------------------------------------------------------- roles
def test_a_restorer_folder_is_not_taken_as_the_projector_unless_asked_explicitly(tmp_path, pipe):
    pipe.save_pretrained(tmp_path / "base")
    pipe.save_adapter_set(tmp_path / "restorer-set", "restorer")
    with pytest.raises(ValueError, match="holds a 'restorer' adapter set, not a 'projector'"):
        IRIBRestorationPipeline.from_pretrained(tmp_path / "base", projector=tmp_path / "restorer-set")
    other = make_tiny_pipeline()
    other.load_adapter_set(tmp_path / "restorer-set", role="projector")  # an explicit override
    assert other.adapter_sets == ["projector"]


# --------------------------------------------------------------------------- local or Hub
def test_a_mistyped_local_path_fails_fast_naming_it_and_never_asks_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    pipe = make_tiny_pipeline()
    for path, message in [
        ("runs/projector", "'runs/projector' is not a folder"),  # its parent exists: a local path
        ("./projector", "is not a folder"),
        ("~/nowhere/projector", "is not a folder"),
        ("a/b/c", "not a valid Hub repo id"),
    ]:
        with pytest.raises(ValueError, match=message):
            pipe.load_adapter_set(path)


def test_a_hub_id_offline_and_not_cached_fails_fast_naming_it(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"'someone/irib-projector' is not a local folder.*offline"):
        make_tiny_pipeline().load_adapter_set("someone/irib-projector")
    assert time.perf_counter() - start < 10  # no network retries (conftest sets HF_HUB_OFFLINE=1)
