"""Trajectory label maps: the codec, the validator, and the geometry they share with frames.

A label map is a uint16 array (T, H, W): 0 means unlabeled, every other value is one trajectory and keeps
its id in every frame it appears in. It is stored as a compressed `.npz` with the key `labels`.

Geometry convention (pixel centres): pixel (y, x) covers the square [y, y+1) x [x, x+1) and its centre is
(y + 0.5, x + 0.5). Resizing an axis of length L to l maps output pixel i onto source [i*L/l, (i+1)*L/l);
labels take the source pixel that holds the output centre (nearest-exact), frames are averaged over that
interval (area) when shrinking or interpolated at that centre (bilinear, half-pixel) when growing. Crops
are integer `Box`es applied by plain slicing. `resize_frames` and `resize_labels` (and the crop pair)
therefore keep a pixel of a frame and its label at the same place, which the segmentation loss relies on.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from trajtok.errors import LabelFormatError

LABELS_KEY = "labels"
LABEL_DTYPE = np.uint16
MAX_TRAJECTORIES = int(np.iinfo(LABEL_DTYPE).max)


def count_trajectories(labels: np.ndarray) -> int:
    """Number of distinct non-zero ids, counted over the map's runs of equal ids (a label map is piecewise
    constant: 2.5x faster than over every pixel, measured on 16 x 256 x 340 maps)."""
    flat = labels.ravel()
    run_starts = np.empty(flat.size, dtype=bool)
    run_starts[:1] = True
    np.not_equal(flat[1:], flat[:-1], out=run_starts[1:])
    return int(np.count_nonzero(np.bincount(flat[run_starts])[1:]))


def validate_labels(
    labels: object,
    name: str = "labels",
    *,
    num_frames: int | None = None,
    frame_size: tuple[int, int] | None = None,
    max_trajectories: int | None = None,
) -> None:
    """Raise `LabelFormatError` naming `name` unless `labels` follows the label contract.

    `num_frames` and `frame_size` (H, W) are what the frames of the clip say; a map of shape (T, W, H)
    is reported as transposed, the defect seen in masks saved by the public TrajViT code.
    """
    if not isinstance(labels, np.ndarray):
        raise LabelFormatError(f"{name}: expected a numpy array, got {type(labels).__name__}")
    if labels.dtype != LABEL_DTYPE:
        raise LabelFormatError(f"{name}: expected dtype uint16, got {labels.dtype}")
    if labels.ndim != 3 or 0 in labels.shape:
        raise LabelFormatError(f"{name}: expected a non-empty (T, H, W) array, got shape {labels.shape}")
    t, h, w = labels.shape
    if num_frames is not None and t != num_frames:
        raise LabelFormatError(f"{name}: has {t} frames, the clip has {num_frames}")
    if frame_size is not None and (h, w) != tuple(frame_size):
        fh, fw = frame_size
        hint = " (transposed: saved as W x H)" if (w, h) == (fh, fw) else ""
        raise LabelFormatError(f"{name}: frames are {h}x{w} (HxW), the clip's are {fh}x{fw}{hint}")
    if max_trajectories is not None:
        n = count_trajectories(labels)
        if n > max_trajectories:
            raise LabelFormatError(f"{name}: {n} trajectories, more than the cap of {max_trajectories}")


def encode_labels(labels: np.ndarray, name: str = "labels") -> bytes:
    """Validated label map -> compressed `.npz` bytes (key `labels`).

    The bytes depend on the labels alone (numpy writes zip entries with a fixed 1980 time stamp), so a
    rerun of a pipeline job writes identical shards; a test guards this.
    """
    validate_labels(labels, name)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{LABELS_KEY: labels})
    return buffer.getvalue()


def decode_labels(data: bytes, name: str = "labels.npz") -> np.ndarray:
    """`.npz` bytes -> validated label map; anything else is a `LabelFormatError` naming `name`."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if LABELS_KEY not in npz.files:
                raise LabelFormatError(f"{name}: no '{LABELS_KEY}' array (has {sorted(npz.files)})")
            labels = npz[LABELS_KEY]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise LabelFormatError(f"{name}: not a readable .npz file ({err})") from None
    validate_labels(labels, name)
    return labels


