"""``irib-web``: restore photos in the browser (a Gradio page, also a Hugging Face Space).

The command lives beside the page it serves; ``diffusers_irib.cli.web`` is its console entry point
and ``space_main`` a Space's (examples/space/app.py).

    irib-web --tiny                       # random tiny pipeline, no weights: the page and the code path
    irib-web --projector PROJECTOR --restorer RESTORER --device cuda --host 0.0.0.0

The models load once, at start-up. Without them (and without --tiny) the server starts anyway:
the page says which models are missing and how to get them, and Restore answers the same. Limits
for a public server: --max-upload-mb and --max-pixels refuse larger uploads with a message in the
page, --max-side downscales inputs first, --auto-tile-above restores large images in tiles, and
--concurrency/--max-queue bound the queue. Every file goes to one temporary folder, removed at
exit; Gradio's telemetry is off and nothing is shared unless --share is given.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from collections.abc import Mapping

from ..defaults import DEFAULT_LFO_STEPS
from ..utils.arguments import add_common_arguments, float_in, int_in, make_parser, resolve_device, resolve_dtype
from ..utils.errors import CLIError, fail, run_guarded
from ..utils.model_sources import ModelSpec, missing_models_message
from ..utils.pipeline_arguments import (
    COLOR_FIXES,
    EXTRACTORS,
    MAX_LFO_STEPS,
    MAX_TILE,
    MIN_TILE,
    add_model_arguments,
    add_tiny_argument,
    build_extractor,
    check_restore_arguments,
    load_pipeline,
    tiny_pipeline,
)

PROG = "irib-web"
TINY_MAX_SIDE = 128  # a CPU restore of the tiny pipeline takes about a second at 128 px, minutes at 512
MAX_PIXELS_LIMIT = 8192 * 8192
#: Environment variables a Space sets instead of a command line (see examples/space/app.py).
ENV_FLAGS = {
    "IRIB_BASE": "--base",
    "IRIB_PROJECTOR": "--projector",
    "IRIB_RESTORER": "--restorer",
    "IRIB_DTYPE": "--dtype",
    "IRIB_DEVICE": "--device",
    "IRIB_EXTRACTOR": "--extractor",
    "IRIB_EXTRACTOR_MODEL": "--extractor-model",
}


def tile_threshold(text: str) -> int:
    """An argparse type: 0 (never tile) or a tile size in [MIN_TILE, MAX_TILE], a multiple of 8."""
    if text.strip() == "0":
        return 0
    return int_in(MIN_TILE, MAX_TILE, multiple_of=8)(text)


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, __doc__)
    add_tiny_argument(parser)
    add_model_arguments(parser)
    parser.add_argument(
        "--extractor", choices=EXTRACTORS, default="none", help="Prompt extractor offered in the page (default none)."
    )
    parser.add_argument("--extractor-model", default=None, help="CLIP/captioner id or path, or the RAM checkpoint.")
    parser.add_argument("--dape-checkpoint", default=None, help="DAPE checkpoint for --extractor ram.")
    parser.add_argument("--prompt", default=None, help="The page's default prompt (a visitor can change it).")
    parser.add_argument(
        "--lfo-steps",
        type=int_in(0, MAX_LFO_STEPS),
        default=DEFAULT_LFO_STEPS,
        help=f"The page's default LFO steps, 0 to {MAX_LFO_STEPS} (default {DEFAULT_LFO_STEPS}, as irib-restore).",
    )
    parser.add_argument(
        "--color-fix", choices=COLOR_FIXES, default="adain", help="The page's default colour fix (default adain)."
    )
    server = parser.add_argument_group("server")
    server.add_argument(
        "--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1; 0.0.0.0 for all)."
    )
    server.add_argument("--port", type=int_in(1, 65535), default=7860, help="Port (default 7860).")
    server.add_argument("--share", action="store_true", help="Also open a public gradio.live link (off by default).")
    server.add_argument(
        "--concurrency",
        type=int_in(1, 64),
        default=1,
        help="Restores processed at once (default 1; the pipeline itself runs one call at a time).",
    )
    server.add_argument(
        "--max-queue", type=int_in(1, 10000), default=16, help="Visitors waiting at most (default 16)."
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-upload-mb", type=float_in(0, 1024), default=20.0, help="Largest upload in MB (default 20)."
    )
    limits.add_argument(
        "--max-pixels",
        type=int_in(1, MAX_PIXELS_LIMIT),
        default=2048 * 2048,
        help="Largest image in pixels (width x height), of the upload and of the result after upscale (default 4194304 = 2048^2).",
    )
    limits.add_argument(
        "--max-side",
        type=int_in(0, 8192),
        default=None,
        help=f"Downscale inputs to this longer side before restoring; 0: never (default 0; {TINY_MAX_SIDE} with --tiny).",
    )
    limits.add_argument(
        "--auto-tile-above",
        type=tile_threshold,
        default=1024,
        help="With tile size 'auto', restore images with a side above N px in tiles of N px "
        f"({MIN_TILE} to {MAX_TILE}, a multiple of 8; 0: never; default 1024).",
    )
    add_common_arguments(parser, overwrite=False)
    parser.set_defaults(tile_size=None, tile_overlap=None)  # for check_restore_arguments: the page sets tiles
    return parser


def args_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """Command-line arguments from IRIB_* environment variables (a Space's settings): IRIB_BASE,
    IRIB_PROJECTOR, IRIB_RESTORER, IRIB_DTYPE, IRIB_DEVICE, IRIB_EXTRACTOR, IRIB_EXTRACTOR_MODEL,
    IRIB_TINY=1, and IRIB_WEB_ARGS (any other flags, shell-quoted)."""
    environ = os.environ if environ is None else environ
    argv = []
    for name, flag in ENV_FLAGS.items():
        if environ.get(name):
            argv += [flag, environ[name]]
    if environ.get("IRIB_TINY", "").lower() in ("1", "true", "yes"):
        argv.append("--tiny")
    try:
        argv += shlex.split(environ.get("IRIB_WEB_ARGS", ""))
    except ValueError as err:  # e.g. an unclosed quote
        raise CLIError(f"IRIB_WEB_ARGS is not valid shell quoting ({err}): {environ['IRIB_WEB_ARGS']!r}") from None
    return argv


def space_main(environ: Mapping[str, str] | None = None) -> int:
    """A Hugging Face Space's entry point (examples/space/app.py): the page on 0.0.0.0:7860, set up from
    IRIB_* variables; a bad variable ends in one line, as a bad flag does."""
    try:
        env_args = args_from_env(environ)
    except CLIError as err:
        fail(PROG, str(err), err.code)
    return main(["--host", "0.0.0.0", "--port", "7860", *env_args])


# --------------------------------------------------------------------------- models
def load_models(args: argparse.Namespace, device, dtype):
    """(pipeline, None), or (None, what the page says) when the models are missing or do not load."""
    if args.tiny:
        pipe = tiny_pipeline(device, dtype)
    else:
        specs = [
            ModelSpec("base", args.base),
            ModelSpec("projector", args.projector),
            ModelSpec("restorer", args.restorer),
        ]
        message = missing_models_message(specs, tiny_command="irib-web --tiny")
        if message:
            return None, message
        try:
            pipe = load_pipeline(args, device, dtype)
        except CLIError as err:
            return None, str(err)
    pipe.set_progress_bar_config(disable=True)
    return pipe, None


def load_extractors(args: argparse.Namespace, device) -> dict:
    """The extractor asked for, by name, if it loads; else none (said on stderr: the page then offers
    only the empty prompt and typed prompts)."""
    if args.extractor == "none":
        return {}
    try:
        extractor = build_extractor(args, device)
    except CLIError as err:
        print(f"{PROG}: warning: the {args.extractor} extractor is not offered: {err}", file=sys.stderr)
        return {}
    return {args.extractor: extractor}


# --------------------------------------------------------------------------- serving
def interrupt_on_sigterm() -> None:
    """SIGTERM (a container or a test stopping the server) ends it like Ctrl-C: Gradio closes the
    server and the temporary folder is removed, which the default SIGTERM action would skip."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def run(args: argparse.Namespace) -> int:
    check_restore_arguments(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    from .service import RestoreOptions, WebLimits
    from .workdir import WorkDir

    limits = WebLimits(
        max_pixels=args.max_pixels,
        max_upload_mb=args.max_upload_mb,
        max_side=args.max_side if args.max_side is not None else (TINY_MAX_SIDE if args.tiny else 0),
        auto_tile_above=args.auto_tile_above,
        concurrency=args.concurrency,
        max_queue=args.max_queue,
    )
    defaults = RestoreOptions(
        lfo_steps=args.lfo_steps, prompt=args.prompt or "", extractor=args.extractor, color_fix=args.color_fix
    )
    workdir = WorkDir()
    interrupt_on_sigterm()
    try:
        workdir.use_for_gradio()  # before Gradio is imported
        start = time.perf_counter()
        pipe, missing = load_models(args, device, dtype)
        extractors = load_extractors(args, device) if pipe is not None else {}
        if missing:
            print(f"{PROG}: warning: serving without models; the page says:\n{missing}", file=sys.stderr)
        from .app import build_demo, launch

        demo = build_demo(
            pipe,
            tiny=args.tiny,
            missing_message=missing,
            limits=limits,
            workdir=workdir,
            extractors=extractors,
            defaults=defaults,
        )
        what = "tiny UNTRAINED pipeline" if args.tiny else ("no models" if pipe is None else "models")
        print(
            f"{PROG}: {what} ready in {time.perf_counter() - start:.1f} s; temporary files in {workdir.root} (removed at exit)"
        )
        _, local_url, share_url = launch(demo, host=args.host, port=args.port, share=args.share)
        print(
            f"{PROG}: serving {local_url}" + (f" and {share_url}" if share_url else "") + " (Ctrl-C stops it)",
            flush=True,
        )
        demo.block_thread()  # until Ctrl-C or SIGTERM
    finally:
        workdir.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(PROG, args.debug, lambda: run(args))
