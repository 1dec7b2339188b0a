"""The `sam2` labeler: its settings are checked without the package; with the package it runs end to end.

No SAM 2 weights can be fetched, so the end-to-end tests build a small randomly initialised model from the
package's own tiny config (a shallower image encoder, one memory-attention layer). Its labels mean nothing;
the tests check that the path runs and returns a valid label map, not its quality. On a CPU they take
about a minute each (SAM 2's image encoder runs at 1024 px whatever the model size).
"""

from __future__ import annotations

import numpy as np
import pytest

from pseudolabel.base import build_labeler
from trajtok.data.labels import resize_frames, short_side_size, validate_labels
from trajtok.data.synth import generate_clip
from trajtok.data.video import load_clip
from trajtok.errors import ConfigError

SMALL_RANDOM_MODEL = {
    "random_weights": True,
    "hydra_overrides": [
        "++model.image_encoder.trunk.embed_dim=24",
        "++model.image_encoder.trunk.stages=[1,1,2,1]",
        "++model.image_encoder.trunk.global_att_blocks=[3]",
        "++model.image_encoder.neck.backbone_channel_list=[192,96,48,24]",
        "++model.memory_attention.num_layers=1",
    ],
    "points_per_side": 4,
    "pred_iou_thresh": 0.0,  # a random model rates its masks at random: keep them all
    "stability_score_thresh": 0.0,
    "min_mask_area": 0.0,
    "chunk_frames": 3,
}


def _sam2_missing() -> str:
    try:
        import sam2.automatic_mask_generator  # noqa: F401
        import sam2.build_sam  # noqa: F401
    except Exception as err:  # ImportError, or a torchvision built for another torch build
        return f"the sam2 package cannot be imported ({type(err).__name__}: {err}); install '.[sam2]'"
    return ""


needs_sam2 = pytest.mark.skipif(bool(_sam2_missing()), reason=_sam2_missing() or "sam2 is installed")


def test_checkpoint_is_required_unless_random(tmp_path):
    with pytest.raises(ConfigError, match="pseudolabel.params.checkpoint: .*needs a SAM 2 checkpoint"):
        build_labeler("sam2")
    with pytest.raises(ConfigError, match="no such file"):
        build_labeler("sam2", {"checkpoint": str(tmp_path / "missing.pt")})
    labeler = build_labeler("sam2", {"random_weights": True})  # builds lazily: no sam2 needed yet
    assert labeler.requirements.device == "gpu"
    assert labeler.describe()["params"]["random_weights"] is True


@needs_sam2
def test_sam2_random_weights_synthetic_clip():
    import torch

    torch.manual_seed(0)
    clip = generate_clip(7030, frames=6, height=96, width=128)
    result = build_labeler("sam2", SMALL_RANDOM_MODEL, max_trajectories=8).label(
        clip.frames, np.arange(6) / 8
    )
    validate_labels(result.labels, num_frames=6, frame_size=(96, 128), max_trajectories=8)
    assert result.num_trajectories >= 1


@pytest.mark.slow
@needs_sam2
@pytest.mark.parametrize(("name", "end"), [("vtest.avi", 8.0), ("tree.avi", None)])
def test_sam2_random_weights_real_videos(shared_videos, name, end):
    import torch

    torch.manual_seed(0)
    frames, times, _ = load_clip(shared_videos / name, 4, "middle", None, end)
    frames = resize_frames(frames, short_side_size(*frames.shape[1:3], 96, multiple=2))
    result = build_labeler("sam2", SMALL_RANDOM_MODEL, max_trajectories=8).label(frames, times)
    validate_labels(result.labels, num_frames=4, frame_size=frames.shape[1:3], max_trajectories=8)
