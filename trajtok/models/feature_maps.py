"""The frozen feature map of a trained model: what a probe, TrajAdapter and a VLM's connector read.

`feature_map_fn(model)` turns normalised frames (B, T, 3, H, W) into (B, t, h, w, C) for our models (and any
torch module that returns such a map itself); `VisionTower` applies it window by window to a long video,
as the model was trained on `window_frames` frames.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from trajtok.errors import ConfigError
from trajtok.models.vit3d import TUBELET


def feature_map_fn(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Normalised frames (B, T, 3, H, W) -> the frozen feature map (B, t, h, w, C) a probe reads.

    trajvit2 and segmenter: the backbone's dense features (B, T, H/4, W/4, D); vit3d: the transformer's
    patch states (B, T/2, H/16, W/16, width); any other module is called on the frames and must return the
    5-D map itself.
    """
    name = getattr(model, "registry_name", None)
    if name in ("trajvit2", "segmenter"):
        backbone = model.tokenizer.segmenter.backbone if name == "trajvit2" else model.backbone

        def dense(frames: torch.Tensor) -> torch.Tensor:
            features, grid = backbone(frames)
            return features.view(frames.shape[0], *grid, -1)

        return dense
    if name == "vit3d":

        def patches(frames: torch.Tensor) -> torch.Tensor:
            batch, time, _, height, width = frames.shape
            video = model.tokenizer(frames)
            states = model.transformer(video.tokens, video.mask)[:, 1:]  # index 0 is CLS
            grid = (-(-time // TUBELET[0]), height // TUBELET[1], width // TUBELET[2])
            return states.reshape(batch, *grid, -1)

        return patches
    if name is not None:
        raise ConfigError(f"model '{name}' has no frozen feature map to probe")

    def module_map(frames: torch.Tensor) -> torch.Tensor:
        out = model(frames)
        if not isinstance(out, torch.Tensor) or out.dim() != 5:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"eval.probe.feature_module must return a (B, T, h, w, C) tensor, got {shape}")
        return out

    return module_map


class VisionTower(nn.Module):
    """A trained model's feature map over a long clip: windows of `window_frames` frames (0 = the whole clip)
    through `feature_map_fn`, concatenated in time: (B, T, 3, H, W) -> (B, windows * t, h, w, C)."""

    def __init__(self, model: nn.Module, window_frames: int = 0):
        super().__init__()
        self.model = model
        self.window_frames = window_frames
        self.feature_map = feature_map_fn(model)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        batch, time = frames.shape[:2]
        window = min(self.window_frames or time, time)
        if time % window:
            raise ValueError(f"a clip of {time} frames does not split into windows of {window}")
        maps = self.feature_map(frames.reshape(batch * (time // window), window, *frames.shape[2:]))
        return maps.reshape(batch, -1, *maps.shape[2:])
