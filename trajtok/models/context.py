"""What a Perceiver's cross-attention reads: the dense features as keys and values.

Projecting every pixel to keys and values is the costliest step of both Perceivers (at paper scale two
D -> 2D projections over 50k pixels per clip, about a quarter of TrajViT2's forward), so two switches make
it cheaper without changing the method:
- `pooled`: keys and values are computed from features average-pooled 2x2 (1/8 of the input instead of
  1/4). The query Perceiver reads the pooled grid as it is; the trajectory encoder reads it back at 1/4,
  each pixel taking its cell's key and value, so the hard ids (and which pixels a trajectory reads) stay
  at 1/4 and a cell counts as often as its pixels that a trajectory owns.
- `shared` (`ContextReader(..., shared=True)`): the segmenter and the trajectory encoder read one
  projection. The segmenter's copy passes through `ParameterGradientOnly`, so its gradient still trains the
  projection but never reaches the features: the paper's detach keeps its meaning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trajtok.models.output import TensorRecord
from trajtok.models.positions import Grid, RotaryEmbedding, apply_rotary


class ContextKV(TensorRecord):
    """Keys (rotated by position) and values (B, t*h'*w', D) on `grid`, the grid they were computed on."""

    key_states: torch.Tensor  # (not `keys`/`values`: a TensorRecord is a dict, and those are its methods)
    value_states: torch.Tensor
    grid: Grid

    def at(self, grid: Grid) -> ContextKV:
        """The same keys and values read on `grid` (each pixel takes its 2x2 cell's), when pooled."""
        if tuple(grid) == tuple(self.grid):
            return self
        index = pooled_index(grid, self.key_states.device)
        return ContextKV(self.key_states[:, index], self.value_states[:, index], grid)


def pool_2x2(features: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, Grid]:
    """Average-pool flattened features (B, T*h*w, D) over 2x2 cells (an odd side keeps its last row)."""
    time, height, width = grid
    batch, _, dim = features.shape
    maps = features.reshape(batch * time, height, width, dim).permute(0, 3, 1, 2)
    pooled = F.avg_pool2d(maps, 2, ceil_mode=True)
    new_grid = (time, pooled.shape[2], pooled.shape[3])
    return pooled.permute(0, 2, 3, 1).reshape(batch, -1, dim), new_grid


def pooled_index(grid: Grid, device: torch.device | str | None = None) -> torch.Tensor:
    """(T*h*w,) index of each pixel's 2x2 cell in the pooled grid's flattening order."""
    time, height, width = grid
    cells_h, cells_w = -(-height // 2), -(-width // 2)
    t = torch.arange(time, device=device)[:, None, None]
    y = torch.arange(height, device=device)[None, :, None] // 2
    x = torch.arange(width, device=device)[None, None, :] // 2
    return ((t * cells_h + y) * cells_w + x).reshape(-1)


class ParameterGradientOnly(torch.autograd.Function):
    """Returns a computed projection `xW^T + b` again; its gradient reaches W and b, never x.

    Forward does no work (the projection was computed once, for the other reader); backward computes the
    weight and bias gradients the second reader adds.
    """

    @staticmethod
    def forward(ctx, projected, inputs, weight, bias):  # noqa: ANN001, ANN205 (autograd's signature)
        ctx.save_for_backward(inputs)
        ctx.dtypes = weight.dtype, bias.dtype
        return projected.view_as(projected)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (inputs,) = ctx.saved_tensors
        flat_grad = grad.reshape(-1, grad.shape[-1])  # in the forward's dtype, as autograd's linear
        grad_weight = flat_grad.t() @ inputs.reshape(-1, inputs.shape[-1]).to(grad.dtype)
        grad_bias = flat_grad.sum(0, dtype=torch.float32)
        weight_dtype, bias_dtype = ctx.dtypes
        return None, None, grad_weight.to(weight_dtype), grad_bias.to(bias_dtype)


class ContextReader(nn.Module):
    """Features (B, T*h*w, D) on `grid` -> `ContextKV`: layer norm, one D -> 2D projection, rotary keys."""

    def __init__(self, dim: int, heads: int, rotary: str = "1d", pooled: bool = False):
        super().__init__()
        self.heads = heads
        self.pooled = pooled
        self.rotary = RotaryEmbedding(dim // heads, rotary)
        self.norm = nn.LayerNorm(dim)
        self.to_kv = nn.Linear(dim, 2 * dim)

    def forward(
        self, features: torch.Tensor, grid: Grid, shared: bool = False, detach_second: bool = True
    ) -> ContextKV | tuple[ContextKV, ContextKV]:
        """One reader's `ContextKV`; with `shared`, two readers' of one projection, the second sending no
        gradient into `features` when `detach_second` (a forward, not a method, so that ZeRO-3 gathers the
        weights for it)."""
        features, grid = self._pool(features, grid)
        if not shared:
            return self._split(self.to_kv(self.norm(features)), grid)
        # the norm's affine folded into the projection (x_hat (W*gamma)^T + (W beta + b)), so that what the
        # second reader reuses is a plain linear map of a tensor without parameters
        normalised = F.layer_norm(features, features.shape[-1:], eps=self.norm.eps)
        weight = self.to_kv.weight * self.norm.weight
        bias = self.to_kv(self.norm.bias)
        projected = F.linear(normalised, weight, bias)
        second = projected
        if detach_second:
            second = ParameterGradientOnly.apply(projected.detach(), normalised.detach(), weight, bias)
        return self._split(projected, grid), self._split(second, grid)

    def _pool(self, features: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, Grid]:
        return pool_2x2(features, grid) if self.pooled else (features, grid)

    def _split(self, projected: torch.Tensor, grid: Grid) -> ContextKV:
        batch, length, double = projected.shape
        keys, values = projected.chunk(2, dim=-1)
        cos, sin = self.rotary(grid, projected.device)
        keys = keys.reshape(batch, length, self.heads, double // 2 // self.heads)
        keys = apply_rotary(keys, cos[:, None], sin[:, None]).reshape(batch, length, double // 2)
        return ContextKV(keys, values, grid)
