"""CLIP heads shared by every video-text model: CLS -> joint embedding, and the learned temperature."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

INIT_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0


class EmbeddingHead(nn.Module):
    """A pooled state (B, W) -> L2-normalised embedding (B, E) in the space shared by video and text."""

    def __init__(self, width: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(width, embed_dim, bias=False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(pooled), dim=-1)


class LogitScale(nn.Module):
    """1 / temperature, learned in log space from 1/0.07; clamped at 100 so the softmax cannot collapse."""

    def __init__(self):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / INIT_TEMPERATURE)))

    def forward(self) -> torch.Tensor:
        return self.log_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()
