"""The video-text CLIP model that TrajViT2 and ViT3D both are; they differ only in their video tokenizer.

A video tokenizer turns frames into tokens (and, for TrajViT2, a segmentation); everything after it (the
transformer, the CLIP heads, the text tower, the temperature) is this one class, so a TrajViT2 vs ViT3D
comparison measures tokenization and nothing else.
"""

from __future__ import annotations

import torch
from torch import nn

from trajtok.models.clip_heads import EmbeddingHead, LogitScale
from trajtok.models.output import ModelOutput, TensorRecord
from trajtok.models.segmenter import Segmentation
from trajtok.models.transformer import Transformer


class VideoTokens(TensorRecord):
    tokens: torch.Tensor  # (B, L, W) in the transformer's width
    mask: torch.Tensor | None  # (B, L) bool, True = valid; None = all valid
    segmentation: Segmentation | None = None


class VideoTextModel(nn.Module):
    """Frames (B, T, 3, H, W) and captions (B, L) -> normalised embeddings (see `forward`)."""

    def __init__(self, tokenizer: nn.Module, transformer: Transformer, text_tower: nn.Module, embed_dim: int):
        super().__init__()
        self.tokenizer = tokenizer
        self.transformer = transformer
        self.video_head = EmbeddingHead(transformer.width, embed_dim)
        self.text_tower = text_tower
        self.text_head = EmbeddingHead(text_tower.width, embed_dim)
        self.logit_scale = LogitScale()

    def _video(self, frames: torch.Tensor) -> tuple[torch.Tensor, VideoTokens]:
        video = self.tokenizer(frames)
        states = self.transformer(video.tokens, video.mask)
        return self.video_head(states[:, 0]), video

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, E) normalised video embeddings (evaluation: retrieval, zero-shot classification)."""
        return self._video(frames)[0]

    def encode_text(self, text_tokens: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """(B, E) normalised text embeddings of token ids (B, L) with their mask (B, L)."""
        return self.text_head(self.text_tower(text_tokens, text_mask))

    def forward(
        self,
        frames: torch.Tensor,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Frames: ImageNet-normalised float (B, T, 3, H, W), images as T = 1. Text optional."""
        if (text_tokens is None) != (text_mask is None):
            raise ValueError("text_tokens and text_mask go together")
        video_embedding, video = self._video(frames)
        batch, length = video.tokens.shape[:2]
        token_mask = video.mask
        if token_mask is None:
            token_mask = torch.ones(batch, length, dtype=torch.bool, device=video.tokens.device)
        segmentation = video.segmentation
        return ModelOutput(
            video_embedding=video_embedding,
            text_embedding=None if text_tokens is None else self.encode_text(text_tokens, text_mask),
            logit_scale=self.logit_scale(),
            seg_logits=None if segmentation is None else segmentation.logits,
            seg_grid=None if segmentation is None else segmentation.grid,
            token_mask=token_mask,
            num_tokens=token_mask.sum(dim=-1),
        )

    def parts(self) -> dict[str, nn.Module]:
        """Named parts, for parameter counts and per-part learning rates."""
        return {
            **self.tokenizer.parts(),
            "transformer": self.transformer,
            "clip_heads": nn.ModuleList([self.video_head, self.text_head, self.logit_scale]),
            "text_tower": self.text_tower,
        }
