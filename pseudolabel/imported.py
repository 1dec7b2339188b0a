"""The `import` labeler: labels a user already has, as TrajViT/TrajTok `_mask.npz` + `_graph.npz` sidecars.

The sidecars sit beside the video (see `trajtok.data.trajvit_format`). They either hold exactly the clip's
frames, or frames spread evenly over the whole video (every frame of it, or an even sample); in the second
case the clip's timestamps say which sidecar frame each clip frame is. Maps stored at another resolution are
resized to the frames (nearest), except a map stored transposed, which is refused. Sidecars are read from
the local file system (a video given as a remote URI has none beside it that can be found).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pseudolabel.base import Labeler, Requirements, keep_largest
from trajtok.data.labels import LABEL_DTYPE, relabel, resize_labels
from trajtok.data.trajvit_format import load_trajvit, sidecar_paths
from trajtok.data.video import open_video
from trajtok.errors import LabelFormatError


@dataclass
class ImportParams:
    version: str = ""  # text after `_mask`/`_graph` in the sidecar names
    overlap: str = "nearest"  # pixels of overlapping masks: nearest | unlabel (see trajvit_format)


class ImportLabeler(Labeler):
    name = "import"
    version = "1"
    Params = ImportParams

    @property
    def requirements(self) -> Requirements:
        return Requirements(device="cpu", batch_size=1, memory_gb=0.5)

    def _label(self, frames: np.ndarray, timestamps: np.ndarray, source: str | None) -> np.ndarray:
        if not source:
            raise LabelFormatError("import labeler: the clip has no source video to find sidecars beside")
        mask_path, graph_path = sidecar_paths(source, self.params.version)
        if not mask_path.is_file():
            raise LabelFormatError(f"{source}: no label sidecar {mask_path.name} beside the video")
        graph = graph_path if graph_path.is_file() else None
        labels = load_trajvit(mask_path, graph, overlap=self.params.overlap).labels
        t, h, w = frames.shape[:3]
        if labels.shape[0] != t:
            labels = labels[_sidecar_frames(source, timestamps, labels.shape[0])]
        if labels.shape[1:] == (w, h) and h != w:
            raise LabelFormatError(
                f"{mask_path}: masks are {w}x{h} but the frames are {h}x{w} (HxW): saved transposed"
            )
        if labels.shape[1:] != (h, w):
            labels = resize_labels(labels, (h, w))
        return relabel(keep_largest(labels.astype(LABEL_DTYPE), self.max_trajectories))


def _sidecar_frames(source: str, timestamps: np.ndarray, count: int) -> np.ndarray:
    """Index of the sidecar frame shown at each timestamp, the sidecar's frames spanning the video evenly."""
    with open_video(source) as video:
        duration = video.info.duration
    return np.clip(np.floor(timestamps / duration * count + 1e-6).astype(np.int64), 0, count - 1)
