"""The weight-free default labeler: superpixels carried through the clip by dense optical flow.

Per shot (a colour-histogram jump starts a new one), the first frame is cut into superpixels that are
merged by colour into at most `target_trajectories` regions, fewer where neighbouring regions look alike
(`merge_tolerance`): the trajectories the shot starts with. Each later frame receives the previous frame's
labels along the backward optical flow; a pixel whose source had another colour (it was hidden, or the flow
is wrong there) receives none. The frame's own superpixels then settle each pixel: it keeps what it received
unless the label most of its superpixel received matches its colour better, which puts boundaries back on
image edges without letting regions creep over plain areas. Superpixels that received mostly nothing
(content coming into view) are merged by colour into the trajectories they look like or into new ones;
trajectories whose pixels all leave end by themselves. Last, trajectories below `min_area` are merged into
the neighbour they share the most boundary with, and then the smallest until at most `max_trajectories`
remain.

All of it runs at a working resolution (`work_size` short side); the map is then resized to the frames.
Each choice (Felzenszwalb superpixels, DIS flow, the colour check, colour-decided snapping) was made by
measurement on synthetic clips with exact ground truth: see BENCHMARKS.md.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from skimage.filters import sobel
from skimage.segmentation import felzenszwalb, slic, watershed

from pseudolabel.base import DEFAULT_MAX_TRAJECTORIES, Labeler, Requirements
from pseudolabel.cleanup import merge_small, roots
from trajtok.data.labels import LABEL_DTYPE, relabel, resize_labels, short_side_size
from trajtok.errors import ConfigError

SUPERPIXELS = ("felzenszwalb", "slic", "watershed")
FLOWS = ("dis", "farneback")


@dataclass
class ClassicalParams:
    target_trajectories: int = 16  # about how many trajectories a shot starts with: the granularity knob
    min_area: float = 0.004  # trajectories below this share of the clip's pixels are merged into a neighbour
    work_size: int = 128  # short side (pixels) the algorithm runs at; labels are resized to the frames
    superpixels: str = "felzenszwalb"  # felzenszwalb | slic | watershed
    superpixel_size: int = 48  # Felzenszwalb's scale; for slic and watershed the area per seed (work pixels)
    flow: str = "dis"  # dis | farneback
    merge_tolerance: float = 14.0  # below the target, regions whose mean colours are this close merge too
    texture_blur: float = 2.0  # Gaussian sigma (work pixels) of colours compared: finer texture is ignored
    colour_tolerance: float = 10.0  # CIELAB distance within which a carried pixel still shows the same thing
    new_content: float = 0.5  # share of a superpixel that received no label which makes it new content
    cut_threshold: float = 0.5  # Hellinger distance of consecutive colour histograms that starts a new shot


class ClassicalLabeler(Labeler):
    name = "classical"
    version = "2"
    Params = ClassicalParams

    def __init__(
        self, params: dict[str, Any] | None = None, max_trajectories: int = DEFAULT_MAX_TRAJECTORIES
    ):
        super().__init__(params, max_trajectories)
        p = self.params
        if p.superpixels not in SUPERPIXELS:
            raise _param_error("superpixels", p.superpixels, SUPERPIXELS)
        if p.flow not in FLOWS:
            raise _param_error("flow", p.flow, FLOWS)
        for key in ("target_trajectories", "work_size", "superpixel_size"):
            if getattr(p, key) < 1:
                raise _param_error(key, getattr(p, key), "a positive integer")

    @property
    def requirements(self) -> Requirements:
        return Requirements(device="cpu", batch_size=1, memory_gb=0.5)

    def _label(self, frames: np.ndarray, timestamps: np.ndarray, source: str | None) -> np.ndarray:
        t, h, w = frames.shape[:3]
        size = short_side_size(h, w, min(self.params.work_size, h, w))
        small = np.stack([cv2.resize(f, size[::-1], interpolation=cv2.INTER_AREA) for f in frames])
        labels = np.zeros((t, *size), np.int64)
        for start, stop in shots(small, self.params.cut_threshold):
            _ShotTracker(self.params, int(labels.max()) + 1).run(small[start:stop], labels[start:stop])
        labels = merge_small(labels, self.params.min_area, self.max_trajectories)
        return relabel(resize_labels(labels.astype(LABEL_DTYPE), (h, w)))


def _param_error(key: str, value: Any, allowed: tuple[str, ...] | str) -> ConfigError:
    choices = ", ".join(allowed) if isinstance(allowed, tuple) else allowed
    return ConfigError(f"pseudolabel.params.{key}: got {value!r}, expected {choices} (labeler 'classical')")


# --- shots -------------------------------------------------------------------------------------------


def shots(frames: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """[start, stop) frame ranges between cuts: consecutive frames whose hue-saturation-value histograms
    differ by more than `threshold` (Hellinger distance, 0 = same, 1 = disjoint) start a new shot."""
    hists = []
    for frame in frames:
        hsv = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV)
        hist = cv2.calcHist([hsv], [0, 1, 2], None, [12, 4, 4], [0, 180, 0, 256, 0, 256])
        hists.append(hist.ravel() / max(hist.sum(), 1.0))
    cuts = [0]
    for i in range(1, len(frames)):
        distance = np.sqrt(max(0.0, 1.0 - float(np.sqrt(hists[i] * hists[i - 1]).sum())))
        if distance > threshold:
            cuts.append(i)
    return list(zip(cuts, [*cuts[1:], len(frames)]))


# --- per-frame pieces ----------------------------------------------------------------------------------


def superpixels(frame: np.ndarray, method: str, size: int) -> np.ndarray:
    """Over-segmentation of one RGB frame into superpixels (ids 0..S-1); `size` sets how coarse."""
    h, w = frame.shape[:2]
    count = max(1, (h * w) // size)
    if method == "felzenszwalb":
        seg = felzenszwalb(frame, scale=size, sigma=0.5, min_size=max(1, size // 3))
    elif method == "slic":
        seg = slic(frame, n_segments=count, compactness=10, start_label=0)
    else:
        gradient = sobel(cv2.cvtColor(frame, cv2.COLOR_RGB2LAB).astype(np.float32)).sum(axis=-1)
        seg = watershed(gradient, markers=count, compactness=1e-3) - 1
    return seg.astype(np.int64)


def _lab(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def _adjacent_pairs(seg: np.ndarray) -> np.ndarray:
    """Unique (a, b), a < b, of ids that touch horizontally or vertically."""
    a = np.concatenate([seg[:, :-1].ravel(), seg[:-1, :].ravel()])
    b = np.concatenate([seg[:, 1:].ravel(), seg[1:, :].ravel()])
    keep = a != b
    lo, hi = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    return np.unique(np.stack([lo, hi], 1), axis=0)


def merge_by_colour(
    seg: np.ndarray, lab: np.ndarray, target: int, fixed: np.ndarray | None = None, tolerance: float = 0.0
) -> np.ndarray:
    """Greedy region merging: repeatedly join the two touching regions whose union adds the least colour
    variance (Ward's criterion: small and similar regions go first) until `target` free regions remain,
    then go on joining touching regions whose mean colours lie within `tolerance` (CIELAB): a plain scene
    ends with fewer regions than a cluttered one.

    `seg` holds region ids 0..S-1. `fixed` (S,) marks regions that never merge with each other (the
    trajectories already in a frame): a free region may join one, which counts as one free region fewer.
    Returns (S,) the id of the region each region ended up in.
    """
    n = int(seg.max()) + 1 if fixed is None else len(fixed)
    size = np.bincount(seg.ravel(), minlength=n).astype(np.float64)
    colour = np.stack([np.bincount(seg.ravel(), lab[..., c].ravel(), minlength=n) for c in range(3)], 1)
    colour /= np.maximum(size, 1)[:, None]
    fixed = np.zeros(n, bool) if fixed is None else fixed.copy()
    parent = np.arange(n)
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for a, b in _adjacent_pairs(seg):
        if not (fixed[a] and fixed[b]):
            neighbours[a].add(b)
            neighbours[b].add(a)

    def cost(a: int, b: int) -> float:
        d = colour[a] - colour[b]
        return float(size[a] * size[b] / (size[a] + size[b]) * (d @ d))

    version = np.zeros(n, np.int64)  # bumped when a region changes, which makes its queued pairs stale
    heap = [(cost(a, b), a, b, 0, 0) for a in range(n) for b in neighbours[a] if a < b]
    heapq.heapify(heap)
    free = int(np.count_nonzero(~fixed & (size > 0)))
    while heap:
        _, a, b, va, vb = heapq.heappop(heap)
        if parent[a] != a or parent[b] != b or version[a] != va or version[b] != vb:
            continue
        if free <= target and np.linalg.norm(colour[a] - colour[b]) > tolerance:
            continue  # unchanged regions are not queued again; a merge that changes one re-queues its pairs
        if fixed[b]:
            a, b = b, a  # a fixed region absorbs a free one and stays fixed
        total = size[a] + size[b]
        colour[a] = (colour[a] * size[a] + colour[b] * size[b]) / total
        size[a], size[b], parent[b] = total, 0, a
        for c in neighbours[b] - {a}:
            neighbours[c].discard(b)
            if not (fixed[a] and fixed[c]):
                neighbours[c].add(a)
                neighbours[a].add(c)
        neighbours[a].discard(b)
        neighbours[b] = set()
        version[a] += 1
        for c in neighbours[a]:
            lo, hi = min(a, c), max(a, c)
            heapq.heappush(heap, (cost(lo, hi), lo, hi, version[lo], version[hi]))
        free -= 1
    return roots(parent)


class _Flow:
    """Dense optical flow between grey frames: `flow(a, b)[y, x]` is where pixel (x, y) of `a` is in `b`."""

    def __init__(self, method: str):
        self.method = method
        if method == "dis":
            self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self.method == "dis":
            return self._dis.calc(a, b, None)
        return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 4, 15, 3, 5, 1.2, 0)


class _ShotTracker:
    """Labels the frames of one shot in place, with new ids starting at `next_id`."""

    def __init__(self, params: ClassicalParams, next_id: int):
        self.p = params
        self.next_id = next_id
        self.flow = _Flow(params.flow)

    def run(self, frames: np.ndarray, out: np.ndarray) -> None:
        h, w = frames.shape[1:3]
        grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), -1)
        previous = None  # (grey, lab) of the frame before
        for i, frame in enumerate(frames):
            grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            lab = _lab(frame)
            if self.p.texture_blur > 0:
                lab = cv2.GaussianBlur(lab, (0, 0), self.p.texture_blur)
            carried = np.zeros((h, w), np.int64)
            if previous is not None:
                coords = grid + self.flow(grey, previous[0])
                carried = _warp(out[i - 1], coords)
                carried[~_same_colour(lab, previous[1], coords, self.p.colour_tolerance)] = 0
            seg = superpixels(frame, self.p.superpixels, self.p.superpixel_size)
            out[i] = self._settle(seg, lab, carried)
            previous = grey, lab

    def _settle(self, seg: np.ndarray, lab: np.ndarray, carried: np.ndarray) -> np.ndarray:
        """Labels of one frame from what it received (`carried`, 0 = nothing) and its superpixels."""
        n = int(seg.max()) + 1
        ids, inverse = np.unique(carried, return_inverse=True)
        inverse = inverse.reshape(carried.shape)
        k = len(ids)
        votes = np.bincount((seg * k + inverse).ravel(), minlength=n * k).reshape(n, k)
        size = np.maximum(votes.sum(axis=1), 1)
        first = int(ids[0] == 0)  # column of the first real label
        nothing = votes[:, 0] if first else np.zeros(n, np.int64)
        new = nothing >= self.p.new_content * size
        if k > first:
            majority = ids[first + votes[:, first:].argmax(axis=1)]
        else:
            majority, new = np.zeros(n, np.int64), np.ones(n, bool)
        out = majority[seg]
        if k > first:
            out = _prefer_carried(out, carried, inverse, ids, lab, new[seg])
        if new.any():
            out[new[seg]] = self._new_content(seg, lab, majority, new, size)[seg][new[seg]]
        return out

    def _new_content(
        self, seg: np.ndarray, lab: np.ndarray, majority: np.ndarray, new: np.ndarray, size: np.ndarray
    ) -> np.ndarray:
        """(S,) labels for the new superpixels: merged by colour, with each other and into the trajectories
        they touch, into about as many regions as their share of the frame is worth; what still does not
        look like a trajectory it touches becomes a new one."""
        n = len(new)
        kept = np.unique(majority[~new])
        node = np.where(new, len(kept) + np.arange(n), np.searchsorted(kept, majority))
        fixed = np.arange(int(node.max()) + 1) < len(kept)
        share = float(size[new].sum()) / float(size.sum())
        target = max(1, round(self.p.target_trajectories * share))
        root = merge_by_colour(node[seg], lab, target, fixed, self.p.merge_tolerance)
        root = _join_lookalikes(root[node[seg]], lab, root, len(kept), self.p.colour_tolerance)[node]
        fresh_roots = np.unique(root[new & (root >= len(kept))])
        lut = np.zeros(len(fixed), np.int64)
        lut[: len(kept)] = kept
        lut[fresh_roots] = np.arange(self.next_id, self.next_id + len(fresh_roots))
        self.next_id += len(fresh_roots)
        return lut[root]


def _prefer_carried(
    out: np.ndarray,
    carried: np.ndarray,
    inverse: np.ndarray,
    ids: np.ndarray,
    lab: np.ndarray,
    new: np.ndarray,
) -> np.ndarray:
    """Where a pixel received a label other than its superpixel's majority, it keeps the one it received
    unless the majority's mean colour is closer to its own: plain areas keep the flow's boundaries, edges
    pull boundaries onto themselves."""
    differ = np.flatnonzero(((carried > 0) & (out != carried) & ~new).ravel())
    if not len(differ):
        return out
    k = len(ids)
    flat = inverse.ravel()
    count = np.maximum(np.bincount(flat, minlength=k), 1)
    mean = (
        np.stack([np.bincount(flat, lab[..., c].ravel(), minlength=k) for c in range(3)], 1) / count[:, None]
    )
    pixels = lab.reshape(-1, 3)[differ]
    to_majority = np.linalg.norm(pixels - mean[np.searchsorted(ids, out.ravel()[differ])], axis=1)
    to_carried = np.linalg.norm(pixels - mean[flat[differ]], axis=1)
    keep = differ[to_majority >= to_carried]
    out.ravel()[keep] = carried.ravel()[keep]
    return out


def _join_lookalikes(
    groups: np.ndarray, lab: np.ndarray, root: np.ndarray, num_fixed: int, tolerance: float
) -> np.ndarray:
    """A free group whose mean colour is within `tolerance` of a trajectory it touches joins it: new
    content that looks like its neighbour (background coming into view) is no new trajectory."""
    n = len(root)
    size = np.maximum(np.bincount(groups.ravel(), minlength=n), 1)
    colour = np.stack([np.bincount(groups.ravel(), lab[..., c].ravel(), minlength=n) for c in range(3)], 1)
    colour /= size[:, None]
    pairs = _adjacent_pairs(groups)
    pairs = np.concatenate([pairs, pairs[:, ::-1]])
    pairs = pairs[(pairs[:, 0] >= num_fixed) & (pairs[:, 1] < num_fixed)]  # (free, fixed)
    if not len(pairs):
        return root
    distance = np.linalg.norm(colour[pairs[:, 0]] - colour[pairs[:, 1]], axis=1)
    order = np.lexsort((distance, pairs[:, 0]))
    first = np.unique(pairs[order, 0], return_index=True)[1]  # the closest trajectory of each free group
    best = order[first]
    close = best[distance[best] <= tolerance]
    lut = np.arange(n)
    lut[pairs[close, 0]] = pairs[close, 1]
    return lut[root]


def _same_colour(lab: np.ndarray, lab_prev: np.ndarray, coords: np.ndarray, tolerance: float) -> np.ndarray:
    """Photometric check: the pixel the flow came from had about the same colour. It catches what was
    hidden in the previous frame (the flow points into the occluder) and flow that failed, and unlike a
    forward-backward check it passes textures where the flow is ambiguous but any answer is as good."""
    there = cv2.remap(
        lab_prev, coords[..., 0], coords[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return np.sum((lab - there) ** 2, axis=-1) <= tolerance**2


def _warp(labels: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Labels sampled at (x, y) coords (nearest); samples from outside the frame are 0 (unlabelled)."""
    warped = cv2.remap(
        labels.astype(np.float32),
        coords[..., 0],
        coords[..., 1],
        cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return np.rint(warped).astype(np.int64)
