"""examples/train_irib_lora.py never loses a run and never ends in a traceback for a user's mistake.

Checkpoints: only complete ``checkpoint-<step>`` folders the script wrote are pruned or resumed; a
save is staged and renamed when complete, so a kill or a full disk half-way (simulated by failing a
write or the rename) leaves nothing that looks whole. An earlier run's output folder is refused
unless resuming or ``--overwrite_output_dir``. Each mistake ends in one line (``--debug``: the
traceback), found before the models load where the arguments alone can tell.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_tiny_pipeline
from PIL import Image
from skimage import data
from training_script import SCRIPT, load_script


@pytest.fixture(scope="module")
def script():
    from accelerate import PartialState

    PartialState(cpu=True)  # the script's accelerate logger needs a state, as under accelerate launch
    return load_script()


class Killed(BaseException):
    """The process died here: nothing after it runs, no clean-up either."""


class FakeAccelerator:
    """One process; ``save_state`` writes what accelerate writes for our run (sets, optimiser, RNG)."""

    is_main_process = True

    def __init__(self, fail_after: int | None = None, error: BaseException | None = None):
        self.fail_after, self.error = fail_after, error

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, folder: str) -> None:
        files = ["projector/pytorch_lora_weights.safetensors", "projector/adapter_set_config.json"]
        files += ["optimizer.bin", "scheduler.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"]
        for i, name in enumerate(files):
            if self.fail_after is not None and i == self.fail_after:
                raise self.error
            os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
            Path(folder, name).write_bytes(os.urandom(64))


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# --------------------------------------------------------------------------- listing, pruning, latest
@pytest.fixture
def run_folder(tmp_path, script):
    """Checkpoints 1, 3 and 10 saved by the script, and things of the user's that only look like them."""
    out = tmp_path / "run"
    out.mkdir()
    for step in (1, 3, 10):
        script.save_checkpoint(FakeAccelerator(), str(out), step)
    (out / "checkpoint-1-keep").mkdir()
    (out / "checkpoint-1-keep" / "notes.md").write_text("my favourite")
    (out / "checkpoint-notes.txt").write_text("lr 1e-4 was better")
    (out / "checkpoint-final").mkdir()
    return out


def test_pruning_removes_only_the_oldest_complete_checkpoints_of_the_script(run_folder, script):
    script.prune_checkpoints(str(run_folder), limit=2)  # room for one more: keep 1 of the 3
    assert names(run_folder) == {"checkpoint-10", "checkpoint-1-keep", "checkpoint-notes.txt", "checkpoint-final"}
    assert (run_folder / "checkpoint-1-keep" / "notes.md").read_text() == "my favourite"


def test_latest_resumes_the_last_complete_checkpoint_and_names_the_incomplete_ones(run_folder, script, caplog):
    (run_folder / "checkpoint-12").mkdir()  # written in place by an older version, killed half-way
    (run_folder / "checkpoint-12" / "optimizer.bin").write_bytes(b"half")
    script.save_checkpoint(FakeAccelerator(), str(run_folder), 11)
    truncated = run_folder / "checkpoint-11" / "optimizer.bin"
    truncated.write_bytes(truncated.read_bytes()[:10])  # damaged afterwards
    args = argparse.Namespace(output_dir=str(run_folder), resume_from_checkpoint="latest")
    with caplog.at_level(logging.WARNING):
        found = script.find_resume_checkpoint(args)
    assert found == (str(run_folder / "checkpoint-10"), 10)
    assert "skips checkpoint-11: optimizer.bin has 10 bytes, 64 were saved" in caplog.text
    assert "skips checkpoint-12: no irib_checkpoint.json" in caplog.text


def test_a_renamed_copy_of_a_checkpoint_resumes_at_its_step(run_folder, script):
    copy = run_folder.parent / "best-so-far"
    shutil.copytree(run_folder / "checkpoint-3", copy)
    args = argparse.Namespace(output_dir=str(run_folder.parent / "new"), resume_from_checkpoint=str(copy))
    assert script.find_resume_checkpoint(args) == (str(copy), 3)


# --------------------------------------------------------------------------- staged checkpoint saves
def test_a_checkpoint_save_that_fails_half_way_leaves_nothing_behind(tmp_path, script):
    out = tmp_path / "run"
    out.mkdir()
    script.save_checkpoint(FakeAccelerator(), str(out), 2)
    full_disk = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError):
        script.save_checkpoint(FakeAccelerator(fail_after=3, error=full_disk), str(out), 4)
    assert names(out) == {"checkpoint-2"}
    assert [step for step, _ in script.list_checkpoints(str(out))[0]] == [2]


def test_a_kill_during_a_checkpoint_save_is_never_resumed_and_is_cleaned_up_by_the_next_save(
    tmp_path, script, monkeypatch
):
    out = tmp_path / "run"
    out.mkdir()
    script.save_checkpoint(FakeAccelerator(), str(out), 2)

    def dead(*args, **kwargs):
        raise Killed()

    for where in ("save_state", "rename"):
        with monkeypatch.context() as patch:
            patch.setattr(shutil, "rmtree", dead)  # a dead process cleans nothing up
            accelerator = FakeAccelerator(fail_after=2, error=Killed()) if where == "save_state" else FakeAccelerator()
            if where == "rename":
                patch.setattr(os, "replace", dead)
            with pytest.raises(Killed):
                script.save_checkpoint(accelerator, str(out), 4)
        assert names(out) == {"checkpoint-2", ".checkpoint-4.saving"}  # only a hidden staging folder
        complete, incomplete = script.list_checkpoints(str(out))
        assert [s for s, _ in complete] == [2] and incomplete == {}
        script.save_checkpoint(FakeAccelerator(), str(out), 6)
        assert names(out) == {"checkpoint-2", "checkpoint-6"}
        shutil.rmtree(out / "checkpoint-6")


