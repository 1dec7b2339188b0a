"""Packed trajectory attention: each trajectory's tokens read only its own pixels, found by index.

In the trajectory encoder every pixel belongs to exactly one trajectory (the segmenter's argmax) and each
trajectory has n <= 4 tokens. Written as masked attention, every one of the K*n tokens scores every one of
the T*h*w pixels and a dense (B, K*n, T*h*w) mask throws almost all of it away: at paper scale (K = 128,
16 frames at 224 px) that is 50k pixels x 512 tokens per clip, K times the work that counts. Here each
pixel scores only the n tokens of its own trajectory (gathered by its id), the softmax runs per trajectory
over its pixels (scatter reductions), and values are summed back per trajectory: O(T*h*w * n) work and
memory, no mask, static shapes and no host synchronisation. The result equals the masked attention for
every trajectory that owns a pixel; a trajectory that owns none gets zeros (the mask drops it downstream).

Self-attention among a trajectory's own n tokens is a reshape to (B*K, n, D): no (K*n, K*n) mask either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class TrajectoryGroups:
    """Latents (B, K*n, D) in groups of n per trajectory; `owner` (B, N) gives each context position's group.

    An owner outside 0..K-1 (e.g. -1) marks a position no trajectory reads.
    """

    owner: torch.Tensor  # (B, N) long
    per_trajectory: int  # n

    def cross_attention(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, heads: int
    ) -> torch.Tensor:
        """Projected queries (B, K*n, D), keys and values (B, N, D) -> (B, K*n, D)."""
        batch, num_latents, dim = queries.shape
        n = self.per_trajectory
        trajectories, head_dim = num_latents // n, dim // heads
        # positions no trajectory owns go to a spare group K, dropped at the end
        owner = self.owner.masked_fill((self.owner < 0) | (self.owner >= trajectories), trajectories)
        rows = torch.arange(batch, device=owner.device)[:, None]

        q = queries.view(batch, trajectories, n, heads, head_dim)
        q = torch.cat([q, q.new_zeros(batch, 1, n, heads, head_dim)], dim=1)
        k = keys.view(batch, -1, 1, heads, head_dim)
        v = values.view(batch, -1, 1, heads, head_dim)
        # (B, N, n, heads): each pixel against its own trajectory's tokens; softmax, sums in fp32 (as SDPA).
        # Recomputed in backward: the gathered queries (B, N, n, D) would be the largest tensor kept.
        scores = checkpoint(_own_scores, q, k, rows, owner, use_reentrant=False) * head_dim**-0.5

        groups = owner[:, :, None, None].expand_as(scores)
        shape = (batch, trajectories + 1, n, heads)
        top = scores.new_full(shape, float("-inf")).scatter_reduce(1, groups, scores.detach(), "amax")
        weights = (scores - top[rows, owner]).exp()
        total = scores.new_zeros(shape).scatter_add(1, groups, weights)
        weights = weights / total[rows, owner]
        out = weights.new_zeros(batch, trajectories + 1, n, heads, head_dim).index_put(
            (rows, owner), weights[..., None] * v, accumulate=True
        )
        return out[:, :trajectories].reshape(batch, num_latents, dim).to(queries.dtype)

    def self_attention(self, attention: nn.Module, latents: torch.Tensor) -> torch.Tensor:
        """`attention` (an `Attention`) among each trajectory's own n latents only."""
        batch, num_latents, dim = latents.shape
        grouped = latents.reshape(-1, self.per_trajectory, dim)
        return attention(grouped).reshape(batch, num_latents, dim)


def _own_scores(q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Each pixel's key against the queries of its own trajectory: (B, N, n, heads), in fp32."""
    return (q[rows, owner] * k).sum(-1, dtype=torch.float32)
