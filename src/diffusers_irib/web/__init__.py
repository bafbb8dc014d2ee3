"""The web demo behind ``irib-web``: a Gradio page around one IRIBRestorationPipeline.

``service`` restores one upload (plain Python, tested without a browser), ``workdir`` owns the one
temporary folder, ``app`` is the Gradio layout. ``build_demo`` and ``launch`` import Gradio (seconds),
so they are loaded on first use.
"""

from __future__ import annotations

from .service import PageResult, RestoreOptions, WebLimits, WebRestorer
from .workdir import WorkDir

__all__ = ["PageResult", "RestoreOptions", "WebLimits", "WebRestorer", "WorkDir", "build_demo", "launch"]


def __getattr__(name: str):
    if name in ("build_demo", "launch"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
