"""End-to-end speed of IRIBRestorationPipeline on the exact SD2.1-base architecture (random weights).

    python benchmarks/bench_pipeline.py                          # CPU: 256 x 256, fp32
    python benchmarks/bench_pipeline.py --device cuda            # GPU: 512 x 512, fp16
    python benchmarks/bench_pipeline.py --lfo-steps 0 1 --repeats 3 --threads 2

Goals: the pipeline's own overhead (wall time minus the forwards of the VAE encoder, UNet, VAE
decoder, text encoder and prompt extractor) under 5% of the wall time; on a GPU, a call with
lfo_steps=0 (projector + restorer) under 2.2x a single OSEDiff-style one-step pass (OSEDiff reports
0.105 s per pass on an A100). Each row reports the fastest of --repeats calls (the machine may be
shared). Prints (the last line, ``SUMMARY ...``, holds the numbers and the goal for
benchmarks/gpu_checks.sh), never asserts.

Nothing is downloaded: UNet, VAE and text encoder are built from SD2.1-base's configs
(benchmarks/sd21_base.py); the tokenizer is a character-level CLIPTokenizer built in memory (ids far
below the 49408-token vocabulary; the text encoder always sees 77 tokens, so its cost is the real one).
Timed with forward pre/post hooks: "encode" = vae.encoder + vae.quant_conv, "unet" = pipe.unet,
"decode" = vae.post_quant_conv + vae.decoder, "text" = pipe.text_encoder, "extractor" = the
prompt-extractor stand-in (RoundPrompt below) around its own call.
"""

from __future__ import annotations

import resource
import sys
import time
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import PIL.Image
import torch
from bench_args import pipeline_parser
from diffusers import DDPMScheduler
from diffusers.utils import logging as diffusers_logging
from sd21_base import build_text_encoder, build_tokenizer, build_unet, build_vae

from diffusers_irib import IRIBRestorationPipeline
from diffusers_irib.adapters import adapter_set_parameters
from diffusers_irib.one_step import one_step_restore

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPONENTS = ("encode", "unet", "decode", "text", "extractor")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class RoundPrompt:
    """Prompt-extractor stand-in: a cheap but real look at the pixels (per-image mean colour and
    brightness from the PIL image), plus a round counter so every round's prompt differs and the
    pipeline's per-call prompt cache cannot skip the text encoder (a real tagger reads a new LQ
    proxy each round). ``seconds`` accumulates the time spent in its calls."""

    def __init__(self) -> None:
        self.calls, self.seconds = 0, 0.0

    def __call__(self, images: list[PIL.Image.Image]) -> list[str]:
        start = time.perf_counter()
        prompts = []
        for image in images:
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32).mean(axis=(0, 1)) / 255.0
            colour = ("red", "green", "blue")[int(rgb.argmax())]
            light = "bright" if rgb.mean() > 0.5 else "dark"
            prompts.append(f"photo, {light}, {colour} tones, round {self.calls}")
        self.calls += 1
        self.seconds += time.perf_counter() - start
        return prompts


