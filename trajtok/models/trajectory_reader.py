"""The TrajTok connector: a trained segmenter's trajectories read another model's feature map.

One mechanism, two uses: TrajAdapter (a probing head over a frozen video model, `trajtok.models.trajadapter`)
and the connector of a vision-language model. Given frames (B, T, 3, H, W) and another model's features
(B, T', h', w', C) of the same clip:
1. the segmenter splits the frames in windows of `chunk_frames` (the release's training length, 8), K
   trajectories per window;
2. each window's assignment logits are brought to that window's part of the foreign grid *before* the
   argmax (`resize_to_grid`: the mean logit of the pixels under a coarser cell, trilinear onto a finer
   one), so a trajectory owns foreign features rather than segmenter pixels; optionally also the share of
   each foreign cell every trajectory covers, for grids so coarse that small trajectories own no cell;
3. optionally (`link_iou` > 0) trajectories are linked across windows by mask IoU between the last foreign
   frame of a window and the first of the next (`trajtok.data.label_windows.link_ids`): a trajectory that
   goes on keeps one identity, one set of tokens reading all its windows, its query the mean of theirs;
4. a trajectory encoder (a Perceiver whose cross-attention is masked so that a token reads only its own
   trajectory's features) makes n tokens per trajectory, each starting from the segmenter's query feature
   of its trajectory plus a Fourier sub-token; a projector brings them to the consumer's width.
Steps 1-3 depend on the frames alone (`trajectories_on_grid`): with a frozen segmenter a probe computes them
once per clip and caches them beside the features.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trajtok.data.label_windows import link_ids
from trajtok.errors import ConfigError
from trajtok.models.output import TensorRecord
from trajtok.models.positions import Grid
from trajtok.models.segmenter import Segmentation
from trajtok.models.trajectory_encoder import TrajectoryEncoder
from trajtok.models.weights import load_weights, weights_file

SEGMENTING_MODELS = ("segmenter", "trajvit2")
DEFAULT_CHUNK_FRAMES = 8


class ForeignTrajectories(TensorRecord):
    """A clip's trajectories on another model's feature grid, as slots 0..M-1 (M = windows x K)."""

    ids: torch.Tensor  # (B, T'*h'*w') long: the slot of each foreign feature
    queries: torch.Tensor  # (B, M, D_seg): each slot's segmenter query feature
    present: torch.Tensor  # (B, M) bool: slots that own at least one feature (or cover one, with coverage)
    grid: Grid  # (T', h', w')
    coverage: torch.Tensor | None = None  # (B, T'*h'*w', M): share of each cell's pixels a slot owns

    @classmethod
    def from_ids(
        cls, ids: torch.Tensor, queries: torch.Tensor, grid: Grid, coverage: torch.Tensor | None = None
    ) -> ForeignTrajectories:
        """`present` from the ids, or from the coverage when there is one (a trajectory too small to own a
        cell still covers part of one)."""
        if coverage is not None:
            present = coverage.sum(dim=1) > 0
        else:
            present = torch.zeros(queries.shape[:2], dtype=torch.bool, device=ids.device)
            present.scatter_(1, ids, True)
        return cls(ids, queries, present, grid, coverage)

    def select(self, index: torch.Tensor | slice) -> ForeignTrajectories:
        """The clips at `index` (a probe's mini-batch)."""
        coverage = self.coverage[index] if self.coverage is not None else None
        return ForeignTrajectories(
            self.ids[index], self.queries[index], self.present[index], self.grid, coverage
        )


def load_segmenting_model(location: str, setting: str) -> nn.Module:
    """A trained `segmenter` or `trajvit2` (run directory or weights file) in eval mode; anything else is a
    one-line ConfigError naming `setting`."""
    model = load_weights(weights_file(location, setting))[0]
    name = getattr(model, "registry_name", "")
    if name not in SEGMENTING_MODELS:
        raise ConfigError(
            f"{setting} '{location}': a '{name}' model makes no trajectories "
            f"(a {' or '.join(SEGMENTING_MODELS)} run is needed)"
        )
    return model.eval()


def query_width(model: nn.Module) -> int:
    """The width of a `segmenter` or `trajvit2` model's trajectory queries (what a reader starts from)."""
    head = model.head if model.registry_name == "segmenter" else model.tokenizer.segmenter.head
    return head.queries.shape[-1]


def segmentation_of(model: nn.Module, frames: torch.Tensor) -> Segmentation:
    """A `segmenter` or `trajvit2` model's segmentation of normalised frames (trajvit2 runs its trajectory
    encoder too only when its segmenter reads the encoder's keys and values)."""
    if model.registry_name == "segmenter":
        return model.segment(frames)[1]
    tokenizer = model.tokenizer
    if tokenizer.shared_kv:
        return tokenizer(frames).segmentation
    return tokenizer.segmenter.segment(frames)[1]


def trajectories_on_grid(
    model: nn.Module,
    frames: torch.Tensor,
    grid: Grid,
    chunk_frames: int = DEFAULT_CHUNK_FRAMES,
    link_iou: float = 0.0,
    coverage: bool = False,
) -> ForeignTrajectories:
    """Steps 1-3 of the module docstring: `model` segments normalised frames (B, T, 3, H, W) in windows of
    `chunk_frames` (0 = one window), each window's logits brought to its T'/windows frames of `grid`.
    `coverage`: also the share of each foreign cell's pixels every trajectory owns (for a reader that
    weights by it instead of reading by ids)."""
    batch, time = frames.shape[:2]
    chunk = min(chunk_frames or time, time)
    foreign_time, height, width = grid
    windows = time // chunk
    if time % chunk or foreign_time % windows:
        raise ValueError(
            f"{time} frames in windows of {chunk} do not map onto {foreign_time} feature frames "
            "(both must split into the same number of windows)"
        )
    segmentation = segmentation_of(model, frames.reshape(batch * windows, chunk, *frames.shape[2:]))
    queries = segmentation.queries.reshape(batch, -1, segmentation.queries.shape[-1])  # (B, W*K, D)
    per_window = segmentation.logits.shape[-1]
    size = (foreign_time // windows, height, width)
    logits = segmentation.logits.float().unflatten(1, segmentation.grid).permute(0, 4, 1, 2, 3)
    offsets = torch.arange(windows, device=frames.device) * per_window
    ids = resize_to_grid(logits, size).argmax(dim=1).view(batch, windows, -1) + offsets[None, :, None]
    ids = ids.view(batch, -1)
    shares = None
    if coverage:
        owned = F.one_hot(logits.argmax(dim=1), per_window).permute(0, 4, 1, 2, 3).float()
        shares = resize_to_grid(owned, size).view(batch, windows, per_window, -1)  # (B, W, K, cells)
        # a window's trajectories cover only that window's cells: block-diagonal (B, W*cells, W*K)
        blocks = torch.eye(windows, device=frames.device)
        shares = torch.einsum("bwkn,wv->bwnvk", shares, blocks).reshape(batch, ids.shape[1], -1)
    if link_iou > 0 and windows > 1:
        slot_of = _linked_slots(ids.view(batch, *grid), windows, link_iou, queries.shape[1])
        ids = slot_of.gather(1, ids)
        queries = _merged(queries, slot_of, mean=True)
        shares = _merged(shares.transpose(1, 2), slot_of, mean=False).transpose(1, 2) if coverage else None
    return ForeignTrajectories.from_ids(ids, queries, grid, shares)


def resize_to_grid(maps: torch.Tensor, size: Grid) -> torch.Tensor:
    """(B, K, t, h, w) -> (B, K, *size): averaged over the pixels under each target cell along axes that
    shrink (logits: every pixel counts, as a cell's mean logit; one-hot masks: the share of the cell each
    owns), trilinear along axes that grow."""
    pooled = tuple(min(have, want) for have, want in zip(maps.shape[2:], size))
    if pooled != tuple(maps.shape[2:]):
        maps = F.adaptive_avg_pool3d(maps, pooled)
    if pooled != tuple(size):
        maps = F.interpolate(maps, size=size, mode="trilinear", align_corners=False)
    return maps


def _linked_slots(ids: torch.Tensor, windows: int, link_iou: float, slots: int) -> torch.Tensor:
    """Window ids (B, T', h', w') -> (B, slots + 1) long: the linked slot of every window id (`slots` for an
    id no feature has; the last column is that spare slot itself)."""
    per_window = ids.shape[1] // windows
    slot_of = np.full((ids.shape[0], slots + 1), slots, np.int64)
    for b, clip in enumerate(ids.cpu().numpy() + 1):  # 1-based: link_ids keeps 0 for "unlabelled"
        first = clip[:per_window]
        lut = np.zeros(slots + 1, np.int64)
        lut[np.unique(first)] = np.unique(first)
        linked_last = first[-1]
        next_id = int(first.max()) + 1
        for w in range(1, windows):
            window = clip[w * per_window : (w + 1) * per_window]
            window_lut = link_ids(linked_last, window, link_iou, next_id)
            used = np.unique(window)
            lut[used] = window_lut[used]
            next_id = max(next_id, int(window_lut.max()) + 1)
            linked_last = window_lut[window[-1]]
        used = np.unique(clip)
        slot_of[b, used - 1] = lut[used] - 1
    return torch.from_numpy(slot_of).to(ids.device)


def _merged(values: torch.Tensor, slot_of: torch.Tensor, mean: bool) -> torch.Tensor:
    """Per-slot rows (B, M, ...) summed (or averaged) into their linked slots; differentiable."""
    batch, slots = values.shape[:2]
    target = slot_of[:, :slots].view(batch, slots, *[1] * (values.dim() - 2)).expand_as(values)
    sums = values.new_zeros(batch, slots + 1, *values.shape[2:]).scatter_add(1, target, values)
    if mean:
        counts = values.new_zeros(batch, slots + 1).scatter_add(
            1, slot_of[:, :slots], values.new_ones(batch, slots)
        )
        sums = sums / counts.clamp_min(1).view(batch, slots + 1, *[1] * (values.dim() - 2))
    return sums[:, :slots]


class TrajectoryReader(nn.Module):
    """Foreign features (B, T', h', w', C) and `ForeignTrajectories` -> tokens (B, M*n, out_dim) and their
    validity mask (B, M*n): step 4 of the module docstring.

    With an encoder built `hard_mask=True` (the release's) a token reads only the features its trajectory
    owns, by id. With `hard_mask=False` it reads every feature its trajectory covers, its attention biased
    by the log of the covered share (`ForeignTrajectories.coverage`): on a foreign grid much coarser than the
    segmenter's, a trajectory smaller than a cell owns none but still covers part of one."""

    def __init__(self, feature_dim: int, query_dim: int, encoder: TrajectoryEncoder, out_dim: int = 0):
        super().__init__()
        dim = encoder.sub_tokens.shape[-1]
        self.features_in = nn.Sequential(nn.Linear(feature_dim, dim), nn.LayerNorm(dim))
        self.queries_in = nn.Sequential(nn.Linear(query_dim, dim), nn.LayerNorm(dim))
        self.encoder = encoder
        self.out = nn.Linear(dim, out_dim) if out_dim else nn.Identity()
        self.width = out_dim or dim

    @property
    def reads_coverage(self) -> bool:
        return not self.encoder.hard_mask

    def forward(
        self, features: torch.Tensor, trajectories: ForeignTrajectories
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(features.shape[1:4]) != tuple(trajectories.grid):
            raise ValueError(f"features {tuple(features.shape)} are not on the grid {trajectories.grid}")
        if self.reads_coverage and trajectories.coverage is None:
            raise ValueError("this reader weights by coverage: compute the trajectories with coverage=True")
        dense = self.features_in(features).flatten(1, 3)
        segmentation = Segmentation(
            None, trajectories.coverage, trajectories.ids, trajectories.present, trajectories.grid
        )
        initial = self.queries_in(trajectories.queries.to(dense.dtype))
        tokens, mask = self.encoder(dense, segmentation, initial=initial)
        return self.out(tokens), mask


class TrajTokConnector(nn.Module):
    """Frames and another model's features -> trajectory tokens: the segmenter (frozen unless `trainable`)
    and a `TrajectoryReader`, for a consumer that trains end to end (a VLM)."""

    def __init__(
        self,
        segmenter: nn.Module,
        reader: TrajectoryReader,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        link_iou: float = 0.0,
        trainable: bool = False,
    ):
        super().__init__()
        self.segmenter, self.reader = segmenter, reader
        self.chunk_frames, self.link_iou = chunk_frames, link_iou
        segmenter.requires_grad_(trainable)

    def forward(self, frames: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The segmenter learns when its parameters require gradients (`trainable`, or set later)."""
        grid = tuple(features.shape[1:4])
        trains = any(p.requires_grad for p in self.segmenter.parameters())
        with torch.set_grad_enabled(trains and torch.is_grad_enabled()):
            trajectories = trajectories_on_grid(
                self.segmenter, frames, grid, self.chunk_frames, self.link_iou, self.reader.reads_coverage
            )
        return self.reader(features, trajectories)
