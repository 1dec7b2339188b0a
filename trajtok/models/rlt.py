"""Run-length tokenization (RLT, Choudhury et al., NeurIPS 2024) on ViT3D: a content-aware peer of TrajViT2.

A tubelet that repeats the one before it in time (the mean absolute difference of their ImageNet-normalised
pixels below `threshold`) carries nothing new, so it is dropped; the tubelet kept before it gets its run
length (itself plus the repeats that follow) as a learned embedding, so the transformer knows how long the
patch stayed still. The first tubelet of every position is always kept. Dropped tubelets are masked out,
and the packed transformer (`model.packed`) runs only the kept ones: a static clip costs a few tokens, a
moving one all of them. The default threshold, 0.1 in normalised units, is about 6 grey levels.
"""

from __future__ import annotations

import torch
from torch import nn

from trajtok.models.clip_model import VideoTokens
from trajtok.models.vit3d import TUBELET, TubeletTokenizer


def tubelet_changes(frames: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) -> (B, t, h, w): each tubelet's mean absolute difference from the previous one in
    time (infinite for the first), on the tubelet grid (an odd T repeats its last frame, as the embedding)."""
    missing = -frames.shape[1] % TUBELET[0]
    if missing:
        frames = torch.cat([frames, frames[:, -1:].expand(-1, missing, -1, -1, -1)], dim=1)
    batch, time, channels, height, width = frames.shape
    pt, ph, pw = TUBELET
    tubelets = frames.reshape(batch, time // pt, pt, channels, height // ph, ph, width // pw, pw)
    tubelets = tubelets.permute(0, 1, 4, 6, 2, 3, 5, 7).flatten(4).float()  # (B, t, h, w, pixels)
    change = (tubelets[:, 1:] - tubelets[:, :-1]).abs().mean(dim=-1)
    first = torch.full((batch, 1, *change.shape[2:]), float("inf"), device=change.device)
    return torch.cat([first, change], dim=1)


def run_lengths(keep: torch.Tensor) -> torch.Tensor:
    """(B, t, h, w) bool -> (B, t, h, w) long: for each kept tubelet, 1 + the dropped ones after it (0 where
    dropped)."""
    time = keep.shape[1]
    lengths = torch.zeros_like(keep, dtype=torch.long)
    next_kept = torch.full_like(keep[:, 0], time, dtype=torch.long)
    for index in range(time - 1, -1, -1):
        lengths[:, index] = torch.where(keep[:, index], next_kept - index, 0)
        next_kept = torch.where(keep[:, index], index, next_kept)
    return lengths


class RunLengthTokenizer(TubeletTokenizer):
    """Frames (B, T, 3, H, W) -> ViT3D's tubelet tokens with a run-length embedding, repeats masked out."""

    def __init__(self, width: int, threshold: float, max_run: int = 64):
        super().__init__(width)
        self.threshold = threshold
        self.length_embedding = nn.Embedding(max_run, width)
        nn.init.zeros_(self.length_embedding.weight)  # starts as plain ViT3D on what it keeps

    def forward(self, frames: torch.Tensor) -> VideoTokens:
        video = super().forward(frames)
        keep = tubelet_changes(frames) > self.threshold
        lengths = run_lengths(keep).clamp(1, self.length_embedding.num_embeddings) - 1
        tokens = video.tokens + self.length_embedding(lengths.flatten(1)).to(video.tokens.dtype)
        return VideoTokens(tokens, keep.flatten(1))
