"""Writing folders so that a failure never leaves a half-written or mixed result behind.

A save is written completely into a temporary sibling folder first (same file system), then moved
into place entry by entry; if a move fails, the entries already moved are put back, so the target
holds either the whole old version or the whole new one. Entries of the target that the save does
not write (e.g. training checkpoints beside a saved adapter set) are left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import Union

__all__ = ["staged_folder"]

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _give_default_permissions(root: str) -> None:
    """Folders 0777 and files 0666 minus the umask, as ``mkdir`` and ``open`` give them.

    ``mkdtemp`` makes 0700 folders and some writers (safetensors' ``save_file``) make 0600 files; a
    saved model must be readable by whoever could read a file the user wrote by hand.
    """
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777 & ~mask)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _move_into_place(staging: str, target: str) -> None:
    """Replace each top-level entry of ``target`` that ``staging`` holds; undo everything on failure."""
    moved: list[tuple[str, str | None]] = []  # (placed entry, its backup)
    try:
        for name in sorted(os.listdir(staging)):
            destination = os.path.join(target, name)
            backup = None
            if os.path.lexists(destination):
                backup = os.path.join(target, f".{name}.old-{uuid.uuid4().hex[:12]}")
                os.replace(destination, backup)
            moved.append((destination, backup))
            os.replace(os.path.join(staging, name), destination)
    except BaseException:
        for destination, backup in reversed(moved):
            if backup is not None and os.path.lexists(backup):
                _remove(destination)
                os.replace(backup, destination)
            elif backup is None and os.path.lexists(destination):
                _remove(destination)
        raise
    for _, backup in moved:
        if backup is not None:
            _remove(backup)


@contextlib.contextmanager
def staged_folder(target: PathLike) -> Iterator[str]:
    """Yield an empty temporary folder; when the body succeeds, its entries replace ``target``'s.

    A new ``target`` is created by renaming the finished folder (so a failed save creates nothing);
    an existing one keeps every entry the save does not write. On any error nothing is changed.
    """
    target = os.path.abspath(os.fspath(target))
    if os.path.exists(target) and not os.path.isdir(target):
        raise ValueError(f"cannot save into {target!r}: it exists and is not a folder")
    parent = os.path.dirname(target)
    created = _missing_parents(parent)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.saving-", dir=parent)
    done = False
    try:
        yield staging
        _give_default_permissions(staging)
        if os.path.isdir(target):
            _move_into_place(staging, target)
        else:
            os.replace(staging, target)
        done = True
    finally:
        _remove(staging)
        if not done:  # a failed save leaves no empty parent folders behind either
            for folder in created:
                with contextlib.suppress(OSError):
                    os.rmdir(folder)


def _missing_parents(folder: str) -> list[str]:
    """The folders ``os.makedirs(folder)`` would create, deepest first."""
    missing = []
    while folder and not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing
