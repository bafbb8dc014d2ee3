"""A save killed at any point leaves a folder that loads as the whole old version or the whole new one.

A kill is simulated by making the Nth rename, removal or file write of the process fail, and every
one after it (a dead process cleans nothing up), for every N until the save gets through. The folder
is then loaded with fresh file operations: the old version (every adapter set, ``model_index.json``)
until the new one is complete, and the next save leaves no ``.saving-*``/``.old-*`` behind.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_pipeline
from lora_reference import randomize, tiny_pipeline_with_random_sets
from safetensors.torch import load_file

from diffusers_irib import IRIBRestorationPipeline
from diffusers_irib.file_utils import JOURNAL_NAME, recover_interrupted_save

FILE_OPERATIONS = [(os, "replace"), (os, "rename"), (os, "remove"), (os, "unlink"), (os, "rmdir"), (shutil, "rmtree")]


class Killed(BaseException):
    """The process died here: nothing after it runs, no clean-up either."""


@contextlib.contextmanager
def killed_at(n: int, monkeypatch):
    """From the ``n``-th rename/removal/file write on, every one fails as if the process were gone."""
    count, depth = [0], [0]

    def dying(real):
        def call(*args, **kwargs):
            if depth[0]:  # the removals inside one rmtree count as that one operation
                return real(*args, **kwargs)
            count[0] += 1
            if count[0] >= n:
                raise Killed(f"killed at file operation {count[0]}")
            depth[0] += 1
            try:
                return real(*args, **kwargs)
            finally:
                depth[0] -= 1

        return call

    real_open = builtins.open

    def dying_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            return dying(real_open)(file, mode, *args, **kwargs)
        return real_open(file, mode, *args, **kwargs)

    with monkeypatch.context() as patch:
        for module, name in FILE_OPERATIONS:
            patch.setattr(module, name, dying(getattr(module, name)))
        patch.setattr(builtins, "open", dying_open)
        yield count


def hidden_entries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def set_tensors(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{role: tensors} of the adapter sets saved beside a pipeline."""
    sets = folder / "adapter_sets"
    return {p.name: load_file(p / "pytorch_lora_weights.safetensors") for p in sorted(sets.iterdir())}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in ((a[r], b[r]) for r in a)
    )


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def loaded_version(folder: Path, versions: dict[str, dict], untouched: dict[str, bytes] | None = None) -> str:
    """Which version ``from_pretrained`` sees: its sets and their weights must be exactly one of them.
    (A folder still byte for byte ``untouched``, the old save, needs no loading to be the old version.)"""
    if untouched is not None and listing(folder) == untouched:
        return "old"
    pipe = IRIBRestorationPipeline.from_pretrained(folder)
    assert (folder / "model_index.json").is_file()
    found = set_tensors(folder)
    assert sorted(found) == pipe.adapter_sets
    matches = [name for name, tensors in versions.items() if same(found, tensors)]
    assert len(matches) == 1, f"neither the old nor the new version: sets {sorted(found)}"
    return matches[0]


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """An old save (projector + restorer) and the pipeline of a new one (another projector, no restorer,
    a new 'direct' set), with the tensors each version must load with."""
    root = tmp_path_factory.mktemp("versions")
    pipe = tiny_pipeline_with_random_sets()
    pipe.save_pretrained(root / "old")
    pipe.delete_adapter_set("restorer")
    randomize(pipe.unet, "projector", 99)
    pipe.add_adapter_set("direct", trainable=False)
    randomize(pipe.unet, "direct", 7)
    pipe.save_pretrained(root / "new")
    return root / "old", pipe, {"old": set_tensors(root / "old"), "new": set_tensors(root / "new")}


