"""Writing folders so that a failure, or a kill, never leaves a half-written or mixed result behind.

A save is written completely into a temporary sibling folder first (same file system). A new target
is that folder, renamed. An existing target keeps the entries the save does not write (e.g. training
checkpoints beside a saved adapter set); its other entries are swapped in one by one, each old one
renamed to a hidden backup first. Before the first rename a journal (``.irib-save-journal.json``) is
written into the target; removing it once every entry is in place is the commit. If the process dies
in between, the journal is still there, and the next load or save of that folder
(:func:`recover_interrupted_save`) rolls the swap back: the folder is the whole old version until the
new one is complete. Stale ``.saving-*``/``.old-*`` leftovers are removed by the next save.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from typing import Union

__all__ = ["JOURNAL_NAME", "recover_interrupted_save", "remove_save_leftovers", "staged_folder"]

PathLike = Union[str, os.PathLike]
JOURNAL_NAME = ".irib-save-journal.json"
_BACKUP = re.compile(r"\..+\.old-[0-9a-f]{12}")


def _staging_pattern(target_name: str) -> re.Pattern:
    # [A-Za-z0-9_]+ also matches the tempfile names earlier versions used.
    return re.compile(rf"\.{re.escape(target_name)}\.saving-[A-Za-z0-9_]+")


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


def _fsync_folder(folder: str) -> None:
    """Make a rename inside ``folder`` durable (best effort: not every system can open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_journal(target: str, journal: dict) -> None:
    """Write the journal whole (temporary file, fsync, one rename): it is there complete or not at all."""
    path = os.path.join(target, JOURNAL_NAME)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(journal, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    _fsync_folder(target)


def _read_journal(target: str) -> dict | None:
    """The journal of an interrupted save of ``target``, checked so that it can only name entries of it."""
    path = os.path.join(target, JOURNAL_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            journal = json.load(f)
        staging = journal["staging"]
        entries = [(entry["name"], entry["backup"]) for entry in journal["entries"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path!r}: the journal of an interrupted save is damaged ({err}); remove it by hand"
        ) from None
    plain = [name for name, _ in entries] + [staging]
    if any(not isinstance(n, str) or n in ("", ".", "..") or "/" in n or os.sep in n for n in plain) or any(
        backup is not None and not (isinstance(backup, str) and _BACKUP.fullmatch(backup)) for _, backup in entries
    ):
        raise ValueError(f"{path!r} is not a journal this library wrote (it names paths outside the folder)")
    return {"staging": staging, "entries": entries}


def _set_aside(path: str, staging: str, name: str) -> None:
    """Move a new entry back into the staging folder (one rename), or remove it if that is taken."""
    os.makedirs(staging, exist_ok=True)
    if os.path.lexists(os.path.join(staging, name)):
        _remove(path)
    else:
        os.replace(path, os.path.join(staging, name))


def recover_interrupted_save(folder: PathLike) -> bool:
    """Roll back a save of ``folder`` that was interrupted (killed) while moving its entries in.

    Every step is a rename that can be repeated, so a kill during the recovery is recovered by the
    next call. Returns whether there was anything to recover. Loading and saving call it first.
    """
    target = os.path.abspath(os.fspath(folder))
    journal = _read_journal(target)
    if journal is None:
        return False
    staging = os.path.join(os.path.dirname(target), journal["staging"])
    for name, backup in reversed(journal["entries"]):
        destination = os.path.join(target, name)
        if backup is not None:
            backup = os.path.join(target, backup)
            if os.path.lexists(backup):  # the old entry is set aside: whatever is in its place is new
                if os.path.lexists(destination):
                    _set_aside(destination, staging, name)
                os.replace(backup, destination)
        elif os.path.lexists(destination) and not os.path.lexists(os.path.join(staging, name)):
            _set_aside(destination, staging, name)  # an entry the old version did not have
    os.remove(os.path.join(target, JOURNAL_NAME))
    _fsync_folder(target)
    with contextlib.suppress(OSError):
        _remove(staging)
    return True


def remove_save_leftovers(folder: PathLike) -> list[str]:
    """Remove what interrupted saves of ``folder`` left behind: its ``.saving-*`` siblings and the
    ``.old-*`` backups inside it. Call :func:`recover_interrupted_save` first. Returns the paths removed."""
    target = os.path.abspath(os.fspath(folder))
    parent, name = os.path.split(target)
    stale = []
    if os.path.isdir(parent):
        staging = _staging_pattern(name)
        stale += [os.path.join(parent, n) for n in os.listdir(parent) if staging.fullmatch(n)]
    if os.path.isdir(target):
        stale += [
            os.path.join(target, n) for n in os.listdir(target) if _BACKUP.fullmatch(n) or n == JOURNAL_NAME + ".tmp"
        ]
    for path in stale:
        _remove(path)
    return stale


def _move_into_place(staging: str, target: str) -> None:
    """Replace each top-level entry of ``target`` that ``staging`` holds, under a journal."""
    entries = []
    for name in sorted(os.listdir(staging)):
        exists = os.path.lexists(os.path.join(target, name))
        entries.append((name, f".{name}.old-{uuid.uuid4().hex[:12]}" if exists else None))
    journal = {"staging": os.path.basename(staging), "entries": [{"name": n, "backup": b} for n, b in entries]}
    _write_journal(target, journal)
    try:
        for name, backup in entries:
            destination = os.path.join(target, name)
            if backup is not None:
                os.replace(destination, os.path.join(target, backup))
            os.replace(os.path.join(staging, name), destination)
    except BaseException:
        with contextlib.suppress(Exception):  # if this fails too, the next load or save rolls back
            recover_interrupted_save(target)
        raise
    os.remove(os.path.join(target, JOURNAL_NAME))  # the commit: from here on the folder is the new version
    _fsync_folder(target)
    for _, backup in entries:
        if backup is not None:
            with contextlib.suppress(OSError):  # a leftover is removed by the next save
                _remove(os.path.join(target, backup))


@contextlib.contextmanager
def staged_folder(target: PathLike) -> Iterator[str]:
    """Yield an empty temporary folder; when the body succeeds, its entries replace ``target``'s.

    A new ``target`` is created by renaming the finished folder (so a failed save creates nothing);
    an existing one keeps every entry the save does not write. On any error nothing is changed; after
    a kill, the next load or save of ``target`` restores the previous version.
    """
    target = os.path.abspath(os.fspath(target))
    if os.path.exists(target) and not os.path.isdir(target):
        raise ValueError(f"cannot save into {target!r}: it exists and is not a folder")
    if os.path.isdir(target):
        recover_interrupted_save(target)
    remove_save_leftovers(target)
    parent = os.path.dirname(target)
    created = _missing_parents(parent)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{os.path.basename(target)}.saving-{uuid.uuid4().hex[:12]}")
    os.mkdir(staging)
    done = False
    try:
        yield staging
        _give_default_permissions(staging)
        if os.path.isdir(target):
            _move_into_place(staging, target)
        else:
            os.replace(staging, target)
            _fsync_folder(parent)
        done = True
    finally:
        if os.path.lexists(staging):
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
