"""Seconds and peak memory of one IRIB training step, against OSEDiff's three-UNet layout, same run.

    python benchmarks/bench_train_step.py                                  # CPU: 256 x 256, fp32
    python benchmarks/bench_train_step.py --device cuda --size 512 --dtype bf16 --gradient-checkpointing \
        --batch-size 4

The exact SD2.1-base architecture with random weights (benchmarks/sd21_base.py, nothing downloaded),
--batch-size HQ crops (default 1), and a random-backbone LPIPS-VGG (lpips' own linear heads; the backbone's weights do not
change the cost). Each layout runs in a fresh process so its peak memory is its own (CUDA:
max_memory_allocated; CPU: the process's peak resident set):

* ours: one UNet and one VAE hold the trainable projector, the frozen restorer (with its own
  conv_in) and the regularizer; the SD prior is the same UNet with adapters off. A projector step is
  f -> g -> LQ reconstruction + HQ prior (VSD) + HQ fidelity, backward through g into f; then the
  regularizer's step. This is IRIBObjective, the code the training script runs.
* osediff: OSEDiff's layout for its lighter objective (one one-step model): a generator UNet with
  LoRA, a frozen UNet copy for the real score and a regularizer UNet copy, each one pass with its
  loss (L2 + LPIPS + VSD for the generator, epsilon loss for the regularizer).

The goal is ours <= 0.8 x OSEDiff's peak memory although our step runs two one-step models, and
under 20 GB at 512 px, batch 1, on a GPU. Prints (the last line, ``SUMMARY ...``, holds the peaks
and the goals for benchmarks/gpu_checks.sh), never asserts; exits 1 if a layout failed.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import torch
from bench_args import train_step_parser
from sd21_base import build_text_encoder, build_tokenizer, build_unet, build_vae

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def peak_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_lpips(device):
    import lpips

    return lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).to(device).requires_grad_(False)


def timed(fn, device, *args) -> float:
    sync(device)
    start = time.perf_counter()
    fn(*args)
    sync(device)
    return time.perf_counter() - start


def prepare(unet, vae, text_encoder, args, device):
    dtype = DTYPES[args.dtype]
    for model in (unet, vae, text_encoder):
        model.to(device=device, dtype=dtype).requires_grad_(False)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        vae.enable_gradient_checkpointing()


def run_ours(args, device) -> dict:
    from diffusers import DDPMScheduler
    from diffusers.training_utils import cast_training_params

    from diffusers_irib.adapters import add_adapter_set
    from diffusers_irib.training_utils import IRIBLossConfig, IRIBObjective

    torch.manual_seed(0)
    unet, vae, text_encoder = build_unet(), build_vae(), build_text_encoder()
    prepare(unet, vae, text_encoder, args, device)
    add_adapter_set(unet, vae, "projector")
    add_adapter_set(unet, vae, "restorer", conv_in=True, trainable=False)
    tokenizer = build_tokenizer()
    objective = IRIBObjective(
        unet,
        vae,
        text_encoder,
        tokenizer,
        DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        config=IRIBLossConfig(prompt_dropout=0.0),
        lpips_fn=make_lpips(device),
    )
    cast_training_params(unet, dtype=torch.float32)
    cast_training_params(vae, dtype=torch.float32)
    optimizer = torch.optim.AdamW(objective.trainable_parameters(), lr=5e-5)
    reg_optimizer = torch.optim.AdamW(objective.regularizer_parameters(), lr=5e-5)
    hq = torch.rand(args.batch_size, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))

    latest = {}  # the projector step's result, whose latents the regularizer's step trains on

    def projector_step(generator):
        batch = objective.make_batch(hq, generator=generator)
        latest["losses"] = objective.projector_step_losses(batch, generator=generator)
        latest["losses"]["total"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def regularizer_step(generator):
        losses = latest["losses"]
        objective.regularizer_step_loss(losses.latents, losses.prompt_embeds, generator=generator).backward()
        reg_optimizer.step()
        reg_optimizer.zero_grad(set_to_none=True)

    times = {"projector": [], "regularizer": []}
    for step in range(args.steps):
        generator = torch.Generator().manual_seed(step)
        times["projector"].append(timed(projector_step, device, generator))
        times["regularizer"].append(timed(regularizer_step, device, generator))
    return {k: min(v) for k, v in times.items()} | {"peak_gb": peak_gb(device)}


def run_osediff(args, device) -> dict:
    from diffusers import DDPMScheduler
    from diffusers.training_utils import cast_training_params

    from diffusers_irib.adapters import add_adapter_set, use_adapter_set
    from diffusers_irib.irib import one_step
    from diffusers_irib.losses import hq_fidelity_loss, prior_loss, regularizer_loss
    from diffusers_irib.one_step import encode_image, predict_noise

    torch.manual_seed(0)
    generator_unet, vae, text_encoder = build_unet(), build_vae(), build_text_encoder()
    real_unet, fake_unet = build_unet(), build_unet()
    for unet in (real_unet, fake_unet):
        unet.to(device=device, dtype=DTYPES[args.dtype]).requires_grad_(False)
    prepare(generator_unet, vae, text_encoder, args, device)
    add_adapter_set(generator_unet, vae, "generator", conv_in=True)
    add_adapter_set(fake_unet, None, "regularizer")
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    cast_training_params(generator_unet, dtype=torch.float32)
    cast_training_params(vae, dtype=torch.float32)
    cast_training_params(fake_unet, dtype=torch.float32)
    lpips_fn = make_lpips(device)
    tokenizer = build_tokenizer()

    def embed(prompt):
        ids = tokenizer([prompt], padding="max_length", max_length=77, return_tensors="pt").input_ids.to(device)
        with torch.no_grad():
            return text_encoder(ids)[0]

    # one prompt per crop: the prior's guidance batch is [negative; prompt] against [latents; latents]
    prompt, negative = (
        embed(p).expand(args.batch_size, -1, -1) for p in ("a photo", "painting, blurring, low quality")
    )
    optimizer = torch.optim.AdamW(
        [p for p in [*generator_unet.parameters(), *vae.parameters()] if p.requires_grad], lr=5e-5
    )
    reg_optimizer = torch.optim.AdamW([p for p in fake_unet.parameters() if p.requires_grad], lr=5e-5)
    hq = torch.rand(args.batch_size, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)

    def score(unet):
        return lambda z, t, c: predict_noise(unet, z, c, t)

    state = {}

    def generator_step(generator):
        with use_adapter_set(generator_unet, vae, "generator"):
            latents = encode_image(vae, hq * 2 - 1)
            out = one_step(generator_unet, vae, scheduler.alphas_cumprod, latents, prompt)
        z_hat = (out.images.float() + 1) / 2
        loss = hq_fidelity_loss(z_hat, hq, lpips_fn, l2=1.0, lpips=2.0, blur=0.0)["total"]
        fake, real = score(fake_unet), score(real_unet)
        loss = loss + prior_loss(out.latents, prompt, negative, fake, real, scheduler, generator=generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["latents"] = out.latents.detach()

    def regularizer_step(generator):
        regularizer_loss(state["latents"], prompt, score(fake_unet), scheduler, generator=generator).backward()
        reg_optimizer.step()
        reg_optimizer.zero_grad(set_to_none=True)

    times = {"projector": [], "regularizer": []}
    for step in range(args.steps):
        generator = torch.Generator().manual_seed(step)
        times["projector"].append(timed(generator_step, device, generator))
        times["regularizer"].append(timed(regularizer_step, device, generator))
    return {k: min(v) for k, v in times.items()} | {"peak_gb": peak_gb(device)}


GOAL_BATCH1_GB = 20.0  # the memory goal at 512 px, batch 1, on a GPU
GOAL_RATIO = 0.8  # ours / OSEDiff's layout


def summary(results: dict, args, failed: list[str]) -> str:
    """One line with the peaks and the goals (gpu_checks.sh puts it in its table)."""
    parts = [
        f"{name} {r['peak_gb']:.2f} GB, step {r['projector']:.2f}+{r['regularizer']:.2f} s"
        for name, r in results.items()
    ]
    parts += [f"{layout} FAILED" for layout in failed]
    if len(results) == 2:
        ratio = results["ours"]["peak_gb"] / results["osediff"]["peak_gb"]
        parts.append(f"ours/osediff {ratio:.2f} (goal <= {GOAL_RATIO}: {'met' if ratio <= GOAL_RATIO else 'MISSED'})")
    if "ours" in results and args.batch_size == 1 and args.device.startswith("cuda"):
        peak = results["ours"]["peak_gb"]
        parts.append(f"ours < {GOAL_BATCH1_GB:.0f} GB: {'met' if peak < GOAL_BATCH1_GB else 'MISSED'}")
    return f"SUMMARY batch {args.batch_size}, {args.size} px, {args.dtype}: " + "; ".join(parts)


def main() -> int:
    args = train_step_parser(__doc__).parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_train_step.py: --device cuda, but CUDA is not available here", file=sys.stderr)
        return 1
    args.size = args.size or (512 if device.type == "cuda" else 256)
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        result = (run_ours if args.worker == "ours" else run_osediff)(args, device)
        print("RESULT " + json.dumps(result))
        return 0

    results, failed = {}, []
    for layout in args.layouts:
        cmd = [sys.executable, __file__, "--worker", layout, *sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"{layout} failed:\n{proc.stderr[-3000:]}")
            failed.append(layout)
            continue
        results[layout] = json.loads(line[-1][len("RESULT ") :])
    print(
        f"SD2.1-base architecture, batch {args.batch_size}, {args.size} px, {args.dtype}, {device.type}, "
        f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}"
    )
    print(f"{'layout':<10} {'projector step s':>17} {'regularizer step s':>19} {'peak GB':>8}")
    for layout, r in results.items():
        print(f"{layout:<10} {r['projector']:>17.2f} {r['regularizer']:>19.2f} {r['peak_gb']:>8.2f}")
    if len(results) == 2:
        print(f"peak memory ours / osediff: {results['ours']['peak_gb'] / results['osediff']['peak_gb']:.2f}")
    print(summary(results, args, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
