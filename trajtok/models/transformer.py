"""The pre-norm transformer over [CLS] + tokens, shared by TrajViT2, ViT3D and the text tower.

One implementation for every tower is what makes TrajViT2 vs ViT3D a comparison of tokenizers only.
Padded or dropped tokens are excluded by a key-padding mask passed to SDPA; the CLS token is always valid.
`packed=True` (the video transformer with `model.packed`) runs only the valid tokens instead
(`trajtok.models.sequence_packing`); the meta device, which has no values to pack by, runs padded.
"""

from __future__ import annotations

import torch
from torch import nn

from trajtok.models.attention import Attention, Mlp
from trajtok.models.sequence_packing import Packing
from trajtok.models.sizes import TransformerSize


class TransformerBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm_attn = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = Mlp(width, 4 * width)

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor | None = None, packing: Packing | None = None
    ) -> torch.Tensor:
        """x: (B, L, W) with an optional key mask (B, 1, L), or packed rows (S, W) with their `packing`."""
        x = x + self.attn(self.norm_attn(x), mask=key_mask, packing=packing)
        return x + self.mlp(self.norm_mlp(x))


class Transformer(nn.Module):
    """Tokens (B, L, W) and a validity mask (B, L) -> normalised states (B, 1 + L, W); index 0 is CLS."""

    def __init__(self, size: TransformerSize, packed: bool = False):
        super().__init__()
        self.packed = packed
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
            valid = torch.cat([cls_valid, mask], dim=1)  # (B, 1 + L)
            if self.packed and valid.device.type != "meta":
                return self._packed(x, valid)
            key_mask = valid[:, None, :]
        for block in self.blocks:
            x = block(x, key_mask)
        return self.norm(x)

    def _packed(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The forward over the valid rows only; invalid positions come back as zeros."""
        packing = Packing.from_mask(valid)
        rows = packing.pack(x)
        for block in self.blocks:
            rows = block(rows, packing=packing)
        return packing.unpack(self.norm(rows))
