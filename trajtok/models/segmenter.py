"""The unified segmenter: K learned queries split a clip's pixels into trajectories in one pass.

Each query owns one region across all frames, so its region is a trajectory and no tracker is needed.
The queries read the dense features through a Perceiver with the features *detached* (the paper's key
ablation, `model.detach_features=false` to undo it: the segmentation stays a grouping of what the backbone
sees, rather than the backbone bending to whatever grouping is easiest); the assignment itself compares
per-pixel and per-query projections by cosine similarity, so the backbone still learns from both losses
through the pixel projection.

The assignment heads (`model.assignment_head`) are the release's by default: D -> 128 -> 64 with a ReLU,
the cosine taken in 64 dimensions; per pixel 1/7 of the work of the D -> D -> D heads (`mlp`) they
replaced. The scale starts at 10, not at the release's softplus(log 16) + 1 = 3.83: over three seeds of
the demo's recipe the softer start lost 7 VEQ points and 8 of mean best overlap (docs/training.md);
`model.logit_scale_init=3.83` gives the release's. The cosine and its scaling run in fp32 whatever the
autocast: in bf16, two queries within 1/128 of each other tie at scale 10 and argmax falls back to index
order.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from trajtok.models.attention import Mlp
from trajtok.models.backbone import ConvNeXtBackbone
from trajtok.models.context import ContextKV
from trajtok.models.output import ModelOutput, TensorRecord
from trajtok.models.perceiver import Perceiver
from trajtok.models.positions import Grid, fourier_features

MAX_LOGIT_SCALE = 20.0
INITIAL_LOGIT_SCALE = 10.0  # both heads' start (the release's is 3.83: see the module docstring)
ASSIGNMENT_HEADS = ("release", "mlp")


def assignment_heads(kind: str, dim: int) -> tuple[nn.Module, nn.Module]:
    """(pixel head, query head) of an `ASSIGNMENT_HEADS` kind."""
    if kind == "release":
        return _release_head(dim), _release_head(dim)
    if kind == "mlp":
        return Mlp(dim, dim), Mlp(dim, dim)
    raise ValueError(f"assignment head '{kind}': choose one of {', '.join(ASSIGNMENT_HEADS)}")


def _full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off (the meta device, which shape-only builds use, has no autocast to turn off)."""
    return contextlib.nullcontext() if device.type == "meta" else torch.autocast(device.type, enabled=False)


def _release_head(dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, 128), nn.ReLU(), nn.Linear(128, 64))


class Segmentation(TensorRecord):
    """A soft and a hard split of T*h*w pixels into K trajectories."""

    logits: torch.Tensor  # (B, T*h*w, K) float: scaled cosine similarities
    soft: torch.Tensor  # (B, T*h*w, K): softmax over K, the differentiable masks
    hard: torch.Tensor  # (B, T*h*w) long: argmax over K, the trajectory id of each pixel
    present: torch.Tensor  # (B, K) bool: trajectories that won at least one pixel
    grid: Grid  # (T, h, w) of the flattened pixel axis
    queries: torch.Tensor | None = None  # (B, K, D): each trajectory's query feature, read by connectors


class Segmenter(nn.Module):
    """Dense features (B, T*h*w, D) -> `Segmentation` with K trajectories."""

    def __init__(
        self,
        dim: int,
        num_queries: int,
        depth: int,
        heads: int,
        rotary: str = "1d",
        detach: bool = True,
        head: str = "release",
        pooled: bool = False,
        reads_context: bool = True,
        initial_scale: float = 0.0,
    ):
        super().__init__()
        self.detach = detach
        self.queries = nn.Parameter(fourier_features(num_queries, dim))
        self.perceiver = Perceiver(dim, depth, heads, rotary, pooled, reads_context)
        self.pixel_head, self.query_head = assignment_heads(head, dim)
        initial_scale = initial_scale or INITIAL_LOGIT_SCALE
        if not 1 < initial_scale <= MAX_LOGIT_SCALE:
            raise ValueError(f"the logit scale starts in (1, {MAX_LOGIT_SCALE}], got {initial_scale}")
        self.scale_param = nn.Parameter(torch.tensor(math.log(math.expm1(initial_scale - 1))))

    @property
    def num_queries(self) -> int:
        return self.queries.shape[0]

    def logit_scale(self) -> torch.Tensor:
        return (F.softplus(self.scale_param) + 1).clamp(max=MAX_LOGIT_SCALE)

    def forward(self, features: torch.Tensor, grid: Grid, context: ContextKV | None = None) -> Segmentation:
        """`context`: keys and values another module computed (shared K/V); else this one reads `features`."""
        if context is None:
            context = self.perceiver.reader(features.detach() if self.detach else features, grid)
        queries = self.queries.expand(features.shape[0], -1, -1)
        latents = self.perceiver(queries, context)
        pixels, queries = self.pixel_head(features), self.query_head(latents)
        with _full_precision(features.device):
            pixels = F.normalize(pixels.float(), dim=-1)
            queries = F.normalize(queries.float(), dim=-1)
            logits = self.logit_scale() * pixels @ queries.transpose(1, 2)
        hard = logits.argmax(dim=-1)
        present = torch.zeros(logits.shape[0], logits.shape[2], dtype=torch.bool, device=logits.device)
        present.scatter_(1, hard, True)
        return Segmentation(logits, logits.softmax(dim=-1), hard, present, grid, latents)


class VideoSegmenter(nn.Module):
    """Backbone + segmenter on frames (B, T, 3, H, W): the `segmenter` model, and TrajViT2's front end.

    TrajViT2 holds one as `tokenizer.segmenter`, so a pre-trained segmenter's state dict loads into it.
    """

    def __init__(self, backbone: ConvNeXtBackbone, head: Segmenter):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def segment(self, frames: torch.Tensor) -> tuple[torch.Tensor, Segmentation]:
        """Dense features (B, T*h*w, D) and their segmentation."""
        features, grid = self.backbone(frames)
        return features, self.head(features, grid)

    def forward(self, frames: torch.Tensor) -> ModelOutput:
        _, segmentation = self.segment(frames)
        return ModelOutput(
            seg_logits=segmentation.logits,
            seg_grid=segmentation.grid,
            token_mask=segmentation.present,
            num_tokens=segmentation.present.sum(dim=-1),
        )

    def parts(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "segmenter": self.head}
