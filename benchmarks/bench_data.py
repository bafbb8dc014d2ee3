"""Throughput of the training input pipeline: can the DataLoader keep a training step fed?

    python benchmarks/bench_data.py                      # 16 rows of ~2K photos, 512 crops, batch 4
    python benchmarks/bench_data.py --step-seconds 0.6   # against a measured step time

IRIB trains on 2K photos (DIV2K / LSDIR: long side about 2040 px) decoded on the CPU, while the crops
are degraded (LQ and ELQ) on the accelerator. If decoding a 2K PNG and cropping it is slower than the
training step consumes images, the accelerator waits; this measures, in images per second:

(a) decoding alone: a parquet shard of 2040 px PNGs (skimage's astronaut, coffee and chelsea resized
    up, bicubic), read with ``open_image_dataset`` and decoded with ``decode_image``;
(b) decode + random crop through ``ImageRows`` in a DataLoader, batch 4, in the main process
    (num_workers 0) and with 2 workers (persistent; the timed epoch follows a warm-up epoch, so the
    worker start-up is not counted), and through ``StreamedImageRows`` in the main process;
(c) for scale: the LQ and ELQ degradations (``degrade_pair``) of a batch of crops on the CPU, which
    the training script runs on the accelerator instead.

The last lines say how many DataLoader workers keep one step of ``--step-seconds`` fed. The default
of 1.0 s per step at batch 4 is a GPU-like placeholder, not a measurement: a CPU training step (as
bench_train_step.py times it) is not comparable. Prints, never asserts.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import tempfile
import time

import torch
from PIL import Image
from skimage import data

from diffusers_irib.degradations import DegradationConfig, RealESRGANDegradation, degrade_pair
from diffusers_irib.training_data import (
    ImageRows,
    StreamedImageRows,
    collate_images,
    decode_image,
    open_image_dataset,
)

PHOTOS = ("astronaut", "coffee", "chelsea")
LONG_SIDE = 2040  # DIV2K / LSDIR


def photo_2k_png(name: str) -> bytes:
    """A skimage photo resized up (bicubic) to a 2040 px long side, as PNG bytes."""
    array = getattr(data, name)()
    h, w = array.shape[:2]
    scale = LONG_SIDE / max(h, w)
    image = Image.fromarray(array).resize((round(w * scale), round(h * scale)), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def write_shard(folder: str, rows: int) -> list[tuple[int, int]]:
    """A parquet shard of ``rows`` 2K PNGs (the photos in turn) in ``folder``; returns their sizes."""
    import datasets

    pngs = [photo_2k_png(name) for name in PHOTOS]
    cells = [{"bytes": pngs[i % len(pngs)], "path": None} for i in range(rows)]
    table = datasets.Dataset.from_dict({"image": cells}, features=datasets.Features({"image": datasets.Image()}))
    table.to_parquet(os.path.join(folder, "train-00000-of-00001.parquet"))
    return [Image.open(io.BytesIO(p)).size for p in pngs]


def bench_decode(rows) -> float:
    """Images per second: read each row from the dataset and decode it."""
    start = time.perf_counter()
    for i in range(len(rows)):
        decode_image(rows[i]["image"])
    return len(rows) / (time.perf_counter() - start)


def bench_loader(dataset, batch_size: int, workers: int) -> tuple[float, torch.Tensor]:
    """Images per second of one epoch (after a warm-up epoch); also returns the last batch."""
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_images,
        persistent_workers=workers > 0,
    )
    for _ in loader:  # warm-up: starts the workers, fills the page cache
        pass
    start, images = time.perf_counter(), 0
    for batch in loader:
        images += batch["pixel_values"].shape[0]
    seconds = time.perf_counter() - start
    del loader  # shuts the persistent workers down
    return images / seconds, batch["pixel_values"]


def bench_streamed(rows, resolution: int) -> float:
    dataset = StreamedImageRows(rows, "image", resolution, random_flip=True)
    start, images = time.perf_counter(), 0
    for _ in dataset:
        images += 1
    return images / (time.perf_counter() - start)


def bench_degrade(hq: torch.Tensor, repeats: int) -> dict:
    """Images per second of LQ alone, ELQ alone and degrade_pair (both) on a batch ``hq``."""
    lq = RealESRGANDegradation(DegradationConfig.realesrgan())
    elq = RealESRGANDegradation(DegradationConfig.extreme())
    runs = {
        "LQ": lambda g: lq(hq, generator=g),
        "ELQ": lambda g: elq(hq, generator=g),
        "LQ + ELQ (degrade_pair)": lambda g: degrade_pair(hq, lq, elq, generator=g),
    }
    rates = {}
    for name, run in runs.items():
        run(torch.Generator().manual_seed(0))  # warm-up
        times = []
        for r in range(repeats):
            generator = torch.Generator().manual_seed(r + 1)
            start = time.perf_counter()
            run(generator)
            times.append(time.perf_counter() - start)
        rates[name] = hq.shape[0] / (sum(times) / len(times))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=512, help="crop side")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rows", type=int, default=16, help="rows of the parquet shard")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the second loader run")
    parser.add_argument("--repeats", type=int, default=5, help="timed degradation runs per preset")
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=1.0,
        help="seconds per training step at --batch-size (default 1.0: a GPU-like placeholder, not measured)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        shard_dir = os.path.join(tmp, "shard")
        os.mkdir(shard_dir)
        start = time.perf_counter()
        sizes = write_shard(shard_dir, args.rows)
        built = time.perf_counter() - start
        cache_dir = os.path.join(tmp, "hf_cache")  # nothing goes to ~/.cache
        rows = open_image_dataset(dataset_name=shard_dir, cache_dir=cache_dir)
        streamed = open_image_dataset(dataset_name=shard_dir, streaming=True, cache_dir=cache_dir)
        mb = os.path.getsize(os.path.join(shard_dir, "train-00000-of-00001.parquet")) / 2**20

        print(
            f"torch {torch.__version__}, {args.threads} torch thread(s), {os.cpu_count()} CPUs "
            f"(load average {os.getloadavg()[0]:.2f} at the start: other processes share them); "
            f"{args.rows} rows of 2K PNG ({', '.join(f'{w}x{h}' for w, h in sizes)}), {mb:.0f} MB parquet, "
            f"built in {built:.1f} s; crops {args.resolution}, batch {args.batch_size}"
        )
        header = f"{'stage':<48} {'img/s':>8} {'ms/img':>8}"
        print(header)
        print("-" * len(header))

        def line(name: str, rate: float) -> None:
            print(f"{name:<48} {rate:8.2f} {1000 / rate:8.1f}")

        line("(a) decode 2K PNG (row read + decode_image)", bench_decode(rows))
        dataset = ImageRows(rows, "image", args.resolution, random_flip=True)
        loader_rates = {}
        for workers in (0, args.workers):
            loader_rates[workers], hq = bench_loader(dataset, args.batch_size, workers)
            line(f"(b) ImageRows decode+crop, num_workers={workers}", loader_rates[workers])
        line("(b) StreamedImageRows decode+crop, main process", bench_streamed(streamed, args.resolution))
        for name, rate in bench_degrade(hq, args.repeats).items():
            line(f"(c) CPU degrade {name}, batch {hq.shape[0]}", rate)

    need = args.batch_size / args.step_seconds
    per_worker = loader_rates[0]  # one worker does what the main process does with num_workers=0
    print(
        f"step: {args.step_seconds:.2f} s at batch {args.batch_size} needs {need:.2f} img/s"
        + (" (the default 1.0 s is a GPU-like placeholder, not a measurement)" if args.step_seconds == 1.0 else "")
    )
    print(
        f"one worker decodes+crops {per_worker:.2f} img/s: {math.ceil(need / per_worker)} worker(s) keep a step fed "
        f"(measured with {args.workers} workers on {os.cpu_count()} CPUs: {loader_rates[args.workers]:.2f} img/s, "
        f"{loader_rates[args.workers] / need:.2f}x the need); degradations run on the accelerator, not in workers"
    )


if __name__ == "__main__":
    main()
