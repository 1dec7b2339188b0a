"""ViT3D: the space-time patch baseline every TrajViT2 claim is measured against.

Tubelets of 2x16x16 pixels become tokens (1,568 for 16 frames at 224 px), with fixed 3-D sin-cos positions
so any clip length and resolution works without interpolating a learned table.
"""

from __future__ import annotations

import torch
from torch import nn

from trajtok.models.clip_model import VideoTokens
from trajtok.models.positions import sincos_3d

TUBELET = (2, 16, 16)


class TubeletTokenizer(nn.Module):
    """Frames (B, T, 3, H, W) -> (B, ceil(T/2) * H/16 * W/16, W) tokens; an odd T repeats its last frame."""

    def __init__(self, width: int):
        super().__init__()
        self.embed = nn.Conv3d(3, width, kernel_size=TUBELET, stride=TUBELET)

    @staticmethod
    def num_tokens(frames: int, height: int, width: int) -> int:
        return -(-frames // TUBELET[0]) * (height // TUBELET[1]) * (width // TUBELET[2])

    def forward(self, frames: torch.Tensor) -> VideoTokens:
        clip = frames.transpose(1, 2)  # (B, 3, T, H, W)
        missing = -clip.shape[2] % TUBELET[0]
        if missing:  # images (T = 1) and odd clips: repeat the last frame to fill the tubelet
            clip = torch.cat([clip, clip[:, :, -1:].expand(-1, -1, missing, -1, -1)], dim=2)
        patches = self.embed(clip)
        grid = tuple(patches.shape[2:])
        tokens = patches.flatten(2).transpose(1, 2)
        return VideoTokens(tokens + sincos_3d(grid, tokens.shape[-1], tokens.device).to(tokens.dtype), None)

    def parts(self) -> dict[str, nn.Module]:
        return {"tubelet_embedding": self}
