"""The pre-norm transformer over [CLS] + tokens, shared by TrajViT2, ViT3D and the text tower.

One implementation for every tower is what makes TrajViT2 vs ViT3D a comparison of tokenizers only.
Padded or dropped tokens are excluded by a key-padding mask passed to SDPA; the CLS token is always valid.
"""

from __future__ import annotations

import torch
from torch import nn

from trajtok.models.attention import Attention, Mlp
from trajtok.models.sizes import TransformerSize


class TransformerBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm_attn = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = Mlp(width, 4 * width)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm_attn(x), mask=key_mask)
        return x + self.mlp(self.norm_mlp(x))


class Transformer(nn.Module):
    """Tokens (B, L, W) and a validity mask (B, L) -> normalised states (B, 1 + L, W); index 0 is CLS."""

    def __init__(self, size: TransformerSize):
        super().__init__()
        self.width = size.width
        self.cls = nn.Parameter(torch.randn(1, 1, size.width) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(size.width, size.heads) for _ in range(size.depth))
        self.norm = nn.LayerNorm(size.width)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        batch = tokens.shape[0]
        x = torch.cat([self.cls.expand(batch, -1, -1).to(tokens.dtype), tokens], dim=1)
        key_mask = None
        if mask is not None:
            cls_valid = torch.ones(batch, 1, dtype=torch.bool, device=mask.device)
            key_mask = torch.cat([cls_valid, mask], dim=1)[:, None, :]  # (B, 1, 1 + L)
        for block in self.blocks:
            x = block(x, key_mask)
        return self.norm(x)
