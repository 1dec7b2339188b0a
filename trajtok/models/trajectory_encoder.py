"""Trajectory encoder: n tokens per trajectory, each seeing only its own trajectory's pixels.

Tokens start from the soft-mask-weighted mean of the features: that mean is the one differentiable path
from the downstream (contrastive) loss back into the segmenter, which is how the video objective shapes
the grouping. A connector that reads another model's features starts them instead from the segmenter's
query features (`initial`, `trajtok.models.trajectory_reader`). A Perceiver then refines them with
cross-attention masked by the hard assignment (a token reads only its trajectory's pixels) and
self-attention masked to the trajectory's own sub-tokens, so
tokens of different trajectories never mix here and empty trajectories affect nothing. Packed (the default),
the same attention runs by pixel index instead of through dense masks (`trajtok.models.packing`).
`hard_mask=False` is the paper's ablation: every token reads every pixel, its attention biased by the log of
its trajectory's soft mask (dense, so it costs (K*n) x T*h*w per clip).
"""

from __future__ import annotations

import torch
from torch import nn

from trajtok.models.context import ContextKV
from trajtok.models.packing import TrajectoryGroups
from trajtok.models.perceiver import Perceiver
from trajtok.models.positions import Grid, fourier_features, sincos_3d
from trajtok.models.segmenter import Segmentation

MAX_TOKENS_PER_TRAJECTORY = 4
UNREAD_BIAS = -1e4  # attention bias of a pixel a trajectory has no share of: finite, so no row is all -inf


class TrajectoryEncoder(nn.Module):
    """(features (B, T*h*w, D), Segmentation) -> tokens (B, K*n, D) and their validity mask (B, K*n)."""

    # A Python int by design: `compile_parts` leaves it out of the graph (torch.compiler.disable, applied
    # there so that importing the model does not load torch._dynamo), and the encoder keeps one graph per n.
    compile_disabled = ("tokens_per_trajectory",)

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        rotary: str = "1d",
        train_tokens_per_trajectory: tuple[int, ...] = (1, 2, 4),
        eval_tokens_per_trajectory: int = 1,
        packed: bool = True,
        hard_mask: bool = True,
        pooled: bool = False,
    ):
        super().__init__()
        self.hard_mask = hard_mask
        for n in (*train_tokens_per_trajectory, eval_tokens_per_trajectory):
            if not 1 <= n <= MAX_TOKENS_PER_TRAJECTORY:
                raise ValueError(f"tokens per trajectory must be in 1..{MAX_TOKENS_PER_TRAJECTORY}, got {n}")
        self.train_tokens_per_trajectory = tuple(train_tokens_per_trajectory)
        self.eval_tokens_per_trajectory = eval_tokens_per_trajectory
        self.packed = packed
        self.sub_tokens = nn.Parameter(fourier_features(MAX_TOKENS_PER_TRAJECTORY, dim))
        self.perceiver = Perceiver(dim, depth, heads, rotary, pooled)

    def tokens_per_trajectory(self) -> int:
        """n for this forward: drawn per step in training (a model robust to every n), fixed at inference."""
        if not self.training:
            return self.eval_tokens_per_trajectory
        choices = self.train_tokens_per_trajectory
        return choices[int(torch.randint(len(choices), ()))]

    @staticmethod
    def positioned(features: torch.Tensor, grid: Grid) -> torch.Tensor:
        """What the tokens read: the features plus fixed sin-cos positions.

        Rotary keys only steer where a token looks; position added to the values is what lets a token
        carry where and when its trajectory is.
        """
        return features + sincos_3d(grid, features.shape[-1], features.device).to(features.dtype)

    def forward(
        self,
        features: torch.Tensor,
        segmentation: Segmentation,
        context: ContextKV | None = None,
        initial: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`context`: keys and values of `positioned(features)` another module computed (shared K/V);
        `initial` (B, K, D): where each trajectory's tokens start, instead of its soft-mask mean."""
        n = self.tokens_per_trajectory()
        batch, _, dim = features.shape
        num_trajectories = segmentation.present.shape[1]
        positioned = self.positioned(features, segmentation.grid)
        if context is None:
            context = self.perceiver.reader(positioned, segmentation.grid)
        context = context.at(segmentation.grid)

        if initial is None:
            # the soft masks come in fp32 (the assignment is computed so); the features' dtype is enough
            weights = segmentation.soft.transpose(1, 2).to(positioned.dtype)  # (B, K, N)
            mass = weights.sum(dim=-1, keepdim=True).clamp_min(1e-6)
            initial = (weights @ positioned) / mass  # (B, K, D)
        tokens = (initial[:, :, None, :] + self.sub_tokens[:n]).reshape(batch, num_trajectories * n, dim)

        if self.packed and self.hard_mask:
            groups = TrajectoryGroups(segmentation.hard, n)
            tokens = self.perceiver(tokens, context, groups=groups)
        else:
            owner = torch.arange(num_trajectories, device=features.device).repeat_interleave(n)  # (K*n,)
            self_mask = (owner[:, None] == owner[None, :])[None]  # (1, K*n, K*n)
            if self.hard_mask:
                cross_mask = segmentation.hard[:, None, :] == owner[None, :, None]  # (B, K*n, N)
            else:
                soft = segmentation.soft  # (B, N, K); an exact 0 (a coverage share) is not read at all
                log_soft = soft.clamp_min(1e-6).log().masked_fill(soft == 0, UNREAD_BIAS)
                log_soft = log_soft.to(context.key_states.dtype)
                cross_mask = log_soft.transpose(1, 2).repeat_interleave(n, dim=1)  # (B, K*n, N)
            tokens = self.perceiver(tokens, context, cross_mask, self_mask)
        return tokens, segmentation.present.repeat_interleave(n, dim=1)
