"""Labeler interface, registry and the classical labeler on synthetic clips and the real sample videos."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pseudolabel.base import (
    available_labelers,
    build_labeler,
    keep_largest,
    labeler_class,
    labeler_from_config,
)
from pseudolabel.classical import ClassicalLabeler, merge_by_colour, shots
from pseudolabel.cleanup import merge_small
from trajtok.config import PseudolabelConfig, load_config
from trajtok.data.labels import LABEL_DTYPE, resize_frames, short_side_size, trajectory_stats, validate_labels
from trajtok.data.synth import generate_clip
from trajtok.data.video import load_clip
from trajtok.errors import ConfigError
from trajtok.eval.segmentation import evaluate_segmentation, mean_scores

QUALITY_SEEDS = range(7000, 7004)  # not used while developing the labeler (those were 1000-1031)


def _times(t: int) -> np.ndarray:
    return np.arange(t) / 8.0


def assert_valid(labels: np.ndarray, frames: np.ndarray, cap: int = 128) -> None:
    validate_labels(labels, num_frames=frames.shape[0], frame_size=frames.shape[1:3], max_trajectories=cap)
    assert labels.dtype == LABEL_DTYPE and labels.max() > 0


def dominant_id_share(pred: np.ndarray, gt: np.ndarray, obj: int) -> float:
    """Share of the frames showing `obj` in which its most common predicted id is the clip-wide one."""
    per_frame = []
    for p, g in zip(pred, gt):
        ids = p[g == obj]
        if ids.size:
            per_frame.append(int(np.bincount(ids).argmax()))
    return float(np.mean(np.asarray(per_frame) == np.bincount(per_frame).argmax()))


@pytest.fixture(scope="module")
def real_clips(shared_videos):
    """16 frames of each sample video at 112 px short side, and their timestamps."""
    clips = {}
    for name, end in (("vtest.avi", 8.0), ("tree.avi", None)):
        frames, times, _ = load_clip(shared_videos / name, 16, "middle", None, end)
        frames = resize_frames(frames, short_side_size(*frames.shape[1:3], 112, multiple=2))
        clips[name] = (frames, times)
    return clips


# --- interface and registry ----------------------------------------------------------------------------


def test_registry_names_and_config():
    assert available_labelers() == ["classical", "import", "sam2", "trajtok"]
    assert isinstance(labeler_from_config(PseudolabelConfig()), ClassicalLabeler)
    with pytest.raises(ConfigError, match="unknown labeler 'nope'.*classical, import, sam2"):
        labeler_class("nope")
    cfg = load_config(None, ["pseudolabel.params.target_trajectories=12", "pseudolabel.max_trajectories=40"])
    labeler = labeler_from_config(cfg.pseudolabel)
    assert labeler.params.target_trajectories == 12 and labeler.max_trajectories == 40


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"bogus": 1}, "pseudolabel.params.bogus"),
        ({"target_trajectories": "many"}, "pseudolabel.params.target_trajectories"),
        ({"superpixels": "quickshift"}, "superpixels.*felzenszwalb, slic, watershed"),
        ({"flow": "raft"}, "flow.*dis, farneback"),
        ({"work_size": 0}, "work_size"),
    ],
)
def test_bad_parameters_name_the_key(params, message):
    with pytest.raises(ConfigError, match=message):
        build_labeler("classical", params)


def test_describe_records_every_parameter():
    info = build_labeler("classical", {"min_area": 0.01}, max_trajectories=64).describe()
    assert info["name"] == "classical" and info["version"]
    assert info["params"]["min_area"] == 0.01 and info["params"]["max_trajectories"] == 64
    assert info["params"]["target_trajectories"] == 16 and info["params"]["merge_tolerance"] == 14.0
    json.dumps(info)  # goes into every sample's JSON


def test_input_is_checked():
    labeler = build_labeler("classical")
    frames = np.zeros((4, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        labeler.label(frames.astype(np.float32), _times(4))
    with pytest.raises(ValueError, match="3 timestamps for 4 frames"):
        labeler.label(frames, _times(3))
    assert labeler.requirements.device == "cpu"


def test_keep_largest_unlabels_the_rest():
    labels = np.zeros((1, 4, 10), LABEL_DTYPE)
    labels[0, :, :5], labels[0, :, 5:8], labels[0, :, 8:] = 3, 9, 4
    kept = keep_largest(labels, 2)
    assert set(np.unique(kept)) == {0, 3, 9}


# --- classical -----------------------------------------------------------------------------------------


def test_classical_meets_the_quality_bars_on_synthetic_clips():
    """The benchmark's targets, at a small size: purity >= 0.9, best overlap >= 0.6, trajectories that
    last >= 0.8 T, at most 128 of them."""
    labeler = build_labeler("classical")
    scores = []
    for seed in QUALITY_SEEDS:
        clip = generate_clip(seed, frames=16, height=96, width=128)
        result = labeler.label(clip.frames, _times(16))
        assert_valid(result.labels, clip.frames)
        scores.append(evaluate_segmentation(result.labels, clip.labels))
        for obj in clip.metadata["objects"]:  # ids stay on their object over time
            if obj["first_frame"] == 0 and obj["last_frame"] == 15:
                assert dominant_id_share(result.labels, clip.labels, obj["id"]) >= 0.75
    mean = mean_scores(scores)
    assert mean["purity"] >= 0.90
    assert mean["mean_best_overlap"] >= 0.60
    assert mean["duration_fraction"] >= 0.80
    assert max(s.num_trajectories for s in scores) <= 128


def test_result_reports_trajectory_facts():
    clip = generate_clip(7010, frames=8, height=64, width=80)
    result = build_labeler("classical").label(clip.frames, _times(8))
    stats = trajectory_stats(result.labels)
    assert result.num_trajectories == len(stats) > 1
    np.testing.assert_array_equal(result.trajectories.frames_present, stats.frames_present)
    np.testing.assert_array_equal(result.trajectories.area, stats.area)
    assert set(result.trajectories.ids.tolist()) == set(range(1, len(stats) + 1))  # consecutive ids


def test_granularity_knob_and_cap():
    clip = generate_clip(7011, frames=8, height=96, width=128)
    coarse = build_labeler("classical", {"target_trajectories": 8}).label(clip.frames, _times(8))
    fine = build_labeler("classical", {"target_trajectories": 64, "min_area": 0.0}).label(
        clip.frames, _times(8)
    )
    assert coarse.num_trajectories < fine.num_trajectories
    capped = build_labeler("classical", {"target_trajectories": 64, "min_area": 0.0}, max_trajectories=5)
    result = capped.label(clip.frames, _times(8))
    assert_valid(result.labels, clip.frames, cap=5)
    assert np.all(result.labels > 0)  # the cap merges trajectories, it does not unlabel pixels


def test_merge_small_joins_neighbours_keeps_isolated_and_respects_cap():
    labels = np.zeros((2, 6, 8), np.int64)
    labels[:, :, :3], labels[:, :, 3:6], labels[:, 0, 0] = 1, 2, 3  # id 3: two pixels inside id 1
    labels[:, 2:4, 7] = 4  # id 4: small, touches only unlabelled pixels
    merged = merge_small(labels, min_area=0.1, max_trajectories=10)
    assert set(np.unique(merged)) == {0, 1, 2, 4} and np.all(merged[:, 0, 0] == 1)
    assert set(np.unique(merge_small(labels, 0.0, 2))) == {
        0,
        1,
        2,
    }  # over the cap, 4 cannot merge: unlabelled


def test_single_frame_and_tiny_clips():
    clip = generate_clip(7012, frames=2, height=32, width=48)
    for frames in (clip.frames[:1], clip.frames):
        result = build_labeler("classical").label(frames, _times(len(frames)))
        assert_valid(result.labels, frames)


def test_shot_cut_starts_new_trajectories(real_clips):
    a, _ = real_clips["vtest.avi"]
    b, _ = real_clips["tree.avi"]
    b = resize_frames(b, a.shape[1:3])
    frames = np.concatenate([a[:6], b[:6]])
    assert shots(frames, 0.5) == [(0, 6), (6, 12)]
    labels = build_labeler("classical").label(frames, _times(12)).labels
    assert_valid(labels, frames)
    assert not set(np.unique(labels[:6])) & set(np.unique(labels[6:]))  # no id crosses the cut


@pytest.mark.parametrize("name", ["vtest.avi", "tree.avi"])
def test_classical_on_real_videos(real_clips, name):
    frames, times = real_clips[name]
    result = build_labeler("classical").label(frames, times)
    assert_valid(result.labels, frames)
    assert 5 <= result.num_trajectories <= 128
    stats = result.trajectories
    assert np.average(stats.frames_present, weights=stats.area) >= 0.8 * len(frames)


def test_regions_that_look_alike_merge_below_the_target():
    """Three bands, the first two 5 CIELAB units apart, the third far off: with a target of 3 nothing has to
    merge, a tolerance of 8 joins the lookalikes and nothing else, a tolerance of 4 joins none."""
    seg = np.repeat(np.arange(3), 4)[None, :].repeat(4, axis=0)
    lab = np.zeros((4, 12, 3), np.float32)
    lab[..., 0] = np.array([50.0, 55.0, 90.0])[seg]
    roots = {tolerance: merge_by_colour(seg, lab, 3, tolerance=tolerance) for tolerance in (0.0, 4.0, 8.0)}
    assert len(set(roots[0.0])) == len(set(roots[4.0])) == 3
    assert roots[8.0][0] == roots[8.0][1] != roots[8.0][2]
