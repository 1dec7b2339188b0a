"""Position encodings over a (t, h, w) grid, and Fourier initial values for learned latents.

Dense features are flattened to one axis of length T*h*w; every model attends over that axis, so position
has to be put back explicitly: rotary phases on attention keys (where a query looks) and fixed sin-cos
vectors added to features (what a token carries away).
"""

from __future__ import annotations

import math

import torch

Grid = tuple[int, int, int]  # (T, h, w) of a flattened feature map


def grid_coordinates(grid: Grid, device: torch.device | str | None = None) -> torch.Tensor:
    """(T*h*w, 3) float (t, y, x) of each flattened position, in flattening order."""
    axes = [torch.arange(n, device=device, dtype=torch.float32) for n in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def _inverse_frequencies(pairs: int, base: float, device: torch.device | str | None) -> torch.Tensor:
    return base ** (-torch.arange(pairs, device=device, dtype=torch.float32) / max(pairs, 1))


class RotaryEmbedding(torch.nn.Module):
    """Rotary phases for attention keys over a flattened (t, h, w) grid.

    `mode="1d"` rotates by the flattened index t*h*w + y*w + x (the paper's choice); `"3d"` gives a third
    of the frequency pairs to each of t, y and x, so neighbours across a row boundary are not far apart.
    """

    def __init__(self, head_dim: int, mode: str = "1d", base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary head_dim must be even, got {head_dim}")
        if mode not in ("1d", "3d"):
            raise ValueError(f"rotary mode must be '1d' or '3d', got {mode!r}")
        self.head_dim, self.mode, self.base = head_dim, mode, base

    def forward(
        self, grid: Grid, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (T*h*w, head_dim)."""
        pairs = self.head_dim // 2
        coords = grid_coordinates(grid, device)
        if self.mode == "1d":
            index = coords[:, 0] * grid[1] * grid[2] + coords[:, 1] * grid[2] + coords[:, 2]
            angles = index[:, None] * _inverse_frequencies(pairs, self.base, device)
        else:
            split = [pairs // 3, pairs // 3, pairs - 2 * (pairs // 3)]
            angles = torch.cat(
                [
                    coords[:, axis, None] * _inverse_frequencies(n, self.base, device)
                    for axis, n in enumerate(split)
                ],
                dim=-1,
            )
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (..., N, head_dim) by per-position phases (N, head_dim), in the rotate-half layout."""
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def sincos_3d(grid: Grid, dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(T*h*w, dim) fixed sin-cos embedding of (t, y, x); works at any grid size without interpolation."""
    per_axis = 2 * (dim // 6)
    coords = grid_coordinates(grid, device)
    parts = []
    for axis in range(3):
        angles = coords[:, axis, None] * _inverse_frequencies(per_axis // 2, 10000.0, device)
        parts += [angles.sin(), angles.cos()]
    embedding = torch.cat(parts, dim=-1)
    return torch.nn.functional.pad(embedding, (0, dim - embedding.shape[-1]))


def fourier_features(count: int, dim: int) -> torch.Tensor:
    """(count, dim) distinct, well-spread vectors: initial values for learned queries and sub-tokens.

    Row i holds sin/cos of 2*pi*f*i/count for frequencies f spread geometrically from 1 up to count/2, so
    no two rows start equal (random init can make two queries near-twins that then split one object).
    """
    pairs = dim // 2
    top = max(count / 2, 1.0)
    freqs = torch.logspace(0, math.log10(top), pairs) if pairs > 1 else torch.ones(1)
    phase = 2 * math.pi * torch.arange(count, dtype=torch.float32)[:, None] / count * freqs
    features = torch.cat([phase.sin(), phase.cos()], dim=-1)
    return torch.nn.functional.pad(features, (0, dim - features.shape[-1]))
