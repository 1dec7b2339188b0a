"""The `sam2` labeler: SAM 2 automatic masks on key frames, tracked through the clip, chunks linked by IoU.

This is the paper's segment-and-track recipe with SAM 2 doing both parts. The clip is cut into chunks of
`chunk_frames` frames that share their boundary frame. On each chunk's first frame the automatic mask
generator proposes masks (painted largest first, so smaller masks, the parts, stay on top); the video
predictor carries every mask through the chunk. On the frame two chunks share, a trajectory of the new
chunk takes the id of the old one it overlaps at IoU >= `link_iou` (one-to-one), else a new id
(`trajtok.data.label_windows`, the linking the `trajtok` labeller uses too).

It needs the optional `sam2` package (`pip install '.[sam2]'`) and a checkpoint the user provides
(`pseudolabel.params.checkpoint`); nothing is downloaded. `random_weights=true` builds the model from the
package's config without weights: only for checking that the path runs, its labels mean nothing.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pseudolabel.base import DEFAULT_MAX_TRAJECTORIES, Labeler, Requirements, keep_largest
from trajtok.data.label_windows import link_ids
from trajtok.data.labels import LABEL_DTYPE, relabel
from trajtok.errors import ConfigError


@dataclass
class Sam2Params:
    checkpoint: str = ""  # a SAM 2 / 2.1 checkpoint file (.pt) matching `model_config`
    model_config: str = "configs/sam2.1/sam2.1_hiera_t.yaml"  # a config inside the sam2 package
    random_weights: bool = False  # run without a checkpoint (tests only: the labels mean nothing)
    device: str = "auto"  # auto (cuda when present) | cuda | cpu
    chunk_frames: int = 8  # frames per chunk; consecutive chunks share one frame
    points_per_side: int = 16  # the automatic mask generator's grid of point prompts
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.7  # masks the model itself rates below this are dropped
    stability_score_thresh: float = 0.9
    min_mask_area: float = 0.001  # masks smaller than this share of the frame are dropped
    link_iou: float = 0.5  # overlap on the shared frame that continues a trajectory into the next chunk
    hydra_overrides: list[str] = field(default_factory=list)  # extra overrides of the model config


class Sam2Labeler(Labeler):
    name = "sam2"
    version = "2"
    Params = Sam2Params

    def __init__(
        self, params: dict[str, Any] | None = None, max_trajectories: int = DEFAULT_MAX_TRAJECTORIES
    ):
        super().__init__(params, max_trajectories)
        p = self.params
        if not p.random_weights and not p.checkpoint:
            raise ConfigError("pseudolabel.params.checkpoint: the sam2 labeler needs a SAM 2 checkpoint file")
        if p.checkpoint and not Path(p.checkpoint).is_file():
            raise ConfigError(f"pseudolabel.params.checkpoint: {p.checkpoint}: no such file")
        if p.chunk_frames < 2:
            raise ConfigError(f"pseudolabel.params.chunk_frames: must be at least 2, got {p.chunk_frames}")
        self._predictor = None  # built on first use, in the worker that labels

    @property
    def requirements(self) -> Requirements:
        return Requirements(device="gpu", batch_size=1, memory_gb=4.0)

    def _model(self):
        if self._predictor is None:
            import torch
            from sam2.build_sam import build_sam2_video_predictor

            device = self.params.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self._predictor = build_sam2_video_predictor(
                self.params.model_config,
                ckpt_path=self.params.checkpoint or None,
                device=device,
                hydra_overrides_extra=list(self.params.hydra_overrides),
            )
        return self._predictor

    def _label(self, frames: np.ndarray, timestamps: np.ndarray, source: str | None) -> np.ndarray:
        import torch

        predictor = self._model()
        t = frames.shape[0]
        step = self.params.chunk_frames - 1
        labels = np.zeros(frames.shape[:3], np.int64)
        next_id = 1
        with torch.inference_mode(), _autocast(predictor.device):
            for start in range(0, max(t - 1, 1), step):
                stop = min(start + step + 1, t)
                chunk = self._track(predictor, frames[start:stop])
                painted = _paint(chunk, np.arange(1, chunk.shape[0] + 1))
                if start:  # the chunk's first frame is the previous chunk's last: link there
                    painted = link_ids(labels[start], painted, self.params.link_iou, next_id)[painted]
                next_id = max(next_id, int(painted.max(initial=0)) + 1)
                labels[start + 1 : stop] = painted[1:]
                if start == 0:
                    labels[0] = painted[0]
        labels = keep_largest(labels.astype(LABEL_DTYPE), self.max_trajectories)
        return relabel(labels)

    def _track(self, predictor, frames: np.ndarray) -> np.ndarray:
        """(N, T, H, W) bool: the key frame's automatic masks carried through `frames`."""
        masks = self._key_masks(predictor, frames[0])
        out = np.zeros((len(masks), *frames.shape[:3]), bool)
        if not len(masks):
            return out
        with tempfile.TemporaryDirectory(prefix="trajtok-sam2-") as folder:
            for i, frame in enumerate(frames):  # the video predictor reads a folder of JPEG frames
                Image.fromarray(frame).save(Path(folder) / f"{i:05d}.jpg", quality=95)
            state = predictor.init_state(video_path=folder, offload_video_to_cpu=True)
            for obj, mask in enumerate(masks):
                predictor.add_new_mask(state, frame_idx=0, obj_id=obj, mask=mask)
            for frame_idx, obj_ids, logits in predictor.propagate_in_video(state):
                out[list(obj_ids), frame_idx] = (logits[:, 0] > 0).cpu().numpy()
            predictor.reset_state(state)
        out[:, 0] = masks
        return out

    def _key_masks(self, predictor, frame: np.ndarray) -> np.ndarray:
        """(N, H, W) bool masks of one frame, largest first, at most `max_trajectories`."""
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        p = self.params
        generator = SAM2AutomaticMaskGenerator(
            predictor,
            points_per_side=p.points_per_side,
            points_per_batch=p.points_per_batch,
            pred_iou_thresh=p.pred_iou_thresh,
            stability_score_thresh=p.stability_score_thresh,
        )
        min_area = p.min_mask_area * frame.shape[0] * frame.shape[1]
        found = [m for m in generator.generate(frame) if m["area"] >= min_area]
        found.sort(key=lambda m: -m["area"])
        masks = [m["segmentation"] for m in found[: self.max_trajectories]]
        return np.stack(masks) if masks else np.zeros((0, *frame.shape[:2]), bool)


def _paint(masks: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(T, H, W) ids from (N, T, H, W) masks ordered largest first: later (smaller) masks stay on top, so
    overlaps never sum into ids that do not exist."""
    out = np.zeros(masks.shape[1:], np.int64)
    for mask, i in zip(masks, ids):
        out[mask] = i
    return out


def _autocast(device):
    """bfloat16 autocast on CUDA (as SAM 2's own examples run), nothing on the CPU."""
    import contextlib

    import torch

    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
