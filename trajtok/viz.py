"""Pictures of trajectory label maps: each trajectory tinted in its own colour over its frames.

The colour of a trajectory depends only on its id, so the same trajectory has the same colour in every
frame, in the PNG grid and in the GIF, and in pictures made at different training steps. Used by
`trajtok label`/`trajtok viz` and by training to log the model's own trajectories.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from trajtok.data.labels import resize_labels

_GOLDEN = 0.6180339887498949
BOUNDARY_COLOUR = (255, 255, 255)


def trajectory_colours(ids: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 RGB colour of each id: hues spread by the golden ratio, with alternating brightness
    and saturation so neighbouring ids differ; id 0 (unlabeled) is black."""
    ids = np.asarray(ids, dtype=np.int64)
    hue = (ids * _GOLDEN) % 1.0
    saturation = np.where(ids % 2 == 0, 0.95, 0.7)
    value = np.where((ids // 2) % 2 == 0, 1.0, 0.8)
    rgb = _hsv_to_rgb(hue, saturation, value)
    rgb[ids == 0] = 0
    return np.round(rgb * 255).astype(np.uint8)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    i = np.floor(h * 6).astype(np.int64) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack(
        [np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], 0
    )
    return table[i, np.arange(len(h))]


def overlay_frames(
    frames: np.ndarray, labels: np.ndarray, alpha: float = 0.55, boundaries: bool = True
) -> np.ndarray:
    """(T, H, W, 3) uint8: each frame blended with its trajectories' colours, boundaries in white.

    Labels of another size (the model predicts at 1/4 resolution) are resized to the frames (nearest).
    Unlabeled pixels (id 0) show the frame, dimmed.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    if labels.ndim != 3 or labels.shape[0] != frames.shape[0]:
        raise ValueError(f"labels must be (T, H', W') with T = {frames.shape[0]}, got {labels.shape}")
    if labels.shape[1:] != frames.shape[1:3]:
        labels = resize_labels(labels, frames.shape[1:3])
    ids, inverse = np.unique(labels, return_inverse=True)
    colours = trajectory_colours(ids).astype(np.float32)[inverse.reshape(labels.shape)]
    base = frames.astype(np.float32)
    mix = np.where((labels > 0)[..., None], (1 - alpha) * base + alpha * colours, 0.5 * base)
    out = np.round(mix).astype(np.uint8)
    if boundaries:
        out[boundary_mask(labels)] = BOUNDARY_COLOUR
    return out


def boundary_mask(labels: np.ndarray) -> np.ndarray:
    """(T, H, W) bool: pixels whose right or lower neighbour has another id."""
    edge = np.zeros(labels.shape, bool)
    edge[:, :, :-1] |= labels[:, :, :-1] != labels[:, :, 1:]
    edge[:, :-1, :] |= labels[:, :-1, :] != labels[:, 1:, :]
    return edge


def tile(images: np.ndarray, columns: int | None = None, gap: int = 2) -> np.ndarray:
    """(N, H, W, 3) images -> one (rows*H + gaps, columns*W + gaps, 3) grid, row by row, on black."""
    n, h, w = images.shape[:3]
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3), np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        grid[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = image
    return grid


def overlay_grid(
    frames: np.ndarray, labels: np.ndarray, columns: int | None = None, alpha: float = 0.55
) -> np.ndarray:
    """One (H', W', 3) uint8 picture: the frames of a clip with their trajectories, in a grid."""
    return tile(overlay_frames(frames, labels, alpha), columns)


def comparison_picture(
    frames: np.ndarray,
    label_maps: list[np.ndarray | None],
    frames_shown: int = 4,
    min_size: int = 192,
    alpha: float = 0.3,
) -> np.ndarray:
    """One clip as rows of `frames_shown` evenly spaced frames: the frames, then each label map over them
    (pseudo-label, prediction, ...; None skips a row), upscaled to at least `min_size` px short side, lightly
    tinted with outlines, so a person can see whether a prediction follows the objects."""
    keep = np.unique(np.linspace(0, len(frames) - 1, min(frames_shown, len(frames))).round().astype(int))
    h, w = frames.shape[1:3]
    scale = max(1.0, min_size / min(h, w))
    size = (round(w * scale), round(h * scale))
    shown = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in frames[keep]])
    rows = [shown] + [overlay_frames(shown, ids[keep], alpha) for ids in label_maps if ids is not None]
    return tile(np.concatenate(rows), columns=len(keep))


def stack_pictures(pictures: list[np.ndarray], gap: int = 6) -> np.ndarray:
    """Pictures one above the other on black, separated by `gap` rows (widths may differ)."""
    width = max(p.shape[1] for p in pictures)
    padded = [np.pad(p, ((0, gap), (0, width - p.shape[1]), (0, 0))) for p in pictures]
    return np.concatenate(padded)[:-gap]


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 RGB image as PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG", optimize=True)
    return path


def write_gif(path: str | Path, frames: np.ndarray, fps: float = 4.0) -> Path:
    """Write (T, H, W, 3) uint8 RGB frames as a looping GIF.

    One palette is built from all frames, so a trajectory keeps exactly one colour through the clip.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    strip = Image.fromarray(np.concatenate(list(frames), axis=0))
    palette = strip.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    images[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=round(1000 / max(fps, 0.1)),
        loop=0,
        disposal=1,
    )
    return path
