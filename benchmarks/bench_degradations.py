"""Speed of the degradation engine: images per second and milliseconds per stage.

    python benchmarks/bench_degradations.py                      # CPU, and CUDA when present
    python benchmarks/bench_degradations.py --compare-unet       # on a GPU: vs an SD2.1 UNet step

Goals (issue #2): at most 50 ms per 512 x 512 image per preset on a 2-core CPU; on a GPU, a batch
of 16 at 512 in under 5% of one SD2.1 UNet forward+backward at the same batch (where the UNet step at
16 does not fit in memory, at half the batch, compared per image; said in the output). Prints (with
--compare-unet the last line, ``SUMMARY ...``, holds the shares and the goal for
benchmarks/gpu_checks.sh), never asserts.
"""

from __future__ import annotations

import gc
import sys
import time
from collections import defaultdict

import torch
from bench_args import degradations_parser

from diffusers_irib.degradations import DegradationConfig, RealESRGANDegradation, differentiable_jpeg

STAGES = ("first_stage", "second_stage", "final_stage")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def instrument(degrade: RealESRGANDegradation, device: torch.device, totals: dict) -> None:
    """Wrap the stage methods of this instance so each call adds its time to ``totals``."""
    for name in STAGES:
        method = getattr(degrade, name)

        def timed(*args, _method=method, _name=name, **kwargs):
            sync(device)
            start = time.perf_counter()
            out = _method(*args, **kwargs)
            sync(device)
            totals[_name] += time.perf_counter() - start
            return out

        setattr(degrade, name, timed)


def bench(preset: str, device: torch.device, batch: int, size: int, repeats: int) -> dict:
    degrade = RealESRGANDegradation(DegradationConfig.from_preset(preset))
    images = torch.rand(batch, 3, size, size, device=device)
    degrade(images, generator=torch.Generator().manual_seed(0))  # warm-up
    totals: dict = defaultdict(float)
    instrument(degrade, device, totals)
    generator = torch.Generator().manual_seed(1)
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        params = degrade.sample(batch, size, size, generator=generator)
        totals["sample"] += time.perf_counter() - start
        degrade(images, params)
        sync(device)
        totals["total"] += time.perf_counter() - start
    return {k: v / repeats * 1000 for k, v in totals.items()}


def jpeg_ms(device: torch.device, batch: int = 4, size: int = 512, repeats: int = 5) -> float:
    """The JPEG simulator alone (best of ``repeats``): 4 images at 512, per-sample qualities."""
    images = torch.rand(batch, 3, size, size, device=device)
    quality = torch.linspace(30, 90, batch, device=device)
    times = []
    for _ in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        differentiable_jpeg(images, quality)
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times[1:]) * 1000


def unet_step_ms(
    device: torch.device, batch: int, size: int, dtype: torch.dtype, repeats: int = 3, unet=None
) -> float:
    """One SD2.1-base UNet forward+backward (random weights, gradient checkpointing off)."""
    from sd21_base import build_unet

    unet = unet if unet is not None else build_unet(dtype=dtype, device=device)
    latents = torch.randn(batch, 4, size // 8, size // 8, device=device, dtype=dtype)
    context = torch.randn(batch, 77, 1024, device=device, dtype=dtype)
    t = torch.full((batch,), 999, device=device)
    times = []
    for _ in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        unet(latents, t, context).sample.float().mean().backward()
        sync(device)
        times.append(time.perf_counter() - start)
        unet.zero_grad(set_to_none=True)
    return min(times[1:]) * 1000


GOAL_SHARE = 5.0  # percent of an SD2.1 UNet forward+backward at the same batch


def unet_step_fitting(device: torch.device, batch: int, size: int, dtype: torch.dtype) -> tuple[int, float]:
    """(batch, ms) of the UNet step at ``batch``, halved until it fits in the GPU's memory."""
    from sd21_base import build_unet

    unet = build_unet(dtype=dtype, device=device)
    while True:
        try:
            return batch, unet_step_ms(device, batch, size, dtype, unet=unet)
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
        unet.zero_grad(set_to_none=True)
        gc.collect()  # the failed step's activations, once its traceback is gone
        torch.cuda.empty_cache()
        print(f"UNet fwd+bwd at batch {batch}, {size} px, {dtype} does not fit in memory; trying {batch // 2}")
        batch //= 2


def compare_unet(args) -> list[tuple[str, float]]:
    """Each preset's batch as a share of a UNet step at the same batch (per image if it had to shrink)."""
    device, parts = torch.device("cuda"), []
    degrade_ms = {p: bench(p, device, args.unet_batch, args.size, args.repeats)["total"] for p in ("lq", "elq")}
    for name in args.unet_dtype:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[name]
        unet_batch, unet_ms = unet_step_fitting(device, args.unet_batch, args.size, dtype)
        per_image = unet_batch != args.unet_batch
        for preset, ms in degrade_ms.items():
            share = 100 * (ms / args.unet_batch) / (unet_ms / unet_batch)
            how = f"per image, the UNet at batch {unet_batch}" if per_image else f"batch {unet_batch}"
            print(
                f"cuda {preset} batch {args.unet_batch} @{args.size}: {ms:.1f} ms = {share:.1f}% of an SD2.1 UNet "
                f"fwd+bwd ({unet_ms:.0f} ms at batch {unet_batch}, {name}; {how})"
            )
            parts.append((f"{preset} {share:.1f}% ({name}{', per image' if per_image else ''})", share))
        torch.cuda.empty_cache()
    return parts


def main() -> int:
    args = degradations_parser(__doc__).parse_args()
    torch.set_num_threads(args.threads)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if (args.compare_unet or any(d.startswith("cuda") for d in devices)) and not torch.cuda.is_available():
        print(
            "bench_degradations.py: CUDA is not available here (--compare-unet and --device cuda need it)",
            file=sys.stderr,
        )
        return 1

    print(f"torch {torch.__version__}, {args.threads} CPU threads, batch {args.batch} at {args.size}x{args.size}")
    header = f"{'device':<6} {'preset':<6} {'sample':>8} {'first':>8} {'second':>8} {'final':>8} {'back':>7} {'total':>9} {'ms/img':>8} {'img/s':>7}"
    print(header)
    print("-" * len(header))
    for name in devices:
        device = torch.device(name)
        for preset in ("lq", "elq"):
            r = bench(preset, device, args.batch, args.size, args.repeats)
            per_image = r["total"] / args.batch
            back = r["total"] - r["sample"] - sum(r[s] for s in STAGES)
            print(
                f"{name:<6} {preset:<6} {r['sample']:8.1f} {r['first_stage']:8.1f} {r['second_stage']:8.1f} "
                f"{r['final_stage']:8.1f} {back:7.1f} {r['total']:9.1f} {per_image:8.1f} {1000 / per_image:7.1f}"
            )
    print("stage columns are ms per batch; 'back' is the resize back and 8-bit rounding")
    for name in devices:
        print(f"{name}: JPEG simulator alone, 4 images at 512: {jpeg_ms(torch.device(name)):.1f} ms")

    if args.compare_unet:
        parts = compare_unet(args)
        met = all(share < GOAL_SHARE for _, share in parts)
        print(
            f"SUMMARY degradations vs an SD2.1 UNet fwd+bwd: {'; '.join(text for text, _ in parts)} "
            f"(goal < {GOAL_SHARE:.0f}%: {'met' if met else 'MISSED'})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
