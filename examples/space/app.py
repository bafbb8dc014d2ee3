"""Hugging Face Space entry point: the irib-web page on port 7860.

Configured with the Space's variables: IRIB_PROJECTOR, IRIB_RESTORER, IRIB_BASE, IRIB_DEVICE,
IRIB_DTYPE, IRIB_EXTRACTOR, IRIB_EXTRACTOR_MODEL, IRIB_TINY=1 (the untrained tiny pipeline) and
IRIB_WEB_ARGS for any other irib-web flag (e.g. "--max-pixels 1048576 --concurrency 2").
"""

from diffusers_irib.web.server import space_main

raise SystemExit(space_main())
