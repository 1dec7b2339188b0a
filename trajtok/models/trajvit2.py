"""TrajViT2's video tokenizer: segment the clip into trajectories, then encode each into n tokens.

The token count follows the scene: K*n slots at most, and a trajectory that wins no pixel is masked out
(shapes stay static, so nothing waits on the device to count).

With `shared_kv` the segmenter's query Perceiver has no projection of its own: it reads the trajectory
encoder's keys and values (`ContextReader.shared`), computed once, with the same detach as before.
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
        self.shared_kv = segmenter.head.perceiver.reader is None
        self.segmenter = segmenter
        self.encoder = encoder
        self.project = nn.Linear(segmenter.backbone.feature_dim, width)

    def forward(self, frames: torch.Tensor) -> VideoTokens:
        if not self.shared_kv:
            features, segmentation = self.segmenter.segment(frames)
            tokens, mask = self.encoder(features, segmentation)
            return VideoTokens(self.project(tokens), mask, segmentation)
        features, grid = self.segmenter.backbone(frames)
        head = self.segmenter.head
        read, segmenter_read = self.encoder.perceiver.reader.shared(
            self.encoder.positioned(features, grid), grid, detach_second=head.detach
        )
        segmentation = head(features, grid, context=segmenter_read)
        tokens, mask = self.encoder(features, segmentation, context=read)
        return VideoTokens(self.project(tokens), mask, segmentation)

    def parts(self) -> dict[str, nn.Module]:
        return {
            **self.segmenter.parts(),
            "trajectory_encoder": nn.ModuleList([self.encoder, self.project]),
        }
