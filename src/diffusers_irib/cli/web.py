"""``irib-web``: restore photos in the browser. The command lives in :mod:`diffusers_irib.web.server`."""

from __future__ import annotations

import sys

from ..web.server import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
