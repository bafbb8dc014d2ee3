"""Input lists, output plans and atomic writes: nothing the user had is ever lost.

Every command first lists the files it will write (an :class:`OutputPlan`) and checks the whole list
before doing any work: an output may never be an input (not even with ``--overwrite``), two outputs
may never share a path, and an existing file is only replaced with ``--overwrite``. The output
folder itself is created by the first write, so a run that fails early leaves no empty folder.
"""

from __future__ import annotations

import argparse
import errno
import glob
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .arguments import path_arg
from .errors import CLIError, WriteError

MAX_LISTED = 5  # files named in one message before "and N more"
IMAGE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}
IMAGE_EXTENSIONS = tuple(IMAGE_FORMATS)  # what folders and glob patterns pick up; all can be written


# --------------------------------------------------------------------------- inputs
def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """Positional ``IMAGE`` arguments and repeatable ``-i/--input``: files, folders or glob patterns."""
    parser.add_argument(
        "images", nargs="*", metavar="IMAGE", type=path_arg, help="Image files, folders or glob patterns (as -i)."
    )
    parser.add_argument(
        "-i",
        "--input",
        action="append",
        default=[],
        type=path_arg,
        metavar="PATH",
        help="An image file, a folder of images or a glob pattern; repeatable.",
    )


def expand_inputs(specs: Iterable[str]) -> list[Path]:
    """Files, folders (their images, not recursive) and glob patterns -> image paths, in order.

    The same file reached twice (a folder and a file in it) is kept once.
    """
    paths: list[Path] = []
    seen: set[str] = set()
    for spec in specs:
        for path in expand_one(spec):
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                paths.append(path)
    return paths


def expand_one(spec: str) -> list[Path]:
    path = Path(spec)
    if path.is_dir():
        found = image_files(path.iterdir())
        if not found:
            raise CLIError(f"input folder {spec!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return found
    if path.exists():
        return [path]  # a file named explicitly is taken whatever its extension
    if glob.has_magic(spec):
        found = image_files(Path(p) for p in glob.glob(spec))
        if not found:
            raise CLIError(f"input pattern {spec!r} matches no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return found
    raise CLIError(f"input {spec!r}: no such file or folder")


def image_files(paths: Iterable[Path]) -> list[Path]:
    """Visible files with an image extension, sorted by name."""
    return sorted(
        (p for p in paths if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: str(p),
    )


# --------------------------------------------------------------------------- output plan
@dataclass(frozen=True)
class PlannedFile:
    """One file a command will write, and what it is (named in messages)."""

    path: Path
    what: str  # e.g. "restored image of a/photo.png"


def same_file(a: Path, b: Path) -> bool:
    """Same path after resolving links and '..', or the same file on disk (a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_plan(planned: list[PlannedFile], inputs: Iterable[Path], overwrite: bool) -> None:
    """Refuse, before anything is done, a plan that would lose or mix up any file."""
    inputs = list(inputs)
    check_no_input_replaced(planned, inputs)
    check_no_duplicates(planned)
    check_existing(planned, overwrite)


def check_no_input_replaced(planned: list[PlannedFile], inputs: list[Path]) -> None:
    by_path = {os.path.realpath(p): p for p in inputs}
    for item in planned:
        hit = by_path.get(os.path.realpath(item.path))
        if hit is None and item.path.exists():
            hit = next((p for p in inputs if same_file(item.path, p)), None)
        if hit is not None:
            raise CLIError(
                f"the {item.what} would be written to {str(item.path)!r}, which is the input file {str(hit)!r}; "
                "an input is never replaced, not even with --overwrite: choose another output folder or --suffix"
            )


def check_no_duplicates(planned: list[PlannedFile]) -> None:
    first: dict[str, PlannedFile] = {}
    for item in planned:
        key = os.path.realpath(item.path)
        if key in first:
            raise CLIError(
                f"{str(item.path)!r} would be written twice: as the {first[key].what} and as the {item.what}; "
                "rename one of the inputs, or write them to separate output folders"
            )
        first[key] = item


def check_existing(planned: list[PlannedFile], overwrite: bool) -> None:
    folders = [p.path for p in planned if p.path.is_dir()]
    if folders:
        raise CLIError(f"cannot write {str(folders[0])!r}: a folder of that name is in the way")
    existing = [p.path for p in planned if os.path.lexists(p.path)]
    if existing and not overwrite:
        raise CLIError(
            f"refusing to overwrite {len(existing)} existing file(s): {listing(existing)}; "
            "pass --overwrite to replace them"
        )


def listing(paths: list[Path]) -> str:
    shown = ", ".join(repr(str(p)) for p in paths[:MAX_LISTED])
    return shown + (f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else "")


# --------------------------------------------------------------------------- output folder
def check_output_dir(path: Path) -> None:
    """Fail now if the folder could not be created or written later; create nothing yet."""
    if path.exists():
        if not path.is_dir():
            raise CLIError(f"output path {str(path)!r} exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise CLIError(f"output folder {str(path)!r} is not writable")
        return
    ancestor = nearest_existing(path)
    if not ancestor.is_dir():
        raise CLIError(f"cannot create output directory {str(path)!r}: {str(ancestor)!r} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CLIError(f"cannot create output directory {str(path)!r}: {str(ancestor)!r} is not writable")


def nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# --------------------------------------------------------------------------- atomic writes
def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomically(path: Path, write: Callable[[str], None], overwrite: bool) -> None:
    """Write through a temporary file in the same folder, then move it into place.

    No half-written file is ever left; the file gets the permissions the umask gives (``mkstemp``
    alone would leave 0600); without ``overwrite`` a file that appeared meanwhile is kept.
    """
    created = make_folders(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            write(tmp)
            os.chmod(tmp, 0o666 & ~current_umask())
            move_into_place(tmp, path, overwrite)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
    except (OSError, WriteError) as err:
        remove_empty(created)
        if isinstance(err, WriteError):
            raise
        raise WriteError(f"cannot write {str(path)!r}: {err.strerror or err}") from err


def make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the ones this call created, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    created: list[Path] = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue  # made meanwhile by someone else: not ours to remove
        except OSError as err:
            remove_empty(created)
            raise WriteError(f"cannot create output directory {str(path)!r}: {err.strerror or err}") from err
        created.append(path)
    return created


def remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed write created, so a failed run leaves no empty folder."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


def move_into_place(tmp: str, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if the file exists: never replaces it
    except FileExistsError:
        raise WriteError(f"{str(path)!r} appeared while this command ran; it was kept, not overwritten") from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(path):  # a file system without hard links
            raise WriteError(f"{str(path)!r} appeared while this command ran; it was kept, not overwritten") from None
        os.replace(tmp, path)


def save_image(image, path: Path, overwrite: bool = False) -> None:
    """Save a PIL image in the format its extension names."""
    fmt = IMAGE_FORMATS.get(path.suffix.lower(), "PNG")
    write_atomically(path, lambda tmp: image.save(tmp, format=fmt, **SAVE_OPTIONS.get(fmt, {})), overwrite)


def save_json(data: dict, path: Path, overwrite: bool = False, indent: int | None = None) -> None:
    import json

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=indent)
            f.write("\n")

    write_atomically(path, write, overwrite)
