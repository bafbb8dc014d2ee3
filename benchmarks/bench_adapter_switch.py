"""Adapter-set switching cost on the SD2.1-base architecture (random weights, no download).

Builds the UNet and VAE from their published configs, adds a trainable ``projector`` and a frozen
``restorer`` with its own conv_in (as a converted OSEDiff release has), and prints milliseconds per
switch: ``set_adapter_set`` alone and a ``use_adapter_set`` enter + exit. Nothing is asserted.

    python benchmarks/bench_adapter_switch.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from sd21_base import build_unet, build_vae

from diffusers_irib.adapters import add_adapter_set, set_adapter_set, use_adapter_set


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    unet, vae = build_unet(), build_vae()
    add_adapter_set(unet, vae, "projector")
    add_adapter_set(unet, vae, "restorer", conv_in=True, trainable=False)

    roles = iter(["projector", "restorer"] * args.repeats)

    def switch():
        set_adapter_set(unet, vae, next(roles))

    def context():
        with use_adapter_set(unet, vae, "projector"):
            pass

    switch(), context()  # warm the caches
    print(f"{'operation':<36} {'median ms':>10} {'min ms':>8}")
    for name, fn in (("set_adapter_set", switch), ("use_adapter_set enter + exit", context)):
        times = timed(fn, args.repeats)
        print(f"{name:<36} {statistics.median(times):>10.1f} {min(times):>8.1f}")


if __name__ == "__main__":
    main()
