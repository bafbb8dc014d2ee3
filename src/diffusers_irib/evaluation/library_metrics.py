"""The paper's metrics that need other libraries' networks: LPIPS and DISTS (full reference, per
image), NIQE, MUSIQ and CLIPIQA (no reference, per image) and FID (a folder against a folder).

Permissive libraries come first wherever one computes the paper's number: LPIPS from ``lpips``
(BSD), DISTS from ``torchmetrics`` (Apache-2.0; the DISTS authors' alpha/beta) and FID from
``clean-fid`` (MIT) in its ``clean`` mode, which is what pyiqa's ``fid`` (the paper's evaluation)
computes. NIQE, MUSIQ and CLIPIQA exist only in ``pyiqa``, whose licence is PolyForm-Noncommercial:
they are used when pyiqa is installed and never required.

The libraries download their weights on first use. Offline (``HF_HUB_OFFLINE=1``) with the weights
not cached, a metric is reported unavailable with the reason instead of failing the evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch

__all__ = ["fid_features", "fid_from_features", "fid_of_files", "load_fid_extractor", "load_image_metric"]

#: One image metric: (restored, reference), each (3, H, W) in [0, 1], to a float.
ImageMetric = Callable[[torch.Tensor, torch.Tensor], float]

# torchvision's ImageNet backbones, cached by torch.hub (the file names are part of their URLs).
ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"  # LPIPS-Alex
VGG16_WEIGHTS = "vgg16-397923af.pth"  # DISTS
#: clean-fid keeps its TorchScript Inception (TF Inception 2015-12-05) in /tmp on Linux and macOS.
CLEANFID_INCEPTION = Path("/tmp") / "inception-2015-12-05.pt"
PYIQA_ONLY = ("niqe", "musiq", "clipiqa")


def hub_offline() -> bool:
    from huggingface_hub.constants import is_offline_mode

    return is_offline_mode()


def missing_offline(path: Path, what: str) -> Optional[str]:
    """Why a weight file cannot be had: not cached while offline; None when it is or can be downloaded."""
    if path.is_file() or not hub_offline():
        return None
    return f"{what} is not cached ({path}) and HF_HUB_OFFLINE is set: run once with network to cache it"


def torchvision_cache(filename: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _reason(library: str, err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return f"{library} could not load it: {lines[0] if lines else type(err).__name__}"


# --------------------------------------------------------------------------- per image
def load_lpips(device: torch.device) -> ImageMetric:
    """LPIPS v0.1 with AlexNet, as pyiqa's default ``lpips``; inputs scaled from [0, 1] to [-1, 1]."""
    import lpips

    net = lpips.LPIPS(net="alex", version="0.1", verbose=False).to(device).eval()

    def score(restored: torch.Tensor, reference: torch.Tensor) -> float:
        with torch.no_grad():
            return float(net(restored[None].to(device) * 2 - 1, reference[None].to(device) * 2 - 1).item())

    return score


def load_dists(device: torch.device) -> ImageMetric:
    """DISTS (VGG16 with the authors' learned alpha/beta) from torchmetrics; inputs in [0, 1]."""
    from torchmetrics.functional.image.dists import DISTSNetwork

    net = DISTSNetwork().to(device).eval()

    def score(restored: torch.Tensor, reference: torch.Tensor) -> float:
        with torch.no_grad():
            return float(net(reference[None].to(device), restored[None].to(device)).item())

    return score


def load_pyiqa_metric(name: str, device: torch.device) -> ImageMetric:
    """A pyiqa metric with its defaults (the paper's settings); a no-reference one sees the image alone."""
    import pyiqa  # PolyForm-Noncommercial: optional, never a dependency

    metric = pyiqa.create_metric(name, device=device)
    no_reference = getattr(metric, "metric_mode", "FR") == "NR"

    def score(restored: torch.Tensor, reference: torch.Tensor) -> float:
        with torch.no_grad():
            if no_reference:
                return float(metric(restored[None].to(device)).item())
            return float(metric(restored[None].to(device), reference[None].to(device)).item())

    return score


