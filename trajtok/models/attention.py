"""Attention and MLP layers shared by every model.

All attention goes through `scaled_dot_product_attention` with an explicit boolean mask (True = may
attend), or a float one added to the attention logits (the trajectory encoder's soft-mask ablation). The
public TrajViT code lost its padding mask inside its attention implementation; here the mask is an argument
of the one attention layer every model uses, and tests check that it changes the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trajtok.models.sequence_packing import Packing


def expand_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Mask (B or 1, Lq or 1, Lk) -> the (B, 1, Lq, Lk) form SDPA broadcasts over heads.

    A float mask is a bias added to the logits (finite, so no row is ever empty) and passes as it is.

    A key-padding mask is passed as (B, 1, Lk). A query row that may attend to nothing (an empty
    trajectory, a padded token) is opened to every key instead: SDPA would return NaN for it, and NaN
    poisons gradients even when the row is discarded later. Such rows are always masked out downstream,
    so what they compute does not matter, only that it is finite.
    """
    if mask is None:
        return None
    if mask.dim() != 3 or not (mask.dtype == torch.bool or mask.is_floating_point()):
        raise ValueError(
            f"attention masks are boolean (B, Lq, Lk), True = may attend, or a float bias; got "
            f"{mask.dtype} {tuple(mask.shape)}"
        )
    mask = mask[:, None]
    if mask.is_floating_point():
        return mask
    return mask | ~mask.any(dim=-1, keepdim=True)


def multi_head_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Projected queries (B, Lq, D), keys and values (B, Lk, D) -> (B, Lq, D), through SDPA."""
    batch, queries, dim = q.shape
    head_dim = dim // heads
    q, k, v = (t.reshape(batch, -1, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=expand_mask(mask))
    return out.transpose(1, 2).reshape(batch, queries, dim)


class Attention(nn.Module):
    """Multi-head attention of `x` over `context` (over itself when None)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        packing: Packing | None = None,
    ) -> torch.Tensor:
        """`packing`: x is packed rows (S, D) of several sequences, each attending only within itself."""
        k, v = self.to_kv(x if context is None else context).chunk(2, dim=-1)
        if packing is not None:
            return self.proj(packing.attention(self.to_q(x), k, v, self.heads))
        return self.proj(multi_head_attention(self.to_q(x), k, v, self.heads, mask))


class Mlp(nn.Module):
    """Two linear layers with a GELU: the transformer's feed-forward and the small projection heads."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class GatedMlp(nn.Module):
    """SwiGLU feed-forward of the Perceivers (hidden about 8/3 of the width, as in LLaMA-style blocks)."""

    def __init__(self, dim: int):
        super().__init__()
        hidden = 8 * ((8 * dim // 3 + 7) // 8)
        self.gate_value = nn.Linear(dim, 2 * hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.gate_value(x).chunk(2, dim=-1)
        return self.out(F.silu(gate) * value)
