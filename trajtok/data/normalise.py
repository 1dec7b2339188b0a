"""ImageNet normalisation of uint8 frames: the input every model takes (see `trajtok.models.registry`)."""

from __future__ import annotations

from functools import cache

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@cache
def _imagenet_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std on 0-255 as (1, 1, 3, 1, 1), made once per device: a host copy every batch would sync."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 1, 3, 1, 1) * 255
    return mean, std


def normalise_frames(
    frames: torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8 (B, T, 3, H, W) -> ImageNet-normalised `dtype` on `device` (computed in float32).

    The copy to the device does not wait for it when `frames` is pinned (the loader pins them).
    """
    mean, std = _imagenet_stats(torch.device(device))
    return ((frames.to(device, non_blocking=True).float() - mean) / std).to(dtype)