def load_image_metric(name: str, device: torch.device | str = "cpu") -> tuple[Optional[ImageMetric], str]:
    """``(score, "")`` for a per-image metric that can run here, else ``(None, why it cannot)``."""
    device = torch.device(device)
    if name == "lpips":
        loader, library = load_lpips, "lpips"
        missing = missing_offline(torchvision_cache(ALEXNET_WEIGHTS), "LPIPS needs torchvision's AlexNet weights; it")
    elif name == "dists":
        loader, library = load_dists, "torchmetrics"
        missing = missing_offline(torchvision_cache(VGG16_WEIGHTS), "DISTS needs torchvision's VGG16 weights; it")
    elif name in PYIQA_ONLY:
        try:
            import pyiqa  # noqa: F401
        except ImportError:
            return None, f"{name} needs pyiqa (pip install pyiqa; PolyForm-Noncommercial licence) and its weights"
        loader, library, missing = (lambda d: load_pyiqa_metric(name, d)), "pyiqa", None
    else:
        raise ValueError(f"{name!r} is not a per-image library metric")
    if missing:
        return None, missing
    try:
        return loader(device), ""
    except ImportError as err:
        return None, f"{name} needs {library}: pip install {library} ({err})"
    except Exception as err:  # noqa: BLE001 (a failed download or a damaged cache: reported, not raised)
        offline = " (HF_HUB_OFFLINE is set and its weights are not cached)" if hub_offline() else ""
        return None, _reason(library, err) + offline


# --------------------------------------------------------------------------- FID
def load_fid_extractor(device: torch.device | str = "cpu") -> tuple[Optional[Callable], str]:
    """clean-fid's Inception feature extractor (pool3, 2048-d, images resized 'clean' to 299 px)."""
    try:
        from cleanfid.features import build_feature_extractor
    except ImportError:
        return None, "FID needs clean-fid: pip install clean-fid"
    missing = missing_offline(CLEANFID_INCEPTION, "FID needs clean-fid's Inception network; it")
    if missing:
        return None, missing
    try:
        return build_feature_extractor("clean", torch.device(device), use_dataparallel=False), ""
    except Exception as err:  # noqa: BLE001 (a failed download: reported, not raised)
        return None, _reason("clean-fid", err)


def fid_features(
    files: Sequence[Path], extractor: Callable, device: torch.device | str = "cpu", batch_size: int = 8
) -> np.ndarray:
    """Features of a list of images, resized as clean-fid's 'clean' mode does (PIL bicubic to 299 px)."""
    from cleanfid import fid

    features = fid.get_files_features(
        [str(f) for f in files],
        model=extractor,
        num_workers=0,
        batch_size=batch_size,
        device=torch.device(device),
        mode="clean",
        verbose=False,
    )
    return np.asarray(features, dtype=np.float64)


def fid_from_features(features: np.ndarray, reference_features: np.ndarray) -> float:
    """The Frechet distance between the Gaussians fitted to two feature sets (clean-fid's formula).

    With fewer images than feature dimensions the covariances are rank-deficient: such a FID is only
    comparable with FIDs over the same number of images.
    """
    from cleanfid import fid

    if len(features) < 2 or len(reference_features) < 2:
        raise ValueError(
            f"FID needs at least 2 images on each side, got {len(features)} and {len(reference_features)}"
        )
    return float(fid.fid_from_feats(features, reference_features))


def fid_of_files(
    files: Sequence[Path], reference_files: Sequence[Path], extractor: Callable, device: torch.device | str = "cpu"
) -> float:
    """FID between two lists of images (lists rather than folders, so a ``--num-images`` run scores
    exactly the images it restored)."""
    return fid_from_features(fid_features(files, extractor, device), fid_features(reference_files, extractor, device))
