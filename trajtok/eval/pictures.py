"""Pictures of a model's hard trajectories next to the label maps it learns from, for a person to judge.

Used by training (the fixed held-out clips at every overlay step) and by the `segment` evaluation, so both
draw the same thing: per clip, rows of frames | label map (when there is one) | prediction.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trajtok.data.label_batch import label_ids
from trajtok.data.normalise import normalise_frames
from trajtok.viz import comparison_picture, stack_pictures


def prediction_picture(
    module: nn.Module,
    frames: torch.Tensor,
    labels: torch.Tensor | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> np.ndarray | None:
    """Clips (N, T, 3, H, W) uint8 and their label maps (N, T, h, w) drawn with `module`'s trajectories,
    computed in eval mode without gradients; None if the module makes no trajectories."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(normalise_frames(frames, device, dtype))
    finally:
        module.train(was_training)
    if out.seg_logits is None:
        return None
    predicted = out.trajectory_ids(len(frames)).cpu().numpy()
    pictures = [
        comparison_picture(
            frames[i].permute(0, 2, 3, 1).numpy(),
            [
                None if labels is None else label_ids(labels[i]).numpy().astype(np.uint16),
                predicted[i].astype(np.uint16),
            ],
        )
        for i in range(len(frames))
    ]
    return stack_pictures(pictures)
