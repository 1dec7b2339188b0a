"""TrajViT2's video tokenizer: segment the clip into trajectories, then encode each into n tokens.

The token count follows the scene: K*n slots at most, and a trajectory that wins no pixel is masked out
(shapes stay static, so nothing waits on the device to count).
"""

from __future__ import annotations

import torch
from torch import nn

from trajtok.models.clip_model import VideoTokens
from trajtok.models.segmenter import VideoSegmenter
from trajtok.models.trajectory_encoder import TrajectoryEncoder


class TrajectoryTokenizer(nn.Module):
    """Frames (B, T, 3, H, W) -> trajectory tokens (B, K*n, W), their mask and the segmentation."""

    def __init__(self, segmenter: VideoSegmenter, encoder: TrajectoryEncoder, width: int):
        super().__init__()
        self.segmenter = segmenter
        self.encoder = encoder
        self.project = nn.Linear(segmenter.backbone.feature_dim, width)

    def forward(self, frames: torch.Tensor) -> VideoTokens:
        features, segmentation = self.segmenter.segment(frames)
        tokens, mask = self.encoder(features, segmentation)
        return VideoTokens(self.project(tokens), mask, segmentation)

    def parts(self) -> dict[str, nn.Module]:
        return {
            **self.segmenter.parts(),
            "trajectory_encoder": nn.ModuleList([self.encoder, self.project]),
        }
