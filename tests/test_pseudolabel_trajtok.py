"""The `trajtok` labeller on tiny models (random weights: the contract and the mechanics, not the quality,
which BENCHMARKS.md measures with a trained run): label maps that meet the contract on synthetic and real
clips, ids by size, logits brought to the clip's size before the argmax, windows linked, batches equal to
single clips, and a description that says which model labelled."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from exported_runs import write_weights

from pseudolabel.base import build_labeler
from trajtok.config import ClipConfig
from trajtok.data.clips import read_window
from trajtok.data.synth import generate_clip
from trajtok.errors import ConfigError


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    runs = {name: write_weights(root / name, name=name) for name in ("segmenter", "trajvit2", "vit3d")}
    runs["trajvit2-shared-kv"] = write_weights(root / "shared", name="trajvit2", shared_kv=True)
    return runs


def _times(frames: np.ndarray) -> np.ndarray:
    return np.arange(len(frames)) / 8.0


@pytest.mark.parametrize("model", ["segmenter", "trajvit2", "trajvit2-shared-kv"])
def test_labels_meet_the_contract_ids_by_size(runs, model: str):
    labeler = build_labeler("trajtok", {"weights": str(runs[model]), "min_area": 0.0})
    clip = generate_clip(4, 12, 40, 56)  # 12 frames: two windows of the run's 8; not square
    result = labeler.label(clip.frames, _times(clip.frames))  # the base class checks the contract
    labels = result.labels
    assert labels.shape == (12, 40, 56) and labels.dtype == np.uint16
    area = np.bincount(labels.ravel())[1:]
    assert len(area) == result.num_trajectories > 1 and area.min() > 0  # ids 1..N, none skipped
    assert np.all(np.diff(area) <= 0)  # 1 is the largest


def test_a_real_video_is_labelled_within_the_cap(runs, shared_videos: Path):
    clip = read_window(str(shared_videos / "vtest.avi"), ClipConfig(frames=16, size=64), seconds=4.0)
    labeler = build_labeler("trajtok", {"weights": str(runs["trajvit2"])}, max_trajectories=6)
    result = labeler.label(clip.frames, clip.timestamps)
    assert result.labels.shape == clip.frames.shape[:3] and 1 <= result.num_trajectories <= 6


def test_small_trajectories_merge_into_their_neighbours(runs):
    clip = generate_clip(8, 8, 48, 48)
    fine = build_labeler("trajtok", {"weights": str(runs["segmenter"]), "min_area": 0.0})
    coarse = build_labeler("trajtok", {"weights": str(runs["segmenter"]), "min_area": 0.05})
    fine_labels = fine.label(clip.frames, _times(clip.frames)).labels
    coarse_labels = coarse.label(clip.frames, _times(clip.frames)).labels
    floor = 0.05 * coarse_labels.size
    small = np.bincount(fine_labels.ravel())[1:] < floor
    assert small.any(), "the random model should make some small trajectories"
    assert (np.bincount(coarse_labels.ravel())[1:] >= floor).all()
    assert (coarse_labels > 0).all() and (fine_labels > 0).all()  # merged, not unlabelled


def test_logits_are_resized_before_the_argmax(runs):
    """At input_scale 1 the model's grid is 1/4 of the clip: an argmax on the grid, resized, would make
    every 4 x 4 block one id; bilinear logits put boundaries inside blocks."""
    labeler = build_labeler("trajtok", {"weights": str(runs["segmenter"]), "input_scale": 1.0})
    clip = generate_clip(2, 8, 32, 32)
    labels = labeler.label(clip.frames, _times(clip.frames)).labels
    blocks = labels.reshape(8, 8, 4, 8, 4).transpose(0, 1, 3, 2, 4).reshape(8, 8, 8, 16)
    mixed = (blocks != blocks[..., :1]).any(axis=-1)
    assert mixed.mean() > 0.05


def test_windows_of_a_still_clip_link_into_whole_trajectories(runs):
    """The same frame 20 times: every window sees the same picture, so each trajectory is linked through
    all three windows (0-7, 7-14, 12-19) and the map is the same in every frame."""
    frame = generate_clip(6, 2, 32, 32).frames[0]
    still = np.repeat(frame[None], 20, axis=0)
    labeler = build_labeler("trajtok", {"weights": str(runs["trajvit2"]), "min_area": 0.0})
    labels = labeler.label(still, _times(still)).labels
    assert (labels == labels[:1]).all()
    one_window = labeler.label(still[:8], _times(still[:8])).labels
    assert len(np.unique(labels)) == len(np.unique(one_window))


def test_a_batch_labels_each_clip_as_alone(runs):
    labeler = build_labeler("trajtok", {"weights": str(runs["trajvit2"]), "batch_size": 2})
    clips = [generate_clip(seed, frames, 32, 48).frames for seed, frames in ((1, 8), (2, 12), (3, 8))]
    together = labeler.label_batch([(frames, _times(frames), None) for frames in clips])
    for frames, result in zip(clips, together):
        assert np.array_equal(result.labels, labeler.label(frames, _times(frames)).labels)


def test_the_description_names_the_model_that_labelled(runs):
    (runs["trajvit2"] / "mlflow_run_id").write_text("abc123\n")
    labeler = build_labeler("trajtok", {"weights": str(runs["trajvit2"])})
    source = labeler.describe()["source"]
    weights = runs["trajvit2"] / "weights.safetensors"
    assert source["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert source["model"] == "trajvit2" and source["step"] == 5 and source["mlflow_run_id"] == "abc123"
    assert source["weights"] == str(weights.resolve())


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({}, "needs a trained run or weights file"),
        ({"weights": "/nowhere"}, "no weights there"),
        ({"weights": "vit3d"}, "holds a 'vit3d' model, which makes no trajectories"),
        ({"weights": "segmenter", "window_frames": 1}, "window_frames: 1 is out of range"),
        ({"weights": "segmenter", "input_scale": 0}, "input_scale: 0.0 is out of range"),
        ({"weights": "segmenter", "batch_size": 0}, "batch_size: 0 is out of range"),
    ],
)
def test_bad_settings_are_one_line_errors(runs, params: dict, problem: str):
    if params.get("weights") in runs:
        params = {**params, "weights": str(runs[params["weights"]])}
    with pytest.raises(ConfigError, match=problem) as err:
        build_labeler("trajtok", params)
    assert "\n" not in str(err.value)
