"""The ``irib-web`` page (Gradio Blocks): layout and wiring only.

What pressing Restore does (checks, degradation, tiling, files) lives in :mod:`.service`, in plain
Python; this module lays out the controls, turns a :class:`~.service.PageResult` into the outputs,
and launches the server with the limits of a public demo (queue, upload size, one temporary
folder, no telemetry). A Hugging Face Space's ``app.py`` only calls ``diffusers_irib.web.server.space_main``.
"""

from __future__ import annotations

import html
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from ..utils.errors import first_line
from ..utils.image_files import bundled_image_path
from ..utils.pipeline_arguments import COLOR_FIXES, MAX_LFO_STEPS
from .service import (
    DEGRADE_CHOICES,
    MAX_PROMPT_CHARS,
    MAX_UPSCALE,
    NO_EXTRACTOR,
    TILE_CHOICES,
    PageResult,
    RestoreOptions,
    WebLimits,
    WebRestorer,
)
from .workdir import WorkDir

logger = logging.getLogger(__name__)

TITLE = "irib-web: extreme blind image restoration (IRIB)"
INTRO = (
    "# diffusers-irib: extreme blind image restoration\n"
    "Upload a badly damaged photo, or pick the bundled sample and degrade it first, then press **Restore**. "
    "The projector maps the image onto the LQ images the restorer knows (one LQ proxy per round: Look Forward "
    "Once refines the prompt and projects again), and the one-step restorer finishes it."
)
TINY_BANNER = (
    '<div id="irib-untrained" style="background:#b91c1c;color:#fff;padding:10px 14px;border-radius:8px;'
    'font-weight:600;font-size:1.05em">UNTRAINED: this server runs the tiny pipeline with random weights '
    '(<code style="color:#fff;background:transparent">irib-web --tiny</code>). Its output is noise-like: it shows '
    "the code path and the page, not restoration quality.</div>"
)
MISSING_BANNER = (
    '<div id="irib-missing" style="background:#b45309;color:#fff;padding:10px 14px;border-radius:8px;'
    'font-weight:600;font-size:1.05em">The models are missing on this server: Restore cannot run until '
    "they are installed, as said below.</div>"
)
MISSING_STATUS = "**Not available:** the models are missing on this server (see above)."
READY_STATUS = "Upload an image (or pick the sample below it) and press **Restore**."
SAMPLE_LABEL = "Bundled sample: NASA astronaut photo (public domain)"


def keep_upload_path(image: gr.Image) -> gr.Image:
    """Make ``image`` hand the callback the uploaded file as it is: the service reads and checks it,
    so a file that is not an image gets a message in the page, not a traceback from Gradio's decoder.

    Done on the instance: a gr.Image subclass would make Gradio write a ``.pyi`` stub beside this
    module (its component metaclass does so for every subclass), and nothing may be written there.
    """
    decode = image.preprocess

    def preprocess(payload):
        if payload is not None and payload.path:
            return str(payload.path)
        return decode(payload)  # no file (a data: URL) or no image: Gradio's own handling

    image.preprocess = preprocess
    return image


def message_markdown(text: str) -> str:
    """A plain-text message as the CLIs print it (``  - item`` lines, each continued by a line
    indented 6 spaces) as Markdown: one paragraph per item, its name in bold."""
    paragraphs: list[list[str]] = []
    for line in text.splitlines():
        stripped = line.strip()
        if line.startswith("      ") and paragraphs:
            paragraphs[-1].append(stripped)
        elif line.startswith("  - "):
            name, sep, rest = stripped[2:].partition(": ")
            paragraphs.append([f"**{name}**{sep}{rest}"])
        else:
            paragraphs.append([stripped])
    return "\n\n".join("  \n".join(lines) for lines in paragraphs)


def page_outputs(result: PageResult) -> tuple:
    """(status, comparison, LQ proxies, prompts, download) as the output components take them; a
    refusal clears the previous results, so they are not taken for this upload's."""
    if not result.ok:
        return ("**Not restored:** " + message_markdown(result.message), None, [], "", None)
    return (result.message, result.comparison, result.lq_proxies, result.prompts, result.download)


def as_number(value):
    """Gradio sends numbers as floats: whole ones become ints (the service refuses the rest)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def make_callback(restorer: WebRestorer) -> Callable:
    """The Restore button's function: page values in, output values out, nothing raised."""

    def on_restore(image, degrade, seed, lfo_steps, prompt, extractor, color_fix, upscale, tile):
        options = RestoreOptions(
            degrade=degrade,
            degrade_seed=as_number(seed if seed is not None else 0),
            lfo_steps=as_number(lfo_steps),
            prompt=prompt or "",
            extractor=extractor or NO_EXTRACTOR,
            color_fix=color_fix,
            upscale=as_number(upscale),
            tile=tile,
        )
        try:
            result = restorer.restore(image, options)
        except Exception as err:  # a bug, not the visitor's input: the traceback goes to the server log
            logger.exception("irib-web: restore failed")
            result = PageResult(False, f"internal error ({type(err).__name__}: {first_line(err)}); see the server log")
        if not result.ok:
            gr.Warning(html.escape(result.message.splitlines()[0]), title="Not restored")
        return page_outputs(result)

    return on_restore


def sample_path(workdir: WorkDir) -> str:
    """The bundled photo, copied into the work folder (the server serves nothing from elsewhere)."""
    target = workdir.root / "samples" / bundled_image_path().name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundled_image_path(), target)
    return str(target)


