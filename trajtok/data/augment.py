"""Clip augmentation for training: one geometry for frames and label maps, colour changes for frames only.

Every random choice is made once per clip, so all frames of a clip (and its trajectory labels) move
together: a trajectory stays one region over time. The geometry runs here, in the loader's workers; the
colour changes are drawn here (seeded per sample) and applied on the training device, batched
(`trajtok.data.colour`). Geometry goes through `trajtok.data.labels`
(`Box`, `crop_*`, `resize_*`), which keeps a pixel of a frame and its label at the same place; labels go
straight to the segmenter's grid (the model predicts at 1/4 of the input), which is the resolution the
segmentation loss compares at, so no full-size label map travels through the loader.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from trajtok.config import DataConfig
from trajtok.data.colour import NO_COLOUR
from trajtok.data.labels import Box, center_crop_box, crop_frames, crop_labels, resize_frames, resize_labels

GRID_STRIDE = 4  # the segmenter predicts at 1/4 of the input size (DESIGN §2)


@dataclass(frozen=True)
class AugmentParams:
    """The knobs of `augment_clip`; built from `DataConfig` by `AugmentParams.from_config`."""

    crop_scale: tuple[float, float] = (0.4, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)
    flip: float = 0.5
    jitter: float = 0.8
    jitter_strength: float = 0.4
    grey: float = 0.1
    blur: float = 0.1

    @classmethod
    def from_config(cls, data: DataConfig) -> AugmentParams:
        return cls(
            crop_scale=(data.crop_scale[0], data.crop_scale[1]),
            crop_ratio=(data.crop_ratio[0], data.crop_ratio[1]),
            flip=data.flip,
            jitter=data.jitter,
            jitter_strength=data.jitter_strength,
            grey=data.grey,
            blur=data.blur,
        )


def label_grid(size: int) -> int:
    """Side of the segmenter's output grid for a square input of `size` pixels."""
    return size // GRID_STRIDE


def random_resized_box(height: int, width: int, params: AugmentParams, rng: np.random.Generator) -> Box:
    """A window covering a random fraction of the area with a random aspect ratio (Inception-style crop).

    After ten draws that do not fit, the largest centred square is taken, as torchvision does.
    """
    area = height * width
    log_ratio = (math.log(params.crop_ratio[0]), math.log(params.crop_ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*params.crop_scale)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            return Box(int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
    side = min(height, width)
    return center_crop_box(height, width, side)


@dataclass(frozen=True)
class Geometry:
    """A clip's crop window and flip, drawn once for its frames and its label map."""

    box: Box
    flip: bool


def draw_geometry(height: int, width: int, params: AugmentParams, rng: np.random.Generator) -> Geometry:
    """The random resized crop, then the flip: the draws `augment_clip` makes, in its order."""
    box = random_resized_box(height, width, params, rng)
    return Geometry(box, bool(rng.random() < params.flip))


def augment_clip(
    frames: np.ndarray,
    labels: np.ndarray | None,
    size: int,
    params: AugmentParams,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(T, H, W, 3) uint8 frames and (T, H, W) labels -> (T, size, size, 3) frames, (T, g, g) labels, and
    the clip's colour row (`trajtok.data.colour.apply_colour` applies it to the frames, on the device).

    g = size // 4. The crop and the flip are shared; jitter, grey and blur touch the frames only.
    """
    geometry = draw_geometry(frames.shape[1], frames.shape[2], params, rng)
    frames = resize_frames(crop_frames(frames, geometry.box), (size, size))
    if geometry.flip:
        for frame in frames:  # a fresh array: flipped in place, 20x faster than numpy's reversed copy
            cv2.flip(frame, 1, dst=frame)
    return frames, place_labels(labels, geometry, size), colour_draws(params, rng)


def place_labels(labels: np.ndarray | None, geometry: Geometry, size: int) -> np.ndarray | None:
    """(T, H, W) labels cropped, resized to the segmenter's grid for a `size` input, and flipped."""
    if labels is None:
        return None
    grid = label_grid(size)
    labels = resize_labels(crop_labels(labels, geometry.box), (grid, grid))
    return np.ascontiguousarray(labels[:, :, ::-1]) if geometry.flip else labels


def center_clip(
    frames: np.ndarray, labels: np.ndarray | None, size: int, labels_on_grid: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """The evaluation view: the centred square of the short side, resized to `size` (labels to the
    segmenter's grid, or to `size` too where a full-resolution map is scored)."""
    box = center_crop_box(frames.shape[1], frames.shape[2], min(frames.shape[1:3]))
    frames = resize_frames(crop_frames(frames, box), (size, size))
    if labels is not None:
        side = label_grid(size) if labels_on_grid else size
        labels = resize_labels(crop_labels(labels, box), (side, side))
    return frames, labels


def colour_draws(params: AugmentParams, rng: np.random.Generator) -> np.ndarray:
    """The clip's colour changes as a `trajtok.data.colour.COLOUR_FIELDS` row, the same draws for every
    frame: whether to jitter, grey and blur, the blur's sigma, the jitter's three factors."""
    jitter = rng.random() < params.jitter
    grey = rng.random() < params.grey
    sigma = rng.uniform(0.1, 2.0) if rng.random() < params.blur else 0.0
    row = NO_COLOUR.copy()
    if jitter:
        s = params.jitter_strength
        row[:4] = (1.0, *rng.uniform(1 - s, 1 + s, size=3))
    row[4:] = (float(grey), sigma)
    return row
