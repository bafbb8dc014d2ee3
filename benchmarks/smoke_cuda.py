"""Smoke runs for a GPU: xformers attention, 8-bit Adam (bitsandbytes) and model CPU offload.

    python benchmarks/smoke_cuda.py xformers      # images and projector gradients against SDPA's
    python benchmarks/smoke_cuda.py adam8bit      # 3 steps of AdamW8bit against torch's AdamW
    python benchmarks/smoke_cuda.py offload       # enable_model_cpu_offload against the pipeline on the GPU

Each turns one feature on and compares with the same run without it, on the IRIB pipeline with fresh
projector and restorer sets: SD2.1-base at 512 px if it is on disk (``--base`` a folder, or the Hub
id in the local cache; nothing is downloaded), else the tiny random pipeline at 32 px. The first
line says which model ran; the last line is ``SUMMARY ...`` for benchmarks/gpu_checks.sh. Exit 0:
the feature works; 1: it failed; 3: skipped (no CUDA, or its package is not installed).
"""

from __future__ import annotations

import sys

from bench_args import smoke_parser

SKIPPED = 3


class Skip(Exception):
    """The check cannot run here (no CUDA, a package missing): exit 3, not a failure."""


def local_base(base: str):
    """SD2.1-base's folder if it is on disk (a folder, or the Hub cache); None otherwise."""
    import os

    if os.path.isdir(base):
        return base
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(base, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError), or not a repo id at all
        return None


def load(args, dtype):
    """(pipeline on the CPU with fresh projector and restorer sets, image side, which model)."""
    import torch

    from diffusers_irib import IRIBRestorationPipeline
    from diffusers_irib.tiny import make_tiny_pipeline

    path = None if args.tiny else local_base(args.base)
    if path is not None:
        pipe, size, name = IRIBRestorationPipeline.from_pretrained(path, dtype=dtype), 512, "SD2.1-base"
        print(f"model: SD2.1-base from {path}")
    else:
        pipe, size, name = make_tiny_pipeline().to(dtype=dtype), 32, "tiny pipeline"
        print("model: the tiny random pipeline (" + ("--tiny)" if args.tiny else f"{args.base} is not on disk)"))
    pipe.add_adapter_set("projector")
    pipe.add_adapter_set("restorer", trainable=False)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():  # LoRA B starts at zero: give the sets weights so they take part in the outputs
        for p_name, p in pipe.unet.named_parameters():
            if "lora_B" in p_name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(p_name))) * 1e-3)
    return pipe, args.size or size, name


def restore(pipe, size: int):
    import torch

    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return pipe(image, prompt="a photo", lfo_steps=1, output_type="pt", color_fix=None).images.float().cpu()


def projector_loss(pipe, size: int, device: str):
    """A training-like loss through the projector's one-step model (encode, UNet at 999, decode)."""
    import torch

    from diffusers_irib.irib import one_step
    from diffusers_irib.one_step import encode_image

    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    embeds = pipe.encode_prompt(["a photo"], torch.device(device))
    with pipe.use_adapter_set("projector"):
        latents = encode_image(pipe.vae, (x * 2 - 1).to(pipe.vae.dtype))
        out = one_step(pipe.unet, pipe.vae, pipe.scheduler.alphas_cumprod, latents, embeds)
    return (out.images.float() - (x * 2 - 1)).pow(2).mean()


def trainable(pipe):
    from diffusers_irib.adapters import adapter_set_parameters

    return adapter_set_parameters(pipe.unet, pipe.vae, "projector", trainable_only=True)


def fp32_trainable(pipe) -> None:
    import torch
    from diffusers.training_utils import cast_training_params

    cast_training_params(pipe.unet, dtype=torch.float32)
    cast_training_params(pipe.vae, dtype=torch.float32)