def build_demo(
    pipe,
    *,
    tiny: bool = False,
    missing_message: str | None = None,
    limits: WebLimits | None = None,
    workdir: WorkDir | None = None,
    extractors: dict[str, Callable] | None = None,
    defaults: RestoreOptions | None = None,
) -> gr.Blocks:
    """The page around ``pipe`` (None: the models are missing and ``missing_message`` says so).

    Points Gradio's cache into ``workdir`` (a fresh temporary folder if None; the caller removes it
    with ``demo.irib_workdir.cleanup()``). Launch it with :func:`launch`, which applies ``limits``.
    """
    limits = limits or WebLimits()
    workdir = workdir or WorkDir()
    workdir.use_for_gradio()
    restorer = WebRestorer(pipe, workdir, limits, extractors=extractors, missing_message=missing_message, tiny=tiny)
    d = defaults or RestoreOptions()
    status = READY_STATUS if pipe is not None else MISSING_STATUS

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(1800, workdir.keep_seconds)) as demo:
        if tiny:
            gr.HTML(TINY_BANNER, elem_id="irib-banner")
        elif pipe is None:
            gr.HTML(MISSING_BANNER, elem_id="irib-banner")
            gr.Markdown(message_markdown(missing_message), elem_id="irib-missing-models")
        gr.Markdown(INTRO + f"\n\nLimits on this server: {limits.describe()}.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                image = keep_upload_path(
                    gr.Image(
                        label="Damaged photo",
                        type="filepath",
                        image_mode=None,
                        sources=["upload", "clipboard"],
                        height=300,
                        elem_id="irib-input",
                    )
                )
                gr.Examples([[sample_path(workdir)]], inputs=[image], label=SAMPLE_LABEL)
                with gr.Group():
                    degrade = gr.Radio(
                        list(DEGRADE_CHOICES),
                        value=d.degrade,
                        label="Degrade first",
                        info="Apply irib-degrade's LQ or extreme (ELQ) preset before restoring: see what ELQ does to a clean photo.",
                        elem_id="irib-degrade",
                    )
                    seed = gr.Number(value=d.degrade_seed, precision=0, minimum=0, label="Degradation seed")
                with gr.Accordion("Restore options", open=True):
                    lfo_steps = gr.Slider(
                        0,
                        MAX_LFO_STEPS,
                        value=d.lfo_steps,
                        step=1,
                        label="LFO steps",
                        info="Look Forward Once: re-prompt from the LQ proxy and project again.",
                    )
                    prompt = gr.Textbox(
                        value=d.prompt,
                        label="Prompt",
                        placeholder="optional, e.g. 'a woman in a space suit'; used in every round",
                        max_length=MAX_PROMPT_CHARS,
                        elem_id="irib-prompt",
                    )
                    extractor = gr.Dropdown(
                        restorer.extractor_choices,
                        value=d.extractor if d.extractor in restorer.extractor_choices else NO_EXTRACTOR,
                        label="Prompt extractor (when the prompt is empty)",
                        info="Only extractors loaded by this server are offered; none: the empty prompt.",
                    )
                    color_fix = gr.Radio(list(COLOR_FIXES), value=d.color_fix, label="Colour fix")
                    with gr.Row():
                        upscale = gr.Slider(1, MAX_UPSCALE, value=d.upscale, step=0.5, label="Upscale")
                        tile = gr.Dropdown(
                            list(TILE_CHOICES),
                            value=d.tile,
                            label="Tile size (px)",
                            info=(
                                f"auto: tiles of {limits.auto_tile_above} px above that size"
                                if limits.auto_tile_above
                                else "auto: no tiling"
                            ),
                        )
                button = gr.Button("Restore", variant="primary", elem_id="irib-restore")
            with gr.Column(scale=1):
                status_md = gr.Markdown(status, elem_id="irib-status")
                comparison = gr.ImageSlider(
                    label="Input (left) vs restored (right): drag the handle",
                    type="filepath",
                    format="png",
                    interactive=False,
                    max_height=420,
                    elem_id="irib-slider",
                )
                gallery = gr.Gallery(
                    label="LQ proxy of every projector round (captioned with its prompt)",
                    columns=3,
                    height=240,
                    format="png",
                    object_fit="contain",
                    elem_id="irib-gallery",
                )
                prompts = gr.Textbox(label="Prompt of every round", lines=4, interactive=False, elem_id="irib-prompts")
                download = gr.File(label="Restored PNG", interactive=False, elem_id="irib-download")
        button.click(
            make_callback(restorer),
            inputs=[image, degrade, seed, lfo_steps, prompt, extractor, color_fix, upscale, tile],
            outputs=[status_md, comparison, gallery, prompts, download],
            api_name="restore",
        )
    demo.irib_workdir = workdir
    demo.irib_restorer = restorer
    demo.irib_limits = limits
    return demo


def launch(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False, **kwargs):
    """Queue and serve ``demo`` with its limits: ``concurrency`` events at once, ``max_queue``
    waiting, uploads up to ``max_upload_mb``, files served only from the work folder; no telemetry,
    no server-side rendering (no Node), no MCP server, no monitoring endpoint, no run history.

    Returns at once with Gradio's ``(app, local_url, share_url)``; ``demo.block_thread()`` waits.
    """
    limits: WebLimits = demo.irib_limits
    workdir: WorkDir = demo.irib_workdir
    demo.queue(default_concurrency_limit=limits.concurrency, max_size=limits.max_queue)
    return demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=int(limits.max_upload_mb * 2**20),
        allowed_paths=[str(Path(workdir.root).resolve())],
        show_error=False,
        ssr_mode=False,
        mcp_server=False,
        enable_monitoring=False,
        run_history=False,
        prevent_thread_lock=True,
        quiet=True,
        **kwargs,
    )
