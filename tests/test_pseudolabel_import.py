"""The `import` labeler on TrajViT sidecars written next to real video files."""

from __future__ import annotations

import numpy as np
import pytest

from pseudolabel.base import build_labeler
from trajtok.data.encode import write_video
from trajtok.data.labels import relabel, resize_frames, resize_labels, short_side_size, validate_labels
from trajtok.data.synth import generate_clip
from trajtok.data.video import load_clip
from trajtok.errors import LabelFormatError


def write_sidecars(video, labels: np.ndarray, seed: int = 0, transpose: bool = False) -> None:
    """TrajViT's format: per-frame ids (shuffled in every frame, uint8) and the (M, T) graph linking them."""
    rng = np.random.default_rng(seed)
    ids = np.unique(labels[labels > 0])
    masks = np.zeros(labels.shape, np.uint8)
    graph = np.zeros((len(ids), labels.shape[0]), np.int64)
    for t, frame in enumerate(labels):
        present = [m for m, i in enumerate(ids) if np.any(frame == i)]
        for local, m in zip(rng.permutation(len(present)) + 1, present):
            masks[t][frame == ids[m]] = local
            graph[m, t] = local
    if transpose:
        masks = masks.transpose(0, 2, 1)
    stem = video.with_suffix("")
    np.savez_compressed(f"{stem}_mask.npz", masks)
    np.savez_compressed(f"{stem}_graph.npz", tensor=graph)


@pytest.fixture(scope="module")
def synth_video(tmp_path_factory):
    """A 16-frame synthetic clip as an mp4 with its exact labels as TrajViT sidecars."""
    clip = generate_clip(7020, frames=16, height=48, width=64)
    video = write_video(tmp_path_factory.mktemp("import") / "clip.mp4", clip.frames, fps=8)
    write_sidecars(video, clip.labels)
    return video, clip


def test_sidecar_for_the_clip_is_read_back_exactly(synth_video):
    video, clip = synth_video
    frames, times, _ = load_clip(video, 16)
    result = build_labeler("import").label(frames, times, source=str(video))
    np.testing.assert_array_equal(result.labels, relabel(clip.labels))


def test_sidecar_of_the_whole_video_is_sampled_by_timestamp(synth_video):
    video, clip = synth_video
    frames, times, _ = load_clip(video, 5, "middle")  # frames 1, 4, 8, 11, 14 of 16
    small = resize_frames(frames, (24, 32))
    result = build_labeler("import").label(small, times, source=str(video))
    chosen = clip.labels[[1, 4, 8, 11, 14]]
    np.testing.assert_array_equal(result.labels, relabel(resize_labels(chosen, (24, 32))))


def test_cap_keeps_the_largest_trajectories(synth_video):
    video, clip = synth_video
    frames, times, _ = load_clip(video, 16)
    result = build_labeler("import", max_trajectories=1).label(frames, times, source=str(video))
    biggest = np.bincount(clip.labels.ravel())[1:].argmax() + 1
    np.testing.assert_array_equal(result.labels, (clip.labels == biggest).astype(np.uint16))


def test_missing_or_transposed_sidecars_are_user_errors(tmp_path):
    clip = generate_clip(7021, frames=4, height=48, width=64)
    video = write_video(tmp_path / "clip.mp4", clip.frames, fps=8)
    frames, times, _ = load_clip(video, 4)
    labeler = build_labeler("import")
    with pytest.raises(LabelFormatError, match="clip_mask.npz"):
        labeler.label(frames, times, source=str(video))
    with pytest.raises(LabelFormatError, match="no source video"):
        labeler.label(frames, times)
    write_sidecars(video, clip.labels, transpose=True)
    with pytest.raises(LabelFormatError, match="transposed"):
        labeler.label(frames, times, source=str(video))


@pytest.mark.parametrize(("name", "end"), [("vtest.avi", 8.0), ("tree.avi", None)])
def test_import_on_real_videos(shared_videos, tmp_path, name, end):
    """Sidecars beside (a link to) each real video, made from classical labels, come back as they were."""
    video = tmp_path / name
    video.symlink_to(shared_videos / name)
    frames, times, _ = load_clip(video, 8, "middle", None, end)
    frames = resize_frames(frames, short_side_size(*frames.shape[1:3], 96, multiple=2))
    labels = build_labeler("classical").label(frames, times).labels
    write_sidecars(video, labels, seed=1)
    result = build_labeler("import").label(frames, times, source=str(video))
    validate_labels(result.labels, num_frames=8, frame_size=frames.shape[1:3], max_trajectories=128)
    np.testing.assert_array_equal(result.labels, relabel(labels))
