"""TrajAdapter: the paper's trajectory probing head over another model's frozen features.

A pre-trained TrajTok segmenter segments the frames; its trajectories, brought to the frozen model's feature
grid, each read the features under their own mask into n tokens (`trajtok.models.trajectory_reader`), and
one learned query pools the valid tokens into one vector for a linear classifier. The paper's headline uses
n = 4 tokens per trajectory. The attentive probe (`trajtok.eval.probe`) is this head without trajectories.
"""

from __future__ import annotations

import torch
from torch import nn

from trajtok.models.attention import Attention
from trajtok.models.output import ModelOutput
from trajtok.models.trajectory_reader import ForeignTrajectories, TrajectoryReader


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
    """Frozen features (B, T', h', w', C) and their `ForeignTrajectories` -> class logits (B, classes)."""

    def __init__(self, reader: TrajectoryReader, heads: int, classes: int):
        super().__init__()
        self.reader = reader
        self.pool = AttentivePool(reader.width, heads)
        self.classifier = nn.Sequential(nn.LayerNorm(reader.width), nn.Linear(reader.width, classes))

    def forward(self, features: torch.Tensor, trajectories: ForeignTrajectories) -> ModelOutput:
        tokens, mask = self.reader(features.detach(), trajectories)  # the probed model stays frozen
        return ModelOutput(
            token_mask=mask,
            num_tokens=mask.sum(dim=-1),
            class_logits=self.classifier(self.pool(tokens, mask)),
        )

    def parts(self) -> dict[str, nn.Module]:
        return {
            "trajectory_reader": self.reader,
            "pooling_classifier": nn.ModuleList([self.pool, self.classifier]),
        }
