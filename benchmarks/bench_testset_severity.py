"""How severe is the ELQ test set, and what does the evaluator cost beyond the model calls?

    python benchmarks/bench_testset_severity.py              # 7 photos, 512 px, seed 0
    python benchmarks/bench_testset_severity.py --size 256
    python benchmarks/bench_testset_severity.py --preset elq-range --skip-evaluator   # final scale 4..16

(a) Severity. ``irib-make-testset --also-lq`` on the seven scikit-image colour photos that reach
    512 px after the short-side resize (bundled with a dependency, so this runs offline). PSNR and
    SSIM against the HQ crops, on the Y channel (the paper's convention) and on RGB, of:
    the LQ inputs, the ELQ inputs (``--preset``, default ``elq``; e.g. ``elq-range``, whose final
    scale is drawn per image from 4..16: the drawn scales are listed), and bicubic round trips at the presets' scales (HQ shrunk by 4 or
    16 with area averaging, enlarged back bicubically): the resolution loss alone, without noise,
    blur or JPEG.
(b) Evaluator cost on the tiny random pipeline (so it runs anywhere): ``irib-evaluate`` with
    ``restorer`` and ``irib`` on the ELQ set, against the same pipeline calls made directly on the
    same images. The difference per image and method is the evaluator's own work (PNG reading and
    writing, resumability checks, PSNR/SSIM, the grid and tables). Prints, never asserts.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data

from diffusers_irib.evaluation.evaluate import main as evaluate
from diffusers_irib.metrics import psnr, ssim
from diffusers_irib.utils.image_files import load_image, pil_to_tensor

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "retina", "hubble_deep_field", "immunohistochemistry")


def folder_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {p.stem: pil_to_tensor(load_image(p)) for p in sorted(folder.glob("*.png"))}


def bicubic_round_trip(hq: torch.Tensor, scale: int) -> torch.Tensor:
    h, w = hq.shape[-2:]
    small = F.interpolate(hq[None], size=(h // scale, w // scale), mode="area")
    return F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)[0].clamp(0, 1)


def mean_scores(pairs: list[tuple[torch.Tensor, torch.Tensor]], convention: str) -> tuple[float, float]:
    p = float(np.mean([psnr(x, y, convention=convention) for x, y in pairs]))
    s = float(np.mean([ssim(x, y, convention=convention) for x, y in pairs]))
    return p, s


def severity(testset: Path, preset: str = "elq") -> None:
    import json

    hq, lq, elq = (folder_tensors(testset / k) for k in ("hq", "lq", preset))
    rows = {
        "LQ input (preset lq)": [(lq[n], hq[n]) for n in hq],
        f"ELQ input (preset {preset})": [(elq[n], hq[n]) for n in hq],
        "bicubic round trip x4": [(bicubic_round_trip(hq[n], 4), hq[n]) for n in hq],
        "bicubic round trip x16": [(bicubic_round_trip(hq[n], 16), hq[n]) for n in hq],
    }
    print(f"\n(a) severity, {len(hq)} photos, {next(iter(hq.values())).shape[-1]} px")
    print(f"{'input':<32} {'PSNR-Y':>7} {'SSIM-Y':>7} {'PSNR-RGB':>9} {'SSIM-RGB':>9}")
    for name, pairs in rows.items():
        (py, sy), (pr, sr) = mean_scores(pairs, "y"), mean_scores(pairs, "rgb")
        print(f"{name:<32} {py:7.2f} {sy:7.3f} {pr:9.2f} {sr:9.3f}")
    record = json.loads((testset / "degradations.json").read_text())
    scales = sorted(_drawn_scales(record, preset))
    if scales:
        print(f"final scales drawn for {preset}: {scales}")


def _drawn_scales(record: dict, preset: str) -> list[int]:
    """The per-image final scales a range preset drew (``final.scale`` of each image's params)."""
    finals = [image["degradations"][preset]["final"] for image in record["images"].values()]
    return [final["scale"][0] for final in finals if final.get("scale")]


def evaluator_cost(root: Path, testset: Path) -> None:
    from diffusers_irib.tiny import make_tiny_pipeline

    pipe = make_tiny_pipeline(with_adapter_sets=True)
    pipe.save_pretrained(root / "base")
    for role in ("projector", "restorer"):
        pipe.save_adapter_set(root / role, role)
    pipe.set_progress_bar_config(disable=True)
    elq = list(folder_tensors(testset / "elq").values())
    methods = {"restorer": {"use_projector": False}, "irib": {"lfo_steps": 0}}
    with torch.no_grad():
        pipe(elq[0], output_type="pt")  # warm-up: the first call pays one-off costs the evaluator pays too
    start = time.perf_counter()
    with torch.no_grad():
        for kwargs in methods.values():
            for image in elq:
                pipe(image, output_type="pt", color_fix="adain", **kwargs)
    direct = time.perf_counter() - start

    argv = [str(testset), str(root / "results"), "--base", str(root / "base"), "--projector", str(root / "projector"),
            "--restorer", str(root / "restorer"), "--methods", *methods, "--metrics", "psnr", "ssim", "--convention",
            "both", "--grid", "4", "--extractor", "none"]  # fmt: skip
    start = time.perf_counter()
    evaluate(argv)
    full = time.perf_counter() - start
    start = time.perf_counter()
    evaluate(argv)  # resumed: nothing left to restore, only loading, scoring and writing
    resumed = time.perf_counter() - start
    n = len(elq) * len(methods)
    print(f"\n(b) evaluator on the tiny pipeline, {len(elq)} images x {len(methods)} methods")
    print(f"direct pipeline calls     {direct / n * 1000:8.1f} ms per image and method")
    print(f"irib-evaluate, full run   {full / n * 1000:8.1f} ms per image and method ({n / full:.2f} images/s)")
    print(f"evaluator overhead        {(full - direct) / n * 1000:8.1f} ms per image and method "
          "(includes loading the pipeline once)")  # fmt: skip
    print(f"rerun, all images there   {resumed:8.2f} s (load, score, write tables)")


def make_testset(photos: Path, output: Path, flags: str, preset: str | None = None) -> None:
    """Build a test set with the irib-make-testset command, as a user would (no import of cli/)."""
    command = [sys.executable, "-m", "diffusers_irib.cli.make_testset", str(photos), str(output), *flags.split()]
    subprocess.run(command + (["--preset", preset] if preset else []), check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--eval-size", type=int, default=128, help="Crop size for the evaluator timing (tiny model).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="elq", help="The ELQ preset to measure (elq, elq-range, or a JSON file).")
    parser.add_argument("--skip-evaluator", action="store_true", help="Only (a), the severity.")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "photos").mkdir()
        for name in PHOTOS:
            Image.fromarray(getattr(data, name)()).convert("RGB").save(root / "photos" / f"{name}.png")
        make_testset(root / "photos", root / "set", f"--also-lq --size {args.size} --seed {args.seed}", args.preset)
        severity(root / "set", Path(args.preset).stem if args.preset.endswith(".json") else args.preset)
        if args.skip_evaluator:
            return
        make_testset(root / "photos", root / "small", f"--size {args.eval_size} --seed {args.seed}")
        evaluator_cost(root, root / "small")


if __name__ == "__main__":
    main()
