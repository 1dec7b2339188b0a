"""The learning-rate schedule: linear warm-up, then cosine decay to `train.min_lr` at `train.steps`.

A plain function of the step (nanoGPT's `get_lr`), so a resumed run needs no scheduler state: the step in
the checkpoint is enough.
"""

from __future__ import annotations

import math

from trajtok.config import TrainConfig


def lr_at(step: int, train: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    decay_steps = max(train.steps - train.warmup_steps, 1)
    progress = min((step - train.warmup_steps) / decay_steps, 1.0)
    return train.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (train.lr - train.min_lr)
