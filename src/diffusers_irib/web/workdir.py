"""The one temporary folder the web demo writes to, removed when the server stops.

A public demo must not fill the disk or scatter files: every file the server writes (Gradio's
upload cache and each restore's PNGs) lies under one ``tempfile.mkdtemp`` folder made at start-up.
Old restores are pruned as new ones arrive, and the whole folder goes at exit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

#: Restores older than this are deleted when a new one starts (their page has long shown them).
KEEP_SECONDS = 3600


class WorkDir:
    """``root/gradio`` (Gradio's cache: uploads and served copies) and ``root/results/<request>``."""

    def __init__(self, root: str | os.PathLike | None = None, keep_seconds: float = KEEP_SECONDS):
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="irib-web-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep_seconds = keep_seconds
        self.gradio_cache.mkdir(exist_ok=True)
        self.results.mkdir(exist_ok=True)

    @property
    def gradio_cache(self) -> Path:
        return self.root / "gradio"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def new_request_dir(self) -> Path:
        """A fresh folder for one restore's files (after pruning restores older than keep_seconds)."""
        self.prune()
        self.results.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="restore-", dir=self.results))

    def prune(self, now: float | None = None) -> int:
        """Delete restore folders older than keep_seconds; returns how many went."""
        now = time.time() if now is None else now
        removed = 0
        for entry in self.results.glob("restore-*") if self.results.is_dir() else ():
            try:
                if now - entry.stat().st_mtime > self.keep_seconds:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed += 1
            except OSError:  # removed meanwhile by another request
                continue
        return removed

    def contains(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` lies inside this folder (symbolic links resolved)."""
        try:
            Path(path).resolve().relative_to(self.root.resolve())
        except ValueError:
            return False
        return True

    def cleanup(self) -> None:
        """Remove the whole folder (idempotent)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def use_for_gradio(self) -> None:
        """Point Gradio's cache here and switch its telemetry off; call before ``import gradio``
        (a few Gradio modules read the variables when first imported)."""
        os.environ["GRADIO_TEMP_DIR"] = str(self.gradio_cache)
        os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
