"""Stand-ins for metric networks whose weights cannot be downloaded here (no test touches a hub)."""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision

from diffusers_irib.evaluation import library_metrics


def mean_colour(batch: torch.Tensor) -> torch.Tensor:
    """A 3-d FID 'feature extractor': the mean colour (0..255) of each image clean-fid hands over."""
    return batch.float().mean(dim=(2, 3))


@functools.cache
def random_backbone(url: str) -> dict:
    torch.manual_seed(0)
    model = torchvision.models.alexnet() if "alexnet" in url else torchvision.models.vgg16()
    return model.state_dict()


@pytest.fixture
def random_backbones(monkeypatch):
    """torchvision hands out random (seeded) AlexNet/VGG16 weights instead of downloading them."""
    monkeypatch.setattr(
        torchvision.models._api.WeightsEnum, "get_state_dict", lambda self, *a, **k: random_backbone(self.url)
    )
    monkeypatch.setattr(library_metrics, "hub_offline", lambda: False)