def test_a_pipeline_save_killed_at_every_rename_or_write_loads_as_the_old_or_the_new_version(
    tmp_path, versions, monkeypatch
):
    old, pipe, expected = versions
    target = tmp_path / "work" / "pipe"
    seen, n, untouched = [], 1, listing(old)
    while True:
        shutil.rmtree(tmp_path / "work", ignore_errors=True)
        shutil.copytree(old, target)
        with killed_at(n, monkeypatch):
            try:
                pipe.save_pretrained(target)
                finished = True
            except Killed:
                finished = False
        version = loaded_version(target, expected, untouched)
        seen.append(version)
        if finished:
            assert version == "new"
            break
        n += 1
    assert n > 20 and seen[0] == "old" and "new" in seen[:-1]  # kills before and after the commit
    assert len([v for v in seen if v == "old"]) > 12  # also while staging, during the swap and its roll-back
    # the next save completes and cleans up what the kill left (here: the last kill before success)
    shutil.rmtree(tmp_path / "work")
    shutil.copytree(old, target)
    with killed_at(n - 1, monkeypatch), contextlib.suppress(Killed):
        pipe.save_pretrained(target)
    pipe.save_pretrained(target)
    assert loaded_version(target, expected) == "new"
    assert hidden_entries(target) == [] and os.listdir(tmp_path / "work") == ["pipe"]


def test_a_kill_in_the_middle_of_the_swap_is_rolled_back_by_the_next_load_even_if_that_is_killed_too(
    tmp_path, versions, monkeypatch
):
    old, pipe, expected = versions
    target = tmp_path / "work" / "pipe"

    def interrupted() -> None:
        shutil.rmtree(tmp_path / "work", ignore_errors=True)
        shutil.copytree(old, target)
        with monkeypatch.context() as patch:  # kill right after 'adapter_sets' was set aside
            real = os.replace

            dead = []

            def replace(src, dst):
                if dead:  # a dead process does nothing more
                    raise Killed("dead")
                real(src, dst)
                if Path(dst).name.startswith(".adapter_sets.old-"):
                    dead.append(True)
                    raise Killed("killed after setting adapter_sets aside")

            patch.setattr(os, "replace", replace)
            with contextlib.suppress(Killed):
                pipe.save_pretrained(target)

    interrupted()
    assert (target / JOURNAL_NAME).is_file() and not (target / "adapter_sets").exists()  # the state a kill leaves
    m = 1
    while True:
        with killed_at(m, monkeypatch):
            try:
                recover_interrupted_save(target)
                break
            except Killed:
                pass
        assert loaded_version(target, expected) == "old"  # the load finishes the interrupted roll-back
        interrupted()
        m += 1
    assert m > 2 and loaded_version(target, expected) == "old"


def test_an_adapter_set_saved_over_a_training_folder_and_killed_keeps_the_old_set_and_the_checkpoints(
    tmp_path, monkeypatch
):
    pipe = tiny_pipeline_with_random_sets()
    pristine = tmp_path / "pristine"
    pipe.save_adapter_set(pristine, "projector")
    (pristine / "checkpoint-2").mkdir()
    (pristine / "checkpoint-2" / "optimizer.bin").write_bytes(b"state")
    old = load_file(pristine / "pytorch_lora_weights.safetensors")
    randomize(pipe.unet, "projector", 42)
    target = tmp_path / "work" / "run"
    n, seen, fresh = 1, set(), make_tiny_pipeline()
    while True:
        shutil.rmtree(tmp_path / "work", ignore_errors=True)
        shutil.copytree(pristine, target)
        with killed_at(n, monkeypatch):
            try:
                pipe.save_adapter_set(target, "projector")
                finished = True
            except Killed:
                finished = False
        fresh.load_adapter_set(target)
        loaded = fresh.unet.conv_out.lora_B["projector"].weight.detach().clone()
        fresh.delete_adapter_set("projector")
        is_old = torch.equal(loaded, old["unet.conv_out.lora_B.weight"])
        is_new = torch.equal(loaded, pipe.unet.conv_out.lora_B["projector"].weight)
        assert is_old != is_new and (target / "adapter_set_config.json").is_file() and (target / "README.md").is_file()
        assert (target / "checkpoint-2" / "optimizer.bin").read_bytes() == b"state"
        seen.add("old" if is_old else "new")
        if finished:
            assert is_new
            break
        n += 1
    assert seen == {"old", "new"}
    pipe.save_adapter_set(target, "projector")
    assert hidden_entries(target) == [] and os.listdir(tmp_path / "work") == ["run"]
