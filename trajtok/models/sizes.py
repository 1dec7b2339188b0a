"""Named model sizes: one table, so `size=tiny` means the same network in every job.

`tiny` exists for CPU tests; `paper` is the scale of the TrajTok paper: the tokenizer at ConvNeXt-T stage
widths, D = 512, K = 128 (about 46M parameters, the paper's count) and a ViT-L transformer (1024 x 24, 16
heads), for TrajViT2 and its ViT3D baseline alike. `base` pairs a slightly smaller tokenizer with a ViT-B.
The transformer over the tokens has its own ViT-style names (tiny/S/B/L), so a size can be paired with a
bigger or smaller transformer without new code (`model.transformer`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from trajtok.errors import ConfigError


@dataclass(frozen=True)
class TransformerSize:
    width: int
    depth: int
    heads: int


TRANSFORMER_SIZES: dict[str, TransformerSize] = {
    "tiny": TransformerSize(width=64, depth=2, heads=2),
    "S": TransformerSize(width=384, depth=12, heads=6),
    "B": TransformerSize(width=768, depth=12, heads=12),
    "L": TransformerSize(width=1024, depth=24, heads=16),
}


@dataclass(frozen=True)
class ModelSize:
    """Every width and depth of one named size."""

    stage_widths: tuple[int, int, int, int]  # ConvNeXt stages at 1/4, 1/8, 1/16, 1/32
    stage_depths: tuple[int, int, int, int]
    feature_dim: int  # D: width of the dense features, the segmenter and the trajectory encoder
    num_queries: int  # K: trajectories per clip at most
    perceiver_heads: int
    segmenter_depth: int
    encoder_depth: int
    transformer: str  # a TRANSFORMER_SIZES name
    text: TransformerSize
    embed_dim: int  # joint video-text embedding


MODEL_SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(
        stage_widths=(16, 32, 64, 128),
        stage_depths=(1, 1, 1, 1),
        feature_dim=32,
        num_queries=16,
        perceiver_heads=2,
        segmenter_depth=2,
        encoder_depth=1,
        transformer="tiny",
        text=TransformerSize(width=64, depth=2, heads=2),
        embed_dim=32,
    ),
    "small": ModelSize(
        stage_widths=(48, 96, 192, 384),
        stage_depths=(2, 2, 6, 2),
        feature_dim=256,
        num_queries=64,
        perceiver_heads=4,
        segmenter_depth=2,
        encoder_depth=2,
        transformer="S",
        text=TransformerSize(width=384, depth=6, heads=6),
        embed_dim=256,
    ),
    "base": ModelSize(
        stage_widths=(64, 128, 256, 512),
        stage_depths=(3, 3, 9, 3),
        feature_dim=384,
        num_queries=128,
        perceiver_heads=6,
        segmenter_depth=2,
        encoder_depth=2,
        transformer="B",
        text=TransformerSize(width=512, depth=12, heads=8),
        embed_dim=512,
    ),
    "paper": ModelSize(
        stage_widths=(96, 192, 384, 768),
        stage_depths=(3, 3, 9, 3),
        feature_dim=512,
        num_queries=128,
        perceiver_heads=8,
        segmenter_depth=2,
        encoder_depth=2,
        transformer="L",
        text=TransformerSize(width=512, depth=12, heads=8),
        embed_dim=512,
    ),
}


def resolve_size(size: str, num_queries: int = 0, embed_dim: int = 0, transformer: str = "") -> ModelSize:
    """The named size with the config's overrides (0 or "" keeps the size's default)."""
    if size not in MODEL_SIZES:
        raise ConfigError(f"model.size '{size}': unknown size; choose one of {', '.join(MODEL_SIZES)}")
    if transformer and transformer not in TRANSFORMER_SIZES:
        raise ConfigError(
            f"model.transformer '{transformer}': unknown size; choose one of {', '.join(TRANSFORMER_SIZES)}"
        )
    if num_queries < 0 or embed_dim < 0:
        raise ConfigError("model.num_queries and model.embed_dim must be >= 0 (0 = the size's default)")
    chosen = MODEL_SIZES[size]
    return replace(
        chosen,
        num_queries=num_queries or chosen.num_queries,
        embed_dim=embed_dim or chosen.embed_dim,
        transformer=transformer or chosen.transformer,
    )
