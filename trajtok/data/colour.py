"""Colour augmentation on the training device: jitter, grey and blur for a whole batch at once.

The loader's workers decode and do the geometry (crop, resize, flip: what changes sizes, and what the label
maps must follow) on uint8; they also draw each clip's colour changes with its per-sample RNG (so a resume
draws the same) as a row of `COLOUR_FIELDS`. This module applies them where the batch lands, after its one
host-to-device copy: on a GPU the work is free next to the model, and in the workers it was most of their
CPU time (float jitter over every pixel). The same code runs on CPU runs and in the tests.

Written in torch rather than with kornia or torchvision's transforms: the jitter is clip-wide (one mean over
all frames, so the frames of a clip stay alike) and each change rounds to uint8 before the next, as the
worker-side version it replaces did; their per-image operators do neither.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
import torch.nn.functional as F

# One row per clip: jitter on (0/1), brightness, contrast and saturation factors, grey on (0/1), blur sigma
COLOUR_FIELDS = ("jitter", "brightness", "contrast", "saturation", "grey", "blur_sigma")
NO_COLOUR = np.array([0.0, 1.0, 1.0, 1.0, 0.0, 0.0], dtype=np.float32)  # the identity (evaluation, off)
_GREY_WEIGHTS = (0.299, 0.587, 0.114)


def apply_colour(frames: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, 3, H, W) frames and (B, 6) colour rows -> uint8 frames with each clip's changes.

    Jitter: brightness scales, contrast pulls to the clip's mean grey, saturation to each pixel's grey;
    grey: luma in all three channels; blur: a Gaussian of the row's sigma over each frame (kernel and
    reflected border as OpenCV's for uint8). Each step rounds to uint8, as a stored frame would.
    """
    if (
        frames.dtype != torch.uint8
        or frames.ndim != 5
        or colour.shape != (frames.shape[0], len(COLOUR_FIELDS))
    ):
        raise ValueError(
            f"expected uint8 (B, T, 3, H, W) and (B, 6), got {frames.shape} {frames.dtype}, "
            f"{tuple(colour.shape)}"
        )
    # Which changes to make is read off the rows on the host (the loader's CPU tensor): deciding on the
    # device would make the host wait for the GPU on every batch.
    host = colour.detach().to("cpu", torch.float32)
    rows = host.to(frames.device, non_blocking=True)
    jitter, brightness, contrast, saturation, grey, _ = (c.view(-1, 1, 1, 1, 1) for c in rows.unbind(1))
    weights = _grey_weights(frames.device)
    x = frames.float()
    if bool((host[:, 0] > 0).any()):
        scaled = x * brightness
        mean = (scaled * weights).sum(2, keepdim=True).mean(dim=(1, 2, 3, 4), keepdim=True)
        scaled = (scaled - mean) * contrast + mean
        luma = (scaled * weights).sum(2, keepdim=True)
        scaled = luma + (scaled - luma) * saturation
        x = torch.where(jitter > 0, _round(scaled), x)
    if bool((host[:, 4] > 0).any()):
        x = torch.where(grey > 0, _round((x * weights).sum(2, keepdim=True)).expand_as(x), x)
    for index, sigma in enumerate(host[:, 5].tolist()):
        if sigma > 0:
            x[index] = _blur(x[index], sigma)
    return x.to(torch.uint8)


@cache
def _grey_weights(device: torch.device) -> torch.Tensor:
    """Luma weights as (1, 1, 3, 1, 1), made once per device: a host copy every batch would sync."""
    return torch.tensor(_GREY_WEIGHTS, device=device).view(1, 1, 3, 1, 1)


def _round(x: torch.Tensor) -> torch.Tensor:
    """To the uint8 grid: round half up, then saturate (OpenCV's and numpy's `+ 0.5` then truncate)."""
    return (x + 0.5).floor().clamp(0, 255)


def _blur(clip: torch.Tensor, sigma: float) -> torch.Tensor:
    """(T, 3, H, W) float on the uint8 grid, blurred per frame: OpenCV's kernel size for uint8 images
    (round(6 sigma + 1), odd), its reflect-101 border, separable."""
    size = int(np.floor(sigma * 6 + 1 + 0.5)) | 1
    offsets = np.arange(size) - (size - 1) / 2
    weights = np.exp(-(offsets**2) / (2 * sigma * sigma))
    weights = (weights / weights.sum()).tolist()
    return _round(_convolve(_convolve(clip, weights, -1), weights, -2))


def _convolve(x: torch.Tensor, weights: list[float], dim: int) -> torch.Tensor:
    """`x` (N, C, H, W) convolved with `weights` along `dim` (-1 or -2), reflect-101 border, as a weighted
    sum of shifted views: three times faster on CPU than torch's conv2d with one channel and a 1-D kernel."""
    pad, length = len(weights) // 2, x.shape[dim]
    padded = F.pad(x, (pad, pad, 0, 0) if dim == -1 else (0, 0, pad, pad), mode="reflect")
    return sum(weight * padded.narrow(dim, i, length) for i, weight in enumerate(weights))
