"""TrajAdapter: the trajectory tokenizer as a probing head over another model's frozen features.

It shows what trajectory grouping adds on top of any video model: its feature map (B, T, h, w, C) is
segmented into trajectories, each becomes tokens, and a learned query pools them (attending only to valid
trajectories) into one vector for a linear classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from trajtok.models.attention import Attention
from trajtok.models.output import ModelOutput
from trajtok.models.segmenter import Segmenter
from trajtok.models.trajectory_encoder import TrajectoryEncoder


class AttentivePool(nn.Module):
    """One learned query attends over valid tokens (B, L, D) -> (B, D)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        query = self.query.expand(tokens.shape[0], -1, -1)
        return self.attn(query, self.norm(tokens), mask=mask[:, None, :])[:, 0]


class TrajAdapter(nn.Module):
    """Frozen features (B, T, h, w, C) -> class logits (B, classes) and the segmentation it used."""

    def __init__(
        self,
        feature_dim: int,
        dim: int,
        segmenter: Segmenter,
        encoder: TrajectoryEncoder,
        heads: int,
        classes: int,
    ):
        super().__init__()
        self.input = nn.Sequential(nn.Linear(feature_dim, dim), nn.LayerNorm(dim))
        self.segmenter = segmenter
        self.encoder = encoder
        self.pool = AttentivePool(dim, heads)
        self.classifier = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, classes))

    def forward(self, features: torch.Tensor) -> ModelOutput:
        _, time, height, width, _ = features.shape
        dense = self.input(features.detach()).flatten(1, 3)  # the probed model stays frozen
        segmentation = self.segmenter(dense, (time, height, width))
        tokens, mask = self.encoder(dense, segmentation)
        pooled = self.pool(tokens, mask)
        return ModelOutput(
            seg_logits=segmentation.logits,
            seg_grid=segmentation.grid,
            token_mask=mask,
            num_tokens=mask.sum(dim=-1),
            class_logits=self.classifier(pooled),
        )

    def parts(self) -> dict[str, nn.Module]:
        return {
            "input_projection": self.input,
            "segmenter": self.segmenter,
            "trajectory_encoder": self.encoder,
            "pooling_classifier": nn.ModuleList([self.pool, self.classifier]),
        }
