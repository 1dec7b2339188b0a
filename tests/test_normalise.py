"""ImageNet normalisation of uint8 frames, shared by training and evaluation."""

from __future__ import annotations

import torch

from trajtok.data.normalise import IMAGENET_MEAN, IMAGENET_STD, normalise_frames


def test_the_mean_colour_maps_to_zero_and_one_std_above_to_one() -> None:
    mean = torch.tensor(IMAGENET_MEAN) * 255
    std = torch.tensor(IMAGENET_STD) * 255
    frames = torch.stack([mean, mean + std]).round().to(torch.uint8).view(1, 2, 3, 1, 1).expand(1, 2, 3, 4, 4)
    out = normalise_frames(frames, torch.device("cpu"), torch.bfloat16)
    assert out.shape == (1, 2, 3, 4, 4) and out.dtype == torch.bfloat16
    assert torch.allclose(out[0, 0].float(), torch.zeros(3, 4, 4), atol=0.02)
    assert torch.allclose(out[0, 1].float(), torch.ones(3, 4, 4), atol=0.03)
