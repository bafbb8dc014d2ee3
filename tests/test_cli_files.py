"""utils/output_files.py: input lists, output plans that never lose a file, atomic writes with normal modes."""

import errno
import os
from pathlib import Path

import pytest
from PIL import Image

from diffusers_irib.utils.errors import CLIError, WriteError
from diffusers_irib.utils.output_files import (
    PlannedFile,
    check_output_dir,
    check_plan,
    expand_inputs,
    save_image,
    save_json,
    write_atomically,
)


@pytest.fixture
def photos(tmp_path):
    """a/one.png, a/two.jpg, a/notes.txt, a/.hidden.png, a/sub/three.png."""
    folder = tmp_path / "a"
    (folder / "sub").mkdir(parents=True)
    for name in ("one.png", "two.jpg", ".hidden.png", "sub/three.png"):
        Image.new("RGB", (4, 4)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture
def umask_002():
    old = os.umask(0o002)
    yield
    os.umask(old)


def test_folders_give_their_visible_images_and_globs_their_matches(photos):
    assert [p.name for p in expand_inputs([str(photos)])] == ["one.png", "two.jpg"]
    assert [p.name for p in expand_inputs([str(photos / "*.jpg")])] == ["two.jpg"]
    # a file named explicitly is taken as it is; the same file twice is kept once
    assert [p.name for p in expand_inputs([str(photos / "notes.txt"), str(photos), str(photos / "one.png")])] == [
        "notes.txt",
        "one.png",
        "two.jpg",
    ]


@pytest.mark.parametrize(
    "spec, message",
    [("missing.png", "no such file or folder"), ("*.gif", "matches no image files"), ("sub", "holds no images")],
)
def test_inputs_that_give_nothing_are_named(photos, spec, message):
    (photos / "sub" / "three.png").unlink()
    with pytest.raises(CLIError, match=message) as info:
        expand_inputs([str(photos / spec)])
    assert spec in str(info.value)


def test_an_output_may_never_be_an_input_even_with_overwrite(tmp_path):
    source = tmp_path / "cat_lq.png"
    source.write_bytes(b"mine")
    link = tmp_path / "link.png"
    link.symlink_to(source)
    for target in (source, tmp_path / "sub" / ".." / "cat_lq.png", link):
        with pytest.raises(CLIError, match="input file") as info:
            check_plan([PlannedFile(target, "LQ image")], [source], overwrite=True)
        assert "cat_lq.png" in str(info.value)
    hard = tmp_path / "hard.png"
    os.link(source, hard)
    with pytest.raises(CLIError, match="input file"):
        check_plan([PlannedFile(hard, "LQ image")], [source], overwrite=True)


def test_two_outputs_on_one_path_are_refused_naming_both(tmp_path):
    plan = [
        PlannedFile(tmp_path / "photo_restored.png", f"restored image of {name}")
        for name in ("a/photo.png", "b/photo.png")
    ]
    with pytest.raises(CLIError, match="written twice") as info:
        check_plan(plan, [], overwrite=True)
    assert "a/photo.png" in str(info.value) and "b/photo.png" in str(info.value)


def test_existing_files_need_overwrite_and_folders_are_never_replaced(tmp_path):
    existing = tmp_path / "x.png"
    existing.write_bytes(b"mine")
    with pytest.raises(CLIError, match="--overwrite") as info:
        check_plan([PlannedFile(existing, "x")], [], overwrite=False)
    assert "x.png" in str(info.value)
    check_plan([PlannedFile(existing, "x")], [], overwrite=True)
    (tmp_path / "d.png").mkdir()
    with pytest.raises(CLIError, match="folder"):
        check_plan([PlannedFile(tmp_path / "d.png", "d")], [], overwrite=True)


def test_the_output_folder_is_checked_but_not_created(tmp_path):
    check_output_dir(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(CLIError, match="is not a folder"):
        check_output_dir(tmp_path / "file" / "sub")
    with pytest.raises(CLIError, match="exists and is not a folder"):
        check_output_dir(tmp_path / "file")


def test_written_files_get_the_umask_mode_and_folders_appear_on_first_write(tmp_path, umask_002):
    out = tmp_path / "new" / "out"
    save_image(Image.new("RGB", (4, 4)), out / "a.png")
    save_json({"a": 1}, out / "a.json")
    assert oct((out / "a.png").stat().st_mode & 0o777) == oct(0o664)
    assert oct((out / "a.json").stat().st_mode & 0o777) == oct(0o664)
    assert oct(out.stat().st_mode & 0o777) == oct(0o775)
    assert sorted(os.listdir(out)) == ["a.json", "a.png"]  # no temporary file left


@pytest.mark.parametrize("ext, fmt", [(".png", "PNG"), (".jpg", "JPEG"), (".webp", "WEBP")])
def test_images_are_saved_in_the_format_their_extension_names(tmp_path, ext, fmt):
    save_image(Image.new("RGB", (4, 4)), tmp_path / f"x{ext}")
    assert Image.open(tmp_path / f"x{ext}").format == fmt


def test_a_full_disk_is_a_write_error_naming_the_file_and_leaves_nothing(tmp_path):
    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError, match="No space left on device") as info:
        write_atomically(tmp_path / "x.png", full, overwrite=False)
    assert "x.png" in str(info.value) and info.value.code == 1
    assert os.listdir(tmp_path) == []


def test_a_file_that_appears_during_the_run_is_kept_without_overwrite(tmp_path):
    target = tmp_path / "x.txt"

    def write(tmp):
        Path(tmp).write_text("new")
        target.write_text("theirs")  # someone else wrote it meanwhile

    with pytest.raises(WriteError, match="appeared"):
        write_atomically(target, write, overwrite=False)
    assert target.read_text() == "theirs" and os.listdir(tmp_path) == ["x.txt"]
    write_atomically(target, lambda tmp: Path(tmp).write_text("new"), overwrite=True)
    assert target.read_text() == "new"
