"""What every registry model returns, so training, evaluation and losses need no per-model code."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trajtok.models.positions import Grid


@dataclass
class ModelOutput:
    """Fields a model does not produce are None (e.g. `seg_logits` of vit3d, embeddings of `segmenter`)."""

    video_embedding: torch.Tensor | None = None  # (B, E) float, L2-normalised
    text_embedding: torch.Tensor | None = None  # (B, E) float, L2-normalised
    logit_scale: torch.Tensor | None = None  # () float: 1 / temperature, learned, clamped to <= 100
    seg_logits: torch.Tensor | None = None  # (B, T*h*w, K) float: trajectory assignment logits
    seg_grid: Grid | None = None  # (T, h, w) of seg_logits' pixel axis; h, w = H//4, W//4
    token_mask: torch.Tensor | None = None  # (B, L) bool: the video tokens the transformer attends to
    num_tokens: torch.Tensor | None = None  # (B,) long: video tokens per clip (valid ones; CLS not counted)
    class_logits: torch.Tensor | None = None  # (B, classes) float: trajadapter's classifier