def check_xformers(args) -> str:
    import torch

    try:
        import xformers.ops  # noqa: F401
    except ImportError as err:
        raise Skip(f"xformers is not installed ({err}); pip install xformers (its wheel pins one torch)") from None
    pipe, size, model = load(args, torch.float16)
    fp32_trainable(pipe)
    pipe.to(args.device)
    images, grads = [], []
    for use_xformers in (False, True):
        if use_xformers:
            pipe.enable_xformers_memory_efficient_attention()
        images.append(restore(pipe, size))
        params = trainable(pipe)
        projector_loss(pipe, size, args.device).backward()
        grads.append(torch.cat([p.grad.flatten().float() for p in params if p.grad is not None]))
        pipe.unet.zero_grad(set_to_none=True)
        pipe.vae.zero_grad(set_to_none=True)
    image_diff = (images[1] - images[0]).abs().max().item()
    grad_diff = ((grads[1] - grads[0]).norm() / grads[0].norm().clamp_min(1e-12)).item()
    ok = image_diff < 2e-2 and grad_diff < 5e-2 and bool(torch.isfinite(grads[1]).all())
    return (
        f"{'ok' if ok else 'FAILED'}: images max |xformers - SDPA| {image_diff:.1e} (< 2e-2), projector "
        f"gradients relative difference {grad_diff:.1e} (< 5e-2); {model}"
    )


def check_adam8bit(args) -> str:
    import torch

    try:
        import bitsandbytes as bnb
    except ImportError as err:
        raise Skip(f"bitsandbytes is not installed ({err}); pip install bitsandbytes") from None
    pipe, size, model = load(args, torch.bfloat16)
    fp32_trainable(pipe)  # LoRA weights train in fp32 on a bf16 base, as the training script does
    pipe.to(args.device)
    params = trainable(pipe)
    start = [p.detach().clone() for p in params]
    updates, losses = {}, {}
    for name, optimizer_cls in (("torch", torch.optim.AdamW), ("8bit", bnb.optim.AdamW8bit)):
        with torch.no_grad():
            for p, p0 in zip(params, start):
                p.copy_(p0)
        optimizer = optimizer_cls(params, lr=1e-3, weight_decay=1e-2)
        losses[name] = []
        for _ in range(3):
            loss = projector_loss(pipe, size, args.device)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses[name].append(loss.item())
        updates[name] = torch.cat([(p.detach() - p0).flatten() for p, p0 in zip(params, start)])
    moved = updates["8bit"].norm().item()
    rel = ((updates["8bit"] - updates["torch"]).norm() / updates["torch"].norm().clamp_min(1e-12)).item()
    finite = all(torch.isfinite(torch.tensor(v)).all() for v in losses.values())
    ok = finite and moved > 0 and rel < 0.2
    return (
        f"{'ok' if ok else 'FAILED'}: AdamW8bit's 3-step update vs torch AdamW's: relative difference {rel:.1e} "
        f"(< 0.2), losses {losses['8bit'][0]:.4f} -> {losses['8bit'][-1]:.4f}; {model}"
    )


def check_offload(args) -> str:
    import torch

    gpu = args.device.startswith("cuda")
    pipe, size, model = load(args, torch.float16 if gpu else torch.float32)
    pipe.to(args.device)
    expected = restore(pipe, size)
    pipe.to("cpu")
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    pipe.enable_model_cpu_offload(device=args.device)
    got = restore(pipe, size)
    peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if gpu else "n/a on the CPU"
    diff = (got - expected).abs().max().item()
    on_cpu = pipe.unet.device.type == "cpu" or all(p.device.type == "cpu" for p in pipe.unet.parameters())
    ok = diff < 1e-3 and on_cpu
    return (
        f"{'ok' if ok else 'FAILED'}: images max |offload - on GPU| {diff:.1e} (< 1e-3), UNet back on the CPU "
        f"after the call: {on_cpu}, GPU peak {peak}; {model}"
    )


CHECKS = {"xformers": check_xformers, "adam8bit": check_adam8bit, "offload": check_offload}


def main() -> int:
    args = smoke_parser(__doc__).parse_args()
    try:
        import torch
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()  # .to(dtype) warns about an empty list of fp32 modules
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise Skip("CUDA is not available here")
        result = CHECKS[args.check](args)
    except Skip as why:
        print(f"SUMMARY {args.check}: skipped: {why}")
        return SKIPPED
    print(f"SUMMARY {args.check}: {result}")
    return 0 if result.startswith("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
