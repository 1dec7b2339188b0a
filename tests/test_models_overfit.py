"""TrajViT2 tiny overfits 8 synthetic clips on CPU: both losses fall and the segmenter finds the objects.

The synthetic ground truth marks the background 0; here it is shifted by one so the background is a
trajectory too, as in the panoptic pseudo-labels the model trains on. Quality is scored with the
pseudo-label issue's metrics against the unshifted ground truth. About 150 steps, 20-30 s on 2 cores.
"""

from __future__ import annotations

import numpy as np
import torch

from trajtok.config import ClipConfig, LossConfig, ModelConfig
from trajtok.data.synth import generate_clip
from trajtok.eval.segmentation import evaluate_segmentation, mean_scores
from trajtok.losses import labels_on_grid, total_loss
from trajtok.models.registry import build_model
from trajtok.models.text import build_tokenizer

STEPS = 150
FRAMES, PX = 8, 64
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1)


def _segmentation_quality(model: torch.nn.Module, frames, ids, mask, truth: torch.Tensor) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        out = model(frames, ids, mask)
    model.train()
    predicted = (out.seg_logits.argmax(-1) + 1).view(-1, *out.seg_grid).numpy()  # 0 would mean unlabeled
    truth = labels_on_grid(truth, out.seg_grid).view(-1, *out.seg_grid).numpy()
    return mean_scores([evaluate_segmentation(p, t) for p, t in zip(predicted, truth)])


def test_trajvit2_tiny_overfits_eight_synthetic_clips() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    clips = [generate_clip(seed, frames=FRAMES, height=PX, width=PX) for seed in range(8)]
    frames = torch.from_numpy(np.stack([c.frames for c in clips])).permute(0, 1, 4, 2, 3).float() / 255
    frames = (frames - IMAGENET_MEAN) / IMAGENET_STD
    truth = torch.from_numpy(np.stack([c.labels for c in clips]).astype(np.int64))
    ids, mask = build_tokenizer("bytes").encode_batch([c.caption for c in clips], 64)
    model = build_model(ModelConfig(name="trajvit2", size="tiny"), ClipConfig(frames=FRAMES, size=PX))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)

    before = _segmentation_quality(model, frames, ids, mask, truth)
    history = []
    for _ in range(STEPS):
        parts = total_loss(model(frames, ids, mask), truth + 1, LossConfig(), mode="joint")
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
        history.append({name: value.item() for name, value in parts.items()})
    after = _segmentation_quality(model, frames, ids, mask, truth)

    first, last = history[0], history[-1]
    assert all(np.isfinite(v) for step in history for v in step.values())
    assert last["contrastive"] < 0.2 * first["contrastive"]
    assert last["focal"] < 0.2 * first["focal"] and last["dice"] < 0.2 * first["dice"]
    assert after["mean_best_overlap"] > before["mean_best_overlap"] + 0.4
    assert after["veq"] > before["veq"] + 0.4 and after["purity"] >= before["purity"]