def test_a_checkpoint_records_its_step_and_every_file_it_holds(tmp_path, script):
    folder = Path(script.save_checkpoint(FakeAccelerator(), str(tmp_path), 7))
    record = json.loads((folder / "irib_checkpoint.json").read_text())
    assert record["step"] == 7
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != "irib_checkpoint.json"]
    assert record["files"] == {str(p.relative_to(folder)): p.stat().st_size for p in files}


# --------------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny base, a restorer set and a projector set, and folders of images."""
    root = tmp_path_factory.mktemp("train-guards")
    pipe = make_tiny_pipeline()
    pipe.save_pretrained(root / "base")
    for role in ("restorer", "projector"):
        pipe.add_adapter_set(role, conv_in=role == "restorer", trainable=False)
        pipe.save_adapter_set(root / role, role)
    (root / "one").mkdir()
    Image.fromarray(data.astronaut()[::8, ::8]).save(root / "one" / "astronaut.png")
    (root / "empty").mkdir()
    (root / "damaged").mkdir()
    for i in range(3):
        (root / "damaged" / f"photo{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(100))
    return root


def base_args(root: Path, out: str = "out", data_dir: str = "one") -> list[str]:
    return [
        *("--pretrained_model_name_or_path", str(root / "base"), "--restorer_adapter", str(root / "restorer")),
        *("--train_data_dir", str(root / data_dir), "--train_batch_size", "1", "--resolution", "32"),
        *("--min_image_size", "32", "--lpips_weight", "0", "--output_dir", str(root / out), "--report_to", "none"),
        *("--prompt_extractor", "none"),
    ]


def one_line_error(script, argv: list[str], capsys) -> str:
    """Run the command line in this process: it must exit with one line naming the problem."""
    with pytest.raises(SystemExit) as info:
        script.cli(argv)
    err = capsys.readouterr().err
    assert info.value.code != 0 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train_irib_lora.py: error: "), err
    return lines[0]


def test_an_earlier_runs_output_folder_is_refused_unless_resuming_or_overwriting(workspace, script, capsys):
    out = workspace / "earlier"
    script.save_checkpoint(FakeAccelerator(), str(out), 4)
    shutil.copytree(workspace / "projector", out, dirs_exist_ok=True)  # a finished run's set
    line = one_line_error(script, base_args(workspace, "earlier"), capsys)
    assert "'" + str(out) + "'" in line and "checkpoint-4" in line and "--overwrite_output_dir" in line
    assert "adapter_set_config.json" in line
    script.parse_args(base_args(workspace, "earlier") + ["--overwrite_output_dir"])
    script.parse_args(base_args(workspace, "earlier") + ["--resume_from_checkpoint", "latest"])
    shutil.rmtree(out / "checkpoint-4")  # a finished run, nothing to resume: refused, even with latest
    line = one_line_error(script, base_args(workspace, "earlier") + ["--resume_from_checkpoint", "latest"], capsys)
    assert "no complete checkpoint to resume from" in line


@pytest.mark.parametrize(
    "case, extra, words",
    [
        ("one image, batch 2", ["--train_batch_size", "2"], "gives 1 image(s), fewer than one batch"),
        ("empty data folder", ["--train_data_dir", "EMPTY"], "holds no image files"),
        (
            "negative learning rate",
            ["--learning_rate", "-0.0001"],
            "--learning_rate must be a finite number >= 0, got -0.0001",
        ),
        ("NaN learning rate", ["--learning_rate", "nan"], "--learning_rate must be a finite number >= 0, got nan"),
        ("a projector as the restorer", ["--restorer_adapter", "PROJECTOR"], "holds a 'projector' adapter set"),
        ("an incomplete renamed copy", ["--resume_from_checkpoint", "COPY"], "no irib_checkpoint.json"),
    ],
)
def test_each_mistake_ends_in_one_line_before_any_model_loads(
    workspace, script, capsys, monkeypatch, case, extra, words
):
    import diffusers_irib

    def no_models(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(diffusers_irib.IRIBRestorationPipeline, "from_pretrained", no_models)
    (workspace / "copy").mkdir(exist_ok=True)
    subs = {
        "EMPTY": str(workspace / "empty"),
        "PROJECTOR": str(workspace / "projector"),
        "COPY": str(workspace / "copy"),
    }
    argv = base_args(workspace, f"never-{len(case)}") + [subs.get(a, a) for a in extra]
    assert words in one_line_error(script, argv, capsys), case
    assert not (workspace / f"never-{len(case)}").exists()


def test_an_unreadable_data_folder_is_named(workspace, script, capsys, monkeypatch):
    real = os.scandir

    def denied(path="."):
        if str(path).endswith("one"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", denied)
    line = one_line_error(script, base_args(workspace, "never"), capsys)
    assert "--train_data_dir" in line and "cannot be read" in line and "Permission denied" in line


def test_a_folder_of_damaged_images_ends_in_one_line_and_debug_shows_the_traceback(workspace):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["HF_DATASETS_CACHE"] = str(workspace / "ds-cache")
    argv = base_args(workspace, "damaged-run", "damaged") + ["--max_train_steps", "1"]
    result = subprocess.run([sys.executable, str(SCRIPT), *argv], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("train_irib_lora.py: error: ") and "unreadable" in last and "--debug" in last
    argv = argv[:-2] + ["--learning_rate", "nan", "--debug"]
    result = subprocess.run([sys.executable, str(SCRIPT), *argv], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" in result.stderr and "learning_rate" in result.stderr