def instrument(pipe: IRIBRestorationPipeline, device: torch.device, totals: dict[str, float]) -> None:
    """Forward pre/post hooks adding each hooked module's forward time to ``totals[component]``."""
    modules = {
        "encode": (pipe.vae.encoder, pipe.vae.quant_conv),
        "unet": (pipe.unet,),
        "decode": (pipe.vae.post_quant_conv, pipe.vae.decoder),
        "text": (pipe.text_encoder,),
    }
    for name, group in modules.items():
        for module in group:
            if module is None:  # quant convs are optional in AutoencoderKL
                continue

            def pre(_module, _args, _name=name) -> None:
                sync(device)
                totals["_start_" + _name] = time.perf_counter()

            def post(_module, _args, _out, _name=name) -> None:
                sync(device)
                totals[_name] += time.perf_counter() - totals["_start_" + _name]

            module.register_forward_pre_hook(pre)
            module.register_forward_hook(post)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def reset_peak_memory(device: torch.device) -> bool:
    """CUDA: reset the allocator peak. CPU: reset the kernel's RSS high-water mark (Linux
    /proc/self/clear_refs "5"), which ru_maxrss reads; returns False if that is not possible."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def count(params: Iterable[torch.nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


def base_count(model: torch.nn.Module) -> int:
    """Parameters of the base model, without the LoRA factors peft injected."""
    return count(p for n, p in model.named_parameters() if "lora_" not in n)


def build(device: torch.device, dtype: torch.dtype) -> IRIBRestorationPipeline:
    torch.manual_seed(0)
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False
    )
    unet, vae, text_encoder = build_unet(), build_vae(), build_text_encoder()
    pipe = IRIBRestorationPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=build_tokenizer(), unet=unet, scheduler=scheduler
    )
    pipe.add_adapter_set("projector")
    pipe.add_adapter_set("restorer", trainable=False)
    pipe.set_progress_bar_config(disable=True)
    for model in (pipe.unet, pipe.vae, pipe.text_encoder):
        model.eval().requires_grad_(False)
    return pipe.to(device, dtype)


GOAL_RATIO = 2.2  # wall(lfo_steps=0) / one one-step pass, on a GPU


def main() -> int:
    args = pipeline_parser(__doc__).parse_args()
    torch.set_num_threads(args.threads)
    diffusers_logging.set_verbosity_error()  # .to(dtype) warns about an empty list of fp32 modules
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_pipeline.py: --device cuda, but CUDA is not available here", file=sys.stderr)
        return 1
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    size = args.size or (512 if gpu else 256)
    dtype = DTYPES[args.dtype or ("fp16" if gpu else "fp32")]
    name = torch.cuda.get_device_name(device) if gpu else "CPU"
    print(
        f"torch {torch.__version__}, {name}, {dtype}, {args.threads} threads, image {size}x{size}, repeats {args.repeats}"
    )

    start = time.perf_counter()
    pipe = build(device, dtype)
    lora = {role: count(adapter_set_parameters(pipe.unet, pipe.vae, role)) for role in ("projector", "restorer")}
    print(
        f"built in {time.perf_counter() - start:.1f} s; parameters: UNet {base_count(pipe.unet) / 1e6:.1f}M, VAE "
        f"{base_count(pipe.vae) / 1e6:.1f}M, text encoder {base_count(pipe.text_encoder) / 1e6:.1f}M, LoRA "
        + ", ".join(f"{role} {n / 1e6:.2f}M" for role, n in lora.items())
    )

    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    extractor = RoundPrompt()
    totals: dict[str, float] = defaultdict(float)
    instrument(pipe, device, totals)
    pipe(image, lfo_steps=0, prompt_extractor=extractor, output_type="pt", color_fix="adain")  # warm-up

    header = f"{'lfo':>3} {'wall ms':>9} " + " ".join(f"{c:>9}" for c in COMPONENTS)
    print(header + f" {'sum':>9} {'overhead':>9} {'ovh %':>6} {'peak MiB':>9}\n" + "-" * (len(header) + 46))
    walls: dict[int, float] = {}
    peaks: dict[int, float] = {}
    resets = True
    for lfo in args.lfo_steps:
        resets &= reset_peak_memory(device)
        runs = []
        for _ in range(args.repeats):
            totals.clear()
            extractor.seconds = 0.0
            sync(device)
            start = time.perf_counter()
            pipe(image, lfo_steps=lfo, prompt_extractor=extractor, output_type="pt", color_fix="adain")
            sync(device)
            wall = time.perf_counter() - start
            totals["extractor"] = extractor.seconds
            runs.append((wall * 1000, {c: totals[c] * 1000 for c in COMPONENTS}))
        wall, parts = min(runs, key=lambda run: run[0])  # best call: least disturbed by other processes
        total, walls[lfo], peaks[lfo] = sum(parts.values()), wall, peak_memory_mib(device)
        print(
            f"{lfo:>3} {wall:9.1f} "
            + " ".join(f"{parts[c]:9.1f}" for c in COMPONENTS)
            + f" {total:9.1f} {wall - total:9.1f} {100 * (wall - total) / wall:6.2f} {peak_memory_mib(device):9.0f}"
        )
    memory = "torch.cuda.max_memory_allocated" if gpu else "resident set size (ru_maxrss)"
    memory += ", reset before each row" if resets else ", process lifetime peak (could not reset)"
    print(f"ms per call, the fastest of {args.repeats} (its own component times); peak: {memory}")
    print("a call runs 2 VAE encodes, lfo+2 UNet passes and decodes, lfo+2 prompts (extractor + text encoder)")

    # Reference: one OSEDiff-style pass (encode + one UNet call + decode) with the restorer active
    # and precomputed text embeddings; the modules are already warm from the calls above.
    singles = []
    with torch.no_grad(), pipe.use_adapter_set("restorer"):
        embeds = pipe.encode_prompt(["photo, bright, red tones, round 0"], device)
        pixels = (image * 2 - 1).to(device)
        for _ in range(args.repeats):
            sync(device)
            start = time.perf_counter()
            one_step_restore(pipe.unet, pipe.vae, pixels, embeds, pipe.scheduler.alphas_cumprod)
            sync(device)
            singles.append((time.perf_counter() - start) * 1000)
    single = min(singles)
    print(f"single one-step pass (restorer, embeddings precomputed): {single:.1f} ms (fastest of {args.repeats})")
    if 0 in walls:
        print(f"wall(lfo_steps=0) / single pass = {walls[0] / single:.2f}x (goal on a GPU: <= {GOAL_RATIO}x)")

    # A known, resolution-independent part of the overhead: switching adapter sets walks every
    # module and parameter of the UNet and VAE in Python; a call switches twice.
    start = time.perf_counter()
    for _ in range(5):
        with pipe.use_adapter_set("projector"):
            pass
    print(
        f"adapter-set switch (use_adapter_set enter + exit): {(time.perf_counter() - start) / 5 * 1000:.1f} ms, 2 per call"
    )
    parts = [f"lfo {lfo}: {walls[lfo]:.0f} ms, {peaks[lfo]:.0f} MiB" for lfo in walls]
    parts.append(f"one pass {single:.0f} ms")
    if 0 in walls:
        ratio = walls[0] / single
        verdict = ("met" if ratio <= GOAL_RATIO else "MISSED") if gpu else "a GPU goal"
        parts.append(f"lfo 0 / one pass {ratio:.2f}x (goal <= {GOAL_RATIO}x: {verdict})")
    print(f"SUMMARY {size} px, {str(dtype).replace('torch.', '')}: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
