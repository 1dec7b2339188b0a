"""A clip longer than a segmenter's window, segmented in windows whose trajectories are linked into one map.

A segmenter trained on clips of W frames is run on windows of W frames; window i+1 starts on the last
frame window i covered, so two windows always share at least one frame (the last window is moved back to
end on the clip's last frame, sharing more). On the first shared frame, a trajectory of the new window
takes the id of the old trajectory it overlaps at IoU >= `link_iou`, one to one (Hungarian matching), and
otherwise a new id: a trajectory that goes on past a window boundary keeps one identity, as the
release's `merge_tracklets` links SAM tracklets. Frames two windows share keep the earlier window's ids.
Used by the `trajtok` labeller, and by `sam2` between its chunks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

DEFAULT_LINK_IOU = 0.5


def window_starts(frames: int, window: int) -> list[int]:
    """First frame of each window of `window` frames covering `frames` frames, consecutive windows sharing
    their boundary frame; one window (starting at 0) when the clip is no longer than a window."""
    if window < 2:
        raise ValueError(f"a window needs at least 2 frames to share one with the next, got {window}")
    if frames <= window:
        return [0]
    starts = list(range(0, frames - window, window - 1))
    return [*starts, frames - window]


def link_ids(previous: np.ndarray, window: np.ndarray, link_iou: float, next_id: int) -> np.ndarray:
    """A lookup table (window id -> linked id): `previous` is the shared frame with the ids given so far,
    `window` (T, H, W) the new window with its own ids, its frame 0 the shared frame (0 = unlabelled in
    both). An id matched one to one on that frame at IoU >= `link_iou` takes the previous id; the window's
    other ids (those that start after the shared frame too) get new ids from `next_id` on, in order."""
    current = window[0]
    new_ids = np.unique(window[window > 0])
    lut = np.zeros(int(new_ids.max(initial=0)) + 1, np.int64)
    old_ids = np.unique(previous[previous > 0])
    linked = np.zeros(len(new_ids), bool)
    if len(old_ids) and len(new_ids):
        old_index = np.searchsorted(old_ids, previous)
        new_index = np.searchsorted(new_ids, current)
        both = (previous > 0) & (current > 0)
        inter = np.zeros((len(new_ids), len(old_ids)))
        np.add.at(inter, (new_index[both], old_index[both]), 1)
        new_area = np.bincount(new_index[current > 0], minlength=len(new_ids))  # 0 for later starters
        old_area = np.bincount(old_index[previous > 0], minlength=len(old_ids))
        iou = inter / np.maximum(new_area[:, None] + old_area[None, :] - inter, 1)
        rows, cols = linear_sum_assignment(iou, maximize=True)
        good = iou[rows, cols] >= link_iou
        lut[new_ids[rows[good]]] = old_ids[cols[good]]
        linked[rows[good]] = True
    lut[new_ids[~linked]] = np.arange(next_id, next_id + np.count_nonzero(~linked))
    return lut


def link_windows(
    windows: Sequence[np.ndarray], starts: Sequence[int], link_iou: float = DEFAULT_LINK_IOU
) -> np.ndarray:
    """One (T, H, W) int64 id map from per-window maps (each (W, H, W) with its own ids, 0 = unlabelled)
    placed at `starts` (as `window_starts` gives them)."""
    if len(windows) != len(starts) or not len(windows):
        raise ValueError(f"{len(windows)} windows for {len(starts)} starts")
    last = starts[-1] + len(windows[-1])
    out = np.zeros((last, *windows[0].shape[1:]), np.int64)
    out[: len(windows[0])] = windows[0]
    next_id = int(out.max(initial=0)) + 1
    covered = len(windows[0])
    for start, window in zip(starts[1:], windows[1:]):
        if start >= covered:
            raise ValueError(f"the window at frame {start} shares no frame with the frames before it")
        lut = link_ids(out[start], window, link_iou, next_id)
        next_id = max(next_id, int(lut.max(initial=0)) + 1)
        out[covered : start + len(window)] = lut[window[covered - start :]]
        covered = start + len(window)
    return out
