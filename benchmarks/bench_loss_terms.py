"""Each term of the IRIB objective at one fixed batch of the tiny pipeline, unweighted and weighted.

    python benchmarks/bench_loss_terms.py                      # the defaults (OSEDiff's scales)
    python benchmarks/bench_loss_terms.py --pixel_range 0,1    # pixel terms on [0, 1] images

Shows how the defaults weigh (values, and the gradient norm each weighted term sends to the trained set) the terms against each other: the same batch, degradations, noise and
timesteps every run. Tiny random models (offline, CPU), LPIPS on a random VGG (its ImageNet weights
need a download), so the values show scales, not quality. Prints, never asserts.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from diffusers_irib.training_utils import IRIBLossConfig, IRIBObjective

PHOTOS = ("astronaut", "coffee")


def photos(size: int) -> torch.Tensor:
    import numpy as np
    from PIL import Image
    from skimage import data

    crops = []
    for name in PHOTOS:
        array = getattr(data, name)()
        side = min(array.shape[:2])
        image = Image.fromarray(array[:side, :side]).resize((size, size), Image.BICUBIC)
        crops.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255)
    return torch.stack(crops)


def randomize_sets(pipe, roles: tuple[str, ...]) -> None:
    """Small random LoRA B factors, so the projector and the restorer are not the bare base."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for model in (pipe.unet, pipe.vae):
            for name, param in model.named_parameters():
                if "lora_B" in name and any(f".{role}." in name for role in roles):
                    param.copy_(torch.randn(param.shape, generator=g) * 0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="irib", choices=["irib", "direct"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--pixel_range", default=None, help="'-1,1' or '0,1' (default: the library's).")
    parser.add_argument("--literal_eq17", action="store_true")
    args = parser.parse_args()

    import lpips

    from diffusers_irib.tiny import make_tiny_pipeline

    torch.manual_seed(0)
    pipe = make_tiny_pipeline()
    pipe.add_adapter_set("projector", trainable=True)
    pipe.add_adapter_set("restorer", conv_in=True, trainable=False)
    randomize_sets(pipe, ("projector", "restorer"))
    lpips_fn = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).requires_grad_(False)
    kwargs = {"mode": args.mode, "prompt_dropout": 0.0, "literal_eq17": args.literal_eq17}
    if args.pixel_range is not None:
        kwargs["pixel_range"] = tuple(float(v) for v in args.pixel_range.split(","))
    config = IRIBLossConfig(**kwargs)
    obj = IRIBObjective.from_pipeline(pipe, config=config, lpips_fn=lpips_fn)
    batch = obj.make_batch(photos(args.size), generator=torch.Generator().manual_seed(1))
    losses = obj.projector_step_losses(batch, generator=torch.Generator().manual_seed(2))

    weights = {
        "l2": config.l2_weight,
        "lpips": config.lpips_weight,
        "blur": config.blur_weight,
        "lq_recon": config.lq_weight,
        "prior": config.prior_weight,
    }
    total = float(losses["total"])
    settings = {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.name in ("mode", "pixel_range", "literal_eq17")
    }
    print(f"one batch of {len(batch.prompts)} x {args.size} px, tiny pipeline; config {settings}")
    params = obj.trainable_parameters()
    print(f"{'term':<10} {'value':>10} {'weight':>7} {'weighted':>10} {'share':>7} {'grad norm':>10}")
    for name, weight in weights.items():
        value = float(losses[name])
        norm = 0.0
        if weight and losses[name].requires_grad:  # the weighted term's gradient on the trained set
            grads = torch.autograd.grad(weight * losses[name], params, retain_graph=True, allow_unused=True)
            norm = float(torch.stack([g.norm() for g in grads if g is not None]).norm())
        print(
            f"{name:<10} {value:10.5f} {weight:7.2f} {weight * value:10.5f} {weight * value / total:7.1%} {norm:10.5f}"
        )
    print(f"{'total':<10} {total:10.5f}")


if __name__ == "__main__":
    main()
