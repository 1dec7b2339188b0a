"""Perceiver: a few latents read a long flattened feature map through cross-attention.

Both the segmenter (K queries over all pixels) and the trajectory encoder (n tokens per trajectory over its
own pixels) are Perceivers; they differ only in their latents and masks. The context (up to 50k pixels per
clip at paper scale) is normalised and projected to keys and values once per Perceiver and shared by its
blocks, as in the original Perceiver: that projection is the costliest step (`trajtok.models.context`
makes it cheaper: pooled, or shared by the two Perceivers). Keys carry rotary phases of
their (t, h, w) position, so a latent can prefer regions of space and time.
"""

from __future__ import annotations

import torch
from torch import nn

from trajtok.models.attention import Attention, GatedMlp, multi_head_attention
from trajtok.models.context import ContextKV, ContextReader
from trajtok.models.packing import TrajectoryGroups


class PerceiverBlock(nn.Module):
    """Pre-norm: cross-attention to the shared keys/values, self-attention among latents, gated MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_cross = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim)
        self.cross_proj = nn.Linear(dim, dim)
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = GatedMlp(dim)

    def forward(
        self,
        latents: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        cross_mask: torch.Tensor | None = None,
        self_mask: torch.Tensor | None = None,
        groups: TrajectoryGroups | None = None,
    ) -> torch.Tensor:
        queries = self.to_q(self.norm_cross(latents))
        if groups is None:
            read = multi_head_attention(queries, keys, values, self.heads, cross_mask)
        else:  # packed: each trajectory's latents read its own pixels, no dense mask
            read = groups.cross_attention(queries, keys, values, self.heads)
        latents = latents + self.cross_proj(read)
        normed = self.norm_self(latents)
        if groups is None:
            latents = latents + self.self_attn(normed, mask=self_mask)
        else:
            latents = latents + groups.self_attention(self.self_attn, normed)
        return latents + self.mlp(self.norm_mlp(latents))


class Perceiver(nn.Module):
    """`depth` Perceiver blocks and a final norm: latents (B, L, D) read keys and values of a context.

    `reader` (a `ContextReader`) projects the context once for all blocks; a Perceiver built with
    `reads_context=False` has none and reads keys and values another module computed (`model.shared_kv`).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        rotary: str = "1d",
        pooled: bool = False,
        reads_context: bool = True,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.reader = ContextReader(dim, heads, rotary, pooled) if reads_context else None
        self.blocks = nn.ModuleList(PerceiverBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        latents: torch.Tensor,
        context: ContextKV,
        cross_mask: torch.Tensor | None = None,
        self_mask: torch.Tensor | None = None,
        groups: TrajectoryGroups | None = None,
    ) -> torch.Tensor:
        """Masks are boolean, True = may attend (cross may be a float bias): cross (B, L, context length),
        self (B or 1, L, L); or `groups`."""
        for block in self.blocks:
            latents = block(latents, context.key_states, context.value_states, cross_mask, self_mask, groups)
        return self.norm(latents)