def save_labels(path: str | Path, labels: np.ndarray) -> Path:
    """Write a label map as a compressed `.npz` file."""
    path = Path(path)
    data = encode_labels(labels, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def load_labels(path: str | Path) -> np.ndarray:
    """Read and validate a label map written by `save_labels`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise LabelFormatError(f"{path}: cannot read ({err.strerror or err})") from None
    return decode_labels(data, str(path))


def relabel(labels: np.ndarray) -> np.ndarray:
    """Consecutive ids 1..N in order of first appearance in a (t, y, x) scan; 0 stays 0.

    Makes maps from different labelers comparable and keeps ids small after crops drop trajectories.
    Frame by frame, only the pixels of ids not seen before are sorted, so a typical clip costs little
    more than one bincount per frame.
    """
    k = int(labels.max()) + 1
    seen = np.zeros(k, dtype=bool)
    seen[0] = True
    new_ids = []
    for frame in labels:
        flat = frame.ravel()
        new = (np.bincount(flat, minlength=k) > 0) & ~seen
        if new.any():
            values = flat[new[flat]]
            ids, first = np.unique(values, return_index=True)
            new_ids.append(ids[np.argsort(first)])
            seen |= new
    lut = np.zeros(k, dtype=LABEL_DTYPE)
    if new_ids:
        order = np.concatenate(new_ids)
        lut[order] = np.arange(1, len(order) + 1, dtype=LABEL_DTYPE)
    return np.take(lut, labels)


@dataclass(frozen=True)
class TrajectoryStats:
    """Per-trajectory facts of a label map, one row per id (ascending)."""

    ids: np.ndarray  # (N,) uint16
    frame_area: np.ndarray  # (N, T) pixels of the trajectory in each frame

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def presence(self) -> np.ndarray:
        """(N, T) bool: the trajectory has at least one pixel in that frame."""
        return self.frame_area > 0

    @property
    def frames_present(self) -> np.ndarray:
        """(N,) number of frames the trajectory appears in."""
        return self.presence.sum(axis=1)

    @property
    def area(self) -> np.ndarray:
        """(N,) pixels over the whole clip."""
        return self.frame_area.sum(axis=1)


def trajectory_stats(labels: np.ndarray) -> TrajectoryStats:
    """Frames present and area of every trajectory, from one bincount per frame."""
    k = int(labels.max()) + 1
    per_frame = np.stack([np.bincount(frame.ravel(), minlength=k) for frame in labels])
    ids = np.flatnonzero(per_frame[:, 1:].any(axis=0)) + 1
    return TrajectoryStats(ids=ids.astype(LABEL_DTYPE), frame_area=per_frame[:, ids].T.copy())


# --- geometry shared by frames and labels -------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """A crop window in whole pixels: rows [top, top + height), columns [left, left + width)."""

    top: int
    left: int
    height: int
    width: int

    def check_inside(self, height: int, width: int) -> None:
        if self.top < 0 or self.left < 0 or self.height < 1 or self.width < 1:
            raise ValueError(f"{self} is empty or starts outside the image")
        if self.top + self.height > height or self.left + self.width > width:
            raise ValueError(f"{self} does not fit in a {height}x{width} image")


def center_crop_box(height: int, width: int, size: int | tuple[int, int]) -> Box:
    """The centred (h, w) window of a height x width image (odd margins leave the extra pixel at the end)."""
    h, w = (size, size) if isinstance(size, int) else size
    box = Box((height - h) // 2, (width - w) // 2, h, w)
    box.check_inside(height, width)
    return box


def short_side_size(height: int, width: int, short_side: int, multiple: int = 1) -> tuple[int, int]:
    """(h, w) with the short side equal to `short_side` and the aspect ratio kept, each rounded to
    `multiple` (2 for H.264 yuv420p)."""
    scale = short_side / min(height, width)

    def fit(n: int) -> int:
        return max(multiple, int(round(n * scale / multiple)) * multiple)

    return fit(height), fit(width)


def crop_labels(labels: np.ndarray, box: Box) -> np.ndarray:
    """Crop (T, H, W) labels to `box`, the same slice `crop_frames` takes."""
    box.check_inside(*labels.shape[1:3])
    return labels[:, box.top : box.top + box.height, box.left : box.left + box.width]


def crop_frames(frames: np.ndarray, box: Box) -> np.ndarray:
    """Crop (T, H, W, C) frames to `box`, the same slice `crop_labels` takes."""
    box.check_inside(*frames.shape[1:3])
    return frames[:, box.top : box.top + box.height, box.left : box.left + box.width]


def _nearest_source_index(src: int, dst: int) -> np.ndarray:
    """For each output pixel, the source pixel that contains its centre."""
    return np.minimum(((np.arange(dst) + 0.5) * (src / dst)).astype(np.int64), src - 1)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-exact resize of (T, H, W) labels to (h, w): ids are never blended into new ids."""
    h, w = size
    rows = _nearest_source_index(labels.shape[1], h)
    cols = _nearest_source_index(labels.shape[2], w)
    return labels[:, rows[:, None], cols[None, :]]


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (T, H, W, C) uint8 frames to (h, w) on the same pixel grid as `resize_labels`.

    Area averaging when shrinking (no aliasing), half-pixel bilinear when growing.
    """
    h, w = size
    src_h, src_w = frames.shape[1:3]
    if (h, w) == (src_h, src_w):
        return frames.copy()
    shrinking = h <= src_h and w <= src_w
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    out = np.empty((frames.shape[0], h, w, *frames.shape[3:]), dtype=frames.dtype)
    for i, frame in enumerate(frames):
        out[i] = cv2.resize(frame, (w, h), interpolation=interpolation).reshape(out.shape[1:])
    return out
