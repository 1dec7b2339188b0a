"""TrajViT2's video tokenizer: segment the clip into trajectories, then encode each into n tokens.

The token count follows the scene: K*n slots at most, and a trajectory that wins no pixel is masked out
(shapes stay static, so nothing waits on the device to count).

With `chunk_frames` a long clip is segmented in chunks of that many frames (the release's advice for
T > 8), each with its own K trajectories and tokens; a fixed sin-cos vector of the chunk's index tells
the transformer which chunk a token came from. The segmentation then has one row per chunk
((B * chunks, chunk_frames*h*w, K)); the segmentation loss cuts the label maps the same way.

With `shared_kv` the segmenter's query Perceiver has no projection of its own: it reads the trajectory
encoder's keys and values (`ContextReader` with `shared=True`), computed once, with the same detach as before.
"""

from __future__ import annotations

import torch
from torch import nn

from trajtok.models.clip_model import VideoTokens
from trajtok.models.positions import sincos_3d
from trajtok.models.segmenter import VideoSegmenter
from trajtok.models.trajectory_encoder import TrajectoryEncoder


class TrajectoryTokenizer(nn.Module):
    """Frames (B, T, 3, H, W) -> trajectory tokens (B, K*n, W), their mask and the segmentation."""

    def __init__(
        self, segmenter: VideoSegmenter, encoder: TrajectoryEncoder, width: int, chunk_frames: int = 0
    ):
        super().__init__()
        self.chunk_frames = chunk_frames
        self.shared_kv = segmenter.head.perceiver.reader is None
        self.segmenter = segmenter
        self.encoder = encoder
        self.project = nn.Linear(segmenter.backbone.feature_dim, width)

    def forward(self, frames: torch.Tensor) -> VideoTokens:
        batch, time = frames.shape[:2]
        chunk = self.chunk_frames
        if not chunk or time <= chunk:
            return self._tokens(frames)
        if time % chunk:
            raise ValueError(f"a clip of {time} frames does not split into chunks of {chunk} frames")
        chunks = time // chunk
        video = self._tokens(frames.reshape(batch * chunks, chunk, *frames.shape[2:]))
        tokens = video.tokens.reshape(batch, chunks, -1, video.tokens.shape[-1])
        when = sincos_3d((chunks, 1, 1), tokens.shape[-1], tokens.device).to(tokens.dtype)
        tokens = (tokens + when[None, :, None, :]).flatten(1, 2)
        return VideoTokens(tokens, video.mask.reshape(batch, -1), video.segmentation)

    def _tokens(self, frames: torch.Tensor) -> VideoTokens:
        features, grid = self.segmenter.backbone(frames)
        head = self.segmenter.head
        read = segmenter_read = None  # each Perceiver reads for itself, unless they share
        if self.shared_kv:
            read, segmenter_read = self.encoder.perceiver.reader(
                self.encoder.positioned(features, grid), grid, shared=True, detach_second=head.detach
            )
        segmentation = head(features, grid, context=segmenter_read)
        tokens, mask = self.encoder(features, segmentation, context=read)
        return VideoTokens(self.project(tokens), mask, segmentation)

    def parts(self) -> dict[str, nn.Module]:
        return {
            **self.segmenter.parts(),
            "trajectory_encoder": nn.ModuleList([self.encoder, self.project]),
        }
