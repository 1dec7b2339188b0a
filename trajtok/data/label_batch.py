"""A batch's label maps as they travel: uint16 ids carried in int16 tensors, read back as int64 ids.

Torch has no comparisons or arithmetic for uint16, and int64 would take four times the bytes through the
loader's shared memory, the pinned buffer and the host-to-device copy. So the loader stacks the maps as the
int16 bits of their uint16 ids (no copy: a view), and whoever reads ids calls `label_ids`, which undoes the
sign (ids 32768-65535 come back as themselves).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from trajtok.data.labels import LABEL_DTYPE

UINT16_MASK = 0xFFFF


def pack_labels(maps: Sequence[np.ndarray]) -> torch.Tensor:
    """(B, T, h, w) int16 holding the uint16 ids of `maps` bit for bit."""
    return torch.from_numpy(np.stack(maps).astype(LABEL_DTYPE, copy=False).view(np.int16))


def label_ids(labels: torch.Tensor) -> torch.Tensor:
    """int64 ids of label maps in any integer dtype; int16 is read as the bits of uint16 (`pack_labels`)."""
    ids = labels.long()
    return ids & UINT16_MASK if labels.dtype == torch.int16 else ids
