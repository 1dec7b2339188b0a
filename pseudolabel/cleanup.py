"""Clean-up every labeller can apply to a finished label map: small trajectories merged into a neighbour,
ids renumbered by size."""

from __future__ import annotations

import numpy as np

from trajtok.data.labels import LABEL_DTYPE


def roots(parent: np.ndarray) -> np.ndarray:
    """Union-find parents -> each element's root."""
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return parent
        parent = grand


def merge_small(labels: np.ndarray, min_area: float, max_trajectories: int) -> np.ndarray:
    """Merge trajectories smaller than `min_area` of the clip, and then the smallest until at most
    `max_trajectories` remain, each into the trajectory it shares the most boundary with."""
    ids, inverse = np.unique(labels, return_inverse=True)
    compact = inverse.reshape(labels.shape)
    k = len(ids)
    area = np.bincount(compact.ravel(), minlength=k).astype(np.int64)
    a = np.concatenate([compact[:, :, :-1].ravel(), compact[:, :-1, :].ravel()])
    b = np.concatenate([compact[:, :, 1:].ravel(), compact[:, 1:, :].ravel()])
    keep = a != b
    touch = np.bincount(a[keep] * k + b[keep], minlength=k * k).reshape(k, k)
    touch = touch + touch.T
    unlabelled = ids == 0
    touch[:, unlabelled] = 0
    parent = np.arange(k)
    alive = ~unlabelled  # trajectories that still exist
    settled = np.zeros(k, bool)  # kept although small: they touch no other trajectory
    dropped = np.zeros(k, bool)
    floor = min_area * labels.size
    while (alive & ~settled).any():
        count = int(np.count_nonzero(alive))
        open_ids = np.flatnonzero(alive & ~settled)
        smallest = open_ids[np.argmin(area[open_ids])]
        if area[smallest] >= floor and count <= max_trajectories:
            break
        alive[smallest] = False
        partner = int(np.argmax(touch[smallest]))
        if touch[smallest, partner] == 0:
            if count <= max_trajectories:
                alive[smallest] = settled[smallest] = True
            else:
                dropped[smallest] = True
            continue
        parent[smallest] = partner
        area[partner] += area[smallest]
        touch[partner] += touch[smallest]
        touch[:, partner] += touch[:, smallest]
        touch[partner, partner] = 0
        touch[smallest] = 0
        touch[:, smallest] = 0
    parent = roots(parent)
    out_ids = np.where(dropped[parent], 0, ids[parent])
    return out_ids[compact]


def renumber_by_size(labels: np.ndarray) -> np.ndarray:
    """uint16 ids 1..N, 1 the trajectory with the most pixels (ties: the lower old id first); 0 stays 0."""
    area = np.bincount(labels.ravel())
    area[0] = 0
    present = np.flatnonzero(area)
    order = present[np.argsort(-area[present], kind="stable")]
    lut = np.zeros(len(area), LABEL_DTYPE)
    lut[order] = np.arange(1, len(order) + 1)
    return lut[labels]
