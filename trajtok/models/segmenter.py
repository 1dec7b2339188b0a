"""The unified segmenter: K learned queries split a clip's pixels into trajectories in one pass.

Each query owns one region across all frames, so its region is a trajectory and no tracker is needed.
The queries read the dense features through a Perceiver with the features *detached* (the paper's key
ablation, `model.detach_features=false` to undo it: the segmentation stays a grouping of what the backbone
sees, rather than the backbone bending to whatever grouping is easiest); the assignment itself compares
per-pixel and per-query projections by cosine similarity, so the backbone still learns from both losses
through the pixel projection.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trajtok.models.attention import Mlp
from trajtok.models.backbone import ConvNeXtBackbone
from trajtok.models.output import ModelOutput, TensorRecord
from trajtok.models.perceiver import Perceiver
from trajtok.models.positions import Grid, fourier_features

MAX_LOGIT_SCALE = 20.0


class Segmentation(TensorRecord):
    """A soft and a hard split of T*h*w pixels into K trajectories."""

    logits: torch.Tensor  # (B, T*h*w, K) float: scaled cosine similarities
    soft: torch.Tensor  # (B, T*h*w, K): softmax over K, the differentiable masks
    hard: torch.Tensor  # (B, T*h*w) long: argmax over K, the trajectory id of each pixel
    present: torch.Tensor  # (B, K) bool: trajectories that won at least one pixel
    grid: Grid  # (T, h, w) of the flattened pixel axis


class Segmenter(nn.Module):
    """Dense features (B, T*h*w, D) -> `Segmentation` with K trajectories."""

    def __init__(
        self, dim: int, num_queries: int, depth: int, heads: int, rotary: str = "1d", detach: bool = True
    ):
        super().__init__()
        self.detach = detach
        self.queries = nn.Parameter(fourier_features(num_queries, dim))
        self.perceiver = Perceiver(dim, depth, heads, rotary)
        self.pixel_head = Mlp(dim, dim)
        self.query_head = Mlp(dim, dim)
        # softplus(p) + 1 = 10 at init: confident enough to give crisp masks, soft enough to learn
        self.scale_param = nn.Parameter(torch.tensor(math.log(math.expm1(9.0))))

    @property
    def num_queries(self) -> int:
        return self.queries.shape[0]

    def logit_scale(self) -> torch.Tensor:
        return (F.softplus(self.scale_param) + 1).clamp(max=MAX_LOGIT_SCALE)

    def forward(self, features: torch.Tensor, grid: Grid) -> Segmentation:
        queries = self.queries.expand(features.shape[0], -1, -1)
        queries = self.perceiver(queries, features.detach() if self.detach else features, grid)
        pixels = F.normalize(self.pixel_head(features), dim=-1)
        queries = F.normalize(self.query_head(queries), dim=-1)
        logits = self.logit_scale() * pixels @ queries.transpose(1, 2)
        hard = logits.argmax(dim=-1)
        present = torch.zeros(logits.shape[0], logits.shape[2], dtype=torch.bool, device=logits.device)
        present.scatter_(1, hard, True)
        return Segmentation(logits, logits.softmax(dim=-1), hard, present, grid)


class VideoSegmenter(nn.Module):
    """Backbone + segmenter on frames (B, T, 3, H, W): the `segmenter` model, and TrajViT2's front end.

    TrajViT2 holds one as `tokenizer.segmenter`, so a pre-trained segmenter's state dict loads into it.
    """

    def __init__(self, backbone: ConvNeXtBackbone, head: Segmenter):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def segment(self, frames: torch.Tensor) -> tuple[torch.Tensor, Segmentation]:
        """Dense features (B, T*h*w, D) and their segmentation."""
        features, grid = self.backbone(frames)
        return features, self.head(features, grid)

    def forward(self, frames: torch.Tensor) -> ModelOutput:
        _, segmentation = self.segment(frames)
        return ModelOutput(
            seg_logits=segmentation.logits,
            seg_grid=segmentation.grid,
            token_mask=segmentation.present,
            num_tokens=segmentation.present.sum(dim=-1),
        )

    def parts(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "segmenter": self.head}
