"""The `trajtok` labeller: a trained TrajTok segmenter labels clips for the next round of training.

It loads a `segmenter` or `trajvit2` run (its directory or its weights.safetensors) and, per clip:
1. resizes the frames to `input_scale` times the short side the model was trained at (the run's
   clip.size; both sides multiples of 8), ImageNet-normalised as in training. Labelling is offline, so the
   default spends 4x the compute of the training size for a 2x finer grid: measured on held-out synthetic
   clips of both generators, mean best overlap rises with it (BENCHMARKS.md, Self-labelling);
2. segments windows of the frames the model was trained on (`window_frames`, default the run's
   clip.frames, or trajvit2's `segment_chunk_frames`), batched `batch_size` windows at a time on the
   device (a GPU when there is one), windows linked by IoU on their shared frame
   (`trajtok.data.label_windows`);
3. brings each frame's assignment logits (1/4 of the input) to the clip's own resolution by bilinear
   interpolation *before* the argmax, so boundaries fall between input pixels, not on a 4-pixel grid;
4. merges every trajectory smaller than `min_area` of the clip's pixels into the trajectory it shares the
   most boundary with (one that touches none stays), then the smallest until at most
   `pseudolabel.max_trajectories` remain, and numbers the ids 1..N by size (1 the largest).

`describe()` records where the model came from (weights path, MLflow run id, step, sha256 of the weights
file, git revision of the training run), so every shard sample says which model labelled it, and a new
model changes the job's settings digest (its shards are then written again, not mixed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from pseudolabel.base import DEFAULT_MAX_TRAJECTORIES, Labeler, Requirements
from pseudolabel.cleanup import merge_small, renumber_by_size
from trajtok.data.label_windows import DEFAULT_LINK_IOU, link_windows, window_starts
from trajtok.data.labels import resize_frames, short_side_size
from trajtok.errors import ConfigError
from trajtok.rundir import PROVENANCE_FILE, read_run_id

SEGMENTING_MODELS = ("segmenter", "trajvit2")
INPUT_MULTIPLE = 8  # input sides: the backbone's 1/4 grid, 2x2-pooled by the Perceivers' pooled read


@dataclass
class TrajTokParams:
    weights: str = ""  # a finished `segmenter` or `trajvit2` run directory, or its weights.safetensors
    device: str = "auto"  # auto (cuda when present) | cuda | cpu
    batch_size: int = 8  # windows per forward pass
    window_frames: int = 0  # frames per window; 0 = what the model was trained on
    input_scale: float = 2.0  # short side the model sees, as a multiple of the run's clip.size
    link_iou: float = DEFAULT_LINK_IOU  # overlap on a shared frame that continues a trajectory
    min_area: float = 0.002  # trajectories below this share of the clip's pixels merge into a neighbour


class TrajTokLabeler(Labeler):
    name = "trajtok"
    version = "1"
    Params = TrajTokParams

    def __init__(
        self, params: dict[str, Any] | None = None, max_trajectories: int = DEFAULT_MAX_TRAJECTORIES
    ):
        super().__init__(params, max_trajectories)
        p = self.params
        self.weights = _weights_path(p.weights)
        with safe_open(str(self.weights), framework="pt") as f:
            metadata = f.metadata() or {}
        try:
            model_cfg, clip_cfg = json.loads(metadata["model"]), json.loads(metadata["clip"])
        except (KeyError, ValueError):
            raise ConfigError(
                f"pseudolabel.params.weights: {self.weights} is not a trajtok weights file"
            ) from None
        if model_cfg.get("name") not in SEGMENTING_MODELS:
            raise ConfigError(
                f"pseudolabel.params.weights: {self.weights} holds a '{model_cfg.get('name')}' model, which "
                f"makes no trajectories (a {' or '.join(SEGMENTING_MODELS)} run is needed)"
            )
        problems = {
            "batch_size": p.batch_size < 1,
            "window_frames": p.window_frames < 0 or p.window_frames == 1,  # windows share a frame
            "input_scale": p.input_scale <= 0,
        }
        for key, wrong in problems.items():
            if wrong:
                raise ConfigError(f"pseudolabel.params.{key}: {getattr(p, key)} is out of range")
        trained = model_cfg.get("segment_chunk_frames") or clip_cfg["frames"]
        self.window = p.window_frames or max(trained, 2)  # a model trained on images still links pairs
        self.size = max(INPUT_MULTIPLE, round(clip_cfg["size"] * p.input_scale))
        self.source = _source(self.weights, metadata, model_cfg["name"])
        self._model = None  # loaded on first use, in the worker that labels
        self._device = None

    @property
    def requirements(self) -> Requirements:
        return Requirements(device="gpu", batch_size=self.params.batch_size, memory_gb=2.0)  # estimated

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "source": self.source}

    def _label(self, frames: np.ndarray, timestamps: np.ndarray, source: str | None) -> np.ndarray:
        return self._label_clips([frames])[0]

    def _label_batch(self, clips: list[tuple[np.ndarray, np.ndarray, str | None]]) -> list[np.ndarray]:
        """All windows of all clips through the model `batch_size` at a time, then each clip's map."""
        return self._label_clips([frames for frames, _, _ in clips])

    def _label_clips(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        starts = [window_starts(len(frames), self.window) for frames in clips]
        shapes: dict[tuple[int, ...], list[tuple[int, int]]] = {}
        for i, frames in enumerate(clips):  # windows of one input shape share a forward pass
            for start in starts[i]:
                window = frames[start : start + self.window]
                shapes.setdefault(window.shape, []).append((i, start))
        ids: dict[tuple[int, int], np.ndarray] = {}
        for group in shapes.values():
            for first in range(0, len(group), self.params.batch_size):
                part = group[first : first + self.params.batch_size]
                batch = [clips[i][start : start + self.window] for i, start in part]
                ids.update(zip(part, self._segment(batch)))
        out = []
        for i, clip_starts in enumerate(starts):
            labels = link_windows([ids[i, s] for s in clip_starts], clip_starts, self.params.link_iou)
            labels = merge_small(labels, self.params.min_area, self.max_trajectories)
            out.append(renumber_by_size(labels))
        return out

    def _segment(self, batch: list[np.ndarray]) -> Iterator[np.ndarray]:
        """(T, H, W) ids 1..K of each window (T, H, W, 3) of one shape, at that shape."""
        import torch

        from trajtok.data.normalise import normalise_frames
        from trajtok.models.trajectory_reader import segmentation_of

        model, device = self._loaded()
        height, width = batch[0].shape[1:3]
        size = short_side_size(height, width, self.size, INPUT_MULTIPLE)
        frames = torch.from_numpy(np.stack([resize_frames(w, size) for w in batch])).permute(0, 1, 4, 2, 3)
        with torch.inference_mode(), _autocast(device):
            segmentation = segmentation_of(model, normalise_frames(frames, device))
        grid = segmentation.grid
        logits = segmentation.logits.float().view(len(batch), *grid, -1).permute(0, 1, 4, 2, 3)
        for window in logits:  # (T, K, h, w): one frame at a time keeps K x H x W floats small
            ids = [_upsample(frame, (height, width)).argmax(dim=0) for frame in window]
            yield (torch.stack(ids) + 1).cpu().numpy()

    def _loaded(self):
        if self._model is None:
            import torch

            from trajtok.models.weights import load_weights

            device = self.params.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self._device = torch.device(device)
            self._model = load_weights(self.weights)[0].eval().to(self._device)
        return self._model, self._device


def _weights_path(location: str) -> Path:
    if not location:
        raise ConfigError(
            "pseudolabel.params.weights: the trajtok labeller needs a trained run or weights file"
        )
    from trajtok.models.weights import weights_file

    return weights_file(location, "pseudolabel.params.weights").resolve()


def _source(weights: Path, metadata: dict[str, str], model: str) -> dict[str, Any]:
    """Which model labels: file, MLflow run, step, content digest, and the training run's git revision."""
    with weights.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256")
    provenance = weights.parent / PROVENANCE_FILE
    git = json.loads(provenance.read_text()).get("git", {}) if provenance.is_file() else {}
    return {
        "weights": str(weights),
        "model": model,
        "step": int(metadata.get("step", "-1")),
        "sha256": digest.hexdigest(),
        "mlflow_run_id": read_run_id(weights.parent),
        "git": git,
    }


def _upsample(logits, size: tuple[int, int]):
    """(K, h, w) logits -> (K, H, W), bilinear on the pixel-centre grid the label maps use."""
    import torch.nn.functional as F

    return F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]


def _autocast(device):
    """bfloat16 on CUDA (the segmenter scores its assignment in fp32 under any autocast), fp32 elsewhere."""
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
