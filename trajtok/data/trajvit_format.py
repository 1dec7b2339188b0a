"""Import of TrajViT/TrajTok label sidecars into our label map.

The public TrajViT/TrajTok code stores, next to each video `clip.mp4`:
- `clip_mask.npz`, key `arr_0`: per-frame id maps (T, H, W) (uint8 there); in frame t the value v > 0 is
  the v-th segment of that frame, 0 is background. Images have a single (H, W) map and no graph.
- `clip_graph.npz`, key `tensor`: an (M, T) integer array; row m lists, for each frame t, the per-frame id
  that trajectory m has there (0 = absent).
A `_short` suffix on the video name is dropped when the sidecar names are formed, and a version string
may follow `_mask`/`_graph`.

Two defects of that code are handled here. Per-frame maps were made by summing the binary masks of a
frame times their ids, so where masks overlap a pixel holds a sum that is no segment of that frame; such
pixels are detected (their value is not in the graph's column for that frame) and resolved, never passed
on. A sum that happens to equal another valid id, or that wrapped past 255 in uint8, cannot be told
from a real id; those pixels keep that id. Masks were also saved with H and W swapped for non-square
videos; given the clip's frame size this is reported as a `LabelFormatError` (it cannot be seen for
square frames), while masks stored at another resolution of the same picture are resized to the frames.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from trajtok.data.labels import MAX_TRAJECTORIES, relabel, resize_labels
from trajtok.errors import LabelFormatError

MASK_KEY = "arr_0"
GRAPH_KEY = "tensor"
OVERLAP_POLICIES = ("nearest", "unlabel")
MAX_PER_FRAME_ID = 1 << 20  # bounds the (T, id) lookup table


@dataclass(frozen=True)
class TrajViTLabels:
    """A converted sidecar pair and what the conversion had to repair."""

    labels: np.ndarray  # (T, H, W) uint16, ids 1..N in order of first appearance
    resolved_pixels: int  # pixels whose per-frame id was in no trajectory (summed overlaps)
    unknown_ids: tuple[int, ...]  # the per-frame values that were in no trajectory
    empty_trajectories: int  # graph rows that own no pixel of the result (dropped)


def sidecar_paths(video: str | Path, version: str = "") -> tuple[Path, Path]:
    """(`<stem>_mask<version>.npz`, `<stem>_graph<version>.npz`) beside a video, as TrajViT names them."""
    video = Path(video)
    stem = re.sub(r"_short$", "", video.stem)
    return (
        video.with_name(f"{stem}_mask{version}.npz"),
        video.with_name(f"{stem}_graph{version}.npz"),
    )


def load_trajvit(
    mask_path: str | Path,
    graph_path: str | Path | None = None,
    *,
    frame_size: tuple[int, int] | None = None,
    overlap: str = "nearest",
) -> TrajViTLabels:
    """Read a `_mask.npz` (and for videos its `_graph.npz`) and convert it; see `convert_trajvit`."""
    masks = _read_npz_array(Path(mask_path), MASK_KEY)
    graph = None if graph_path is None else _read_npz_array(Path(graph_path), GRAPH_KEY)
    return convert_trajvit(masks, graph, name=str(mask_path), frame_size=frame_size, overlap=overlap)


def convert_trajvit(
    masks: np.ndarray,
    graph: np.ndarray | None = None,
    *,
    name: str = "masks",
    frame_size: tuple[int, int] | None = None,
    overlap: str = "nearest",
) -> TrajViTLabels:
    """Per-frame id maps + trajectory graph -> one label map with ids kept over time.

    `graph` may be None only for an image mask (H, W) or (1, H, W): each segment is then a trajectory.
    `overlap` says what a pixel whose value is in no trajectory becomes: "nearest" takes the label of
    the nearest valid pixel of the same frame (overlaps lie where dilated masks meet, so this is one of
    the overlapping trajectories, or unlabeled), "unlabel" sets it to 0. `frame_size` (H, W) is the size
    of the clip's frames: masks of the same aspect ratio at another resolution are resized to it
    (nearest-exact, `resize_labels`), transposed or otherwise shaped masks are a `LabelFormatError`.
    """
    if overlap not in OVERLAP_POLICIES:
        raise ValueError(f"overlap must be one of {OVERLAP_POLICIES}, got {overlap!r}")
    masks = _check_masks(masks, name)
    if graph is None:
        if masks.shape[0] != 1:
            raise LabelFormatError(f"{name}: a video mask of {masks.shape[0]} frames needs its _graph.npz")
        graph = np.unique(masks[masks > 0])[:, None]
    graph = _check_graph(graph, masks.shape[0], name)
    resize = _needs_resize(masks, frame_size, name)

    t = masks.shape[0]
    k = int(max(masks.max(initial=0), graph.max(initial=0))) + 1
    if k > MAX_PER_FRAME_ID:
        raise LabelFormatError(f"{name}: per-frame id {k - 1} is implausibly large for a segment index")
    lookup = np.full((t, k), -1, dtype=np.int64)  # per-frame id -> graph row + 1; -1 = in no trajectory
    lookup[:, 0] = 0
    rows, frames = np.nonzero(graph)
    lookup[frames, graph[rows, frames]] = rows + 1
    mapped = lookup[np.arange(t)[:, None, None], masks]

    unknown = mapped < 0
    resolved = int(np.count_nonzero(unknown))
    unknown_ids = tuple(int(v) for v in np.unique(masks[unknown]))
    if resolved:
        _resolve(mapped, unknown, overlap)
    labels = mapped.astype(np.uint16)
    if resize:
        labels = resize_labels(labels, frame_size)
    labels = relabel(labels)
    empty = graph.shape[0] - int(labels.max(initial=0))
    return TrajViTLabels(labels, resolved, unknown_ids, empty)


def _resolve(mapped: np.ndarray, unknown: np.ndarray, overlap: str) -> None:
    if overlap == "unlabel":
        mapped[unknown] = 0
        return
    for t in np.flatnonzero(unknown.any(axis=(1, 2))):
        bad = unknown[t]
        if bad.all():  # nothing valid in this frame to borrow from
            mapped[t] = 0
            continue
        iy, ix = ndimage.distance_transform_edt(bad, return_distances=False, return_indices=True)
        mapped[t][bad] = mapped[t][iy[bad], ix[bad]]


def _read_npz_array(path: Path, key: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if key not in npz.files:
                raise LabelFormatError(f"{path}: no '{key}' array (has {sorted(npz.files)})")
            return npz[key]
    except FileNotFoundError:
        raise LabelFormatError(f"{path}: file not found") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise LabelFormatError(f"{path}: not a readable .npz file ({err})") from None


def _check_masks(masks: np.ndarray, name: str) -> np.ndarray:
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or 0 in masks.shape:
        raise LabelFormatError(f"{name}: expected per-frame id maps (T, H, W), got shape {masks.shape}")
    if masks.dtype == bool or not np.issubdtype(masks.dtype, np.integer):
        raise LabelFormatError(f"{name}: expected integer ids, got dtype {masks.dtype}")
    if masks.min() < 0:
        raise LabelFormatError(f"{name}: negative ids")
    return masks.astype(np.int64, copy=False)


def _check_graph(graph: np.ndarray, num_frames: int, name: str) -> np.ndarray:
    if graph.ndim != 2 or not np.issubdtype(graph.dtype, np.integer):
        raise LabelFormatError(
            f"{name}: graph must be an (M, T) integer array, got {graph.shape} {graph.dtype}"
        )
    if graph.shape[1] != num_frames:
        if graph.shape[0] == num_frames:
            raise LabelFormatError(
                f"{name}: graph is {graph.shape}, i.e. (T, M) (transposed); expected (M, T)"
            )
        raise LabelFormatError(f"{name}: graph covers {graph.shape[1]} frames, the mask has {num_frames}")
    if graph.size and graph.min() < 0:
        raise LabelFormatError(f"{name}: graph has negative ids")
    if graph.shape[0] > MAX_TRAJECTORIES:
        raise LabelFormatError(f"{name}: graph has {graph.shape[0]} trajectories, more than uint16 ids allow")
    by_frame = np.sort(graph, axis=0)
    clash = (by_frame[1:] == by_frame[:-1]) & (by_frame[1:] > 0)
    if clash.any():
        row, t = np.argwhere(clash)[0]
        raise LabelFormatError(
            f"{name}: graph gives per-frame id {by_frame[row + 1, t]} of frame {t} to two trajectories"
        )
    return graph.astype(np.int64, copy=False)


def _needs_resize(masks: np.ndarray, frame_size: tuple[int, int] | None, name: str) -> bool:
    """Whether the masks must be resized to the frames; a transposed or differently shaped mask is an error.

    Masks are often stored at the resolution the public pipeline ran at, while our frames have their own
    short side: same aspect ratio (to a pixel or two of rounding) means same picture.
    """
    if frame_size is None:
        return False
    h, w = masks.shape[1:]
    fh, fw = frame_size
    if (h, w) == (fh, fw):
        return False

    def same_aspect(a: int, b: int) -> bool:  # a mask a x b, scaled to the frames' height, is fw wide
        return abs(b * fh / a - fw) <= max(2.0, 0.01 * fw)

    if h != w and ((h, w) == (fw, fh) or (same_aspect(w, h) and not same_aspect(h, w))):
        raise LabelFormatError(
            f"{name}: mask is {h}x{w} but the frames are {fh}x{fw} (HxW): saved transposed"
        )
    if not same_aspect(h, w):
        raise LabelFormatError(f"{name}: mask is {h}x{w}, not the shape of the {fh}x{fw} (HxW) frames")
    return True
