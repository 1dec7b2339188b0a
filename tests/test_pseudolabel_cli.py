"""`trajtok label` and `trajtok viz` through the real command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from launch.cli import main
from trajtok.config import ClipConfig
from trajtok.data.clips import read_clips, read_window
from trajtok.data.labels import load_labels
from trajtok.data.video import labelling_window, open_video
from trajtok.viz import overlay_grid, trajectory_colours


@pytest.fixture(scope="module")
def labelled(shared_videos, tmp_path_factory):
    """`trajtok label vtest.avi` on 6 frames at 96 px, and the frames it labelled."""
    out = tmp_path_factory.mktemp("label")
    video = shared_videos / "vtest.avi"
    args = ["clip.frames=6", "clip.size=96", "--out", str(out), "--start", "0", "--end", "6"]
    assert main(["label", str(video), *args]) == 0
    frames = read_window(str(video), ClipConfig(frames=6, size=96), 0.0, 6.0).frames
    return out, frames


def test_label_cuts_what_shard_writes(shared_videos):
    """One cut for every command: the clip `trajtok label` shows for a window is the clip `trajtok shard`
    writes for a manifest row with that window (same frames, same sampling seed, same size)."""
    clip = ClipConfig(frames=6, size=96, sampling="random")
    video = str(shared_videos / "vtest.avi")
    shown = read_window(video, clip, 2.0, 6.0)
    (written,) = read_clips(video, 2.0, 6.0, clip, timeout=60)
    assert shown.key == written.key
    np.testing.assert_array_equal(shown.frames, written.frames)
    np.testing.assert_array_equal(shown.timestamps, written.timestamps)


def test_label_writes_map_record_and_pictures(labelled, capsys):
    out, frames = labelled
    labels = load_labels(out / "vtest_labels.npz")
    assert labels.shape == frames.shape[:3] and labels.max() > 1
    record = json.loads((out / "vtest_labels.json").read_text())
    assert record["labeler"]["name"] == "classical" and record["trajectories"] == np.count_nonzero(
        np.unique(labels)
    )
    assert len(record["timestamps"]) == 6 and record["frame_size"] == list(frames.shape[1:3])
    with Image.open(out / "vtest_overlay.gif") as gif:
        assert gif.n_frames == 6


def test_label_picture_colours_follow_the_ids(labelled):
    out, frames = labelled
    labels = load_labels(out / "vtest_labels.npz")
    png = np.asarray(Image.open(out / "vtest_overlay.png").convert("RGB"))
    np.testing.assert_array_equal(png, overlay_grid(frames, labels))
    # and, read off the picture: each trajectory's tint is its id's colour in every frame it is in
    h, w = labels.shape[1:]
    tinted = png.astype(np.float32)
    colours = trajectory_colours(np.arange(labels.max() + 1)).astype(np.float32)
    for t in range(len(frames)):
        r, c = divmod(t, 3)
        cell = tinted[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w]
        tint = (cell - 0.45 * frames[t]) / 0.55
        for k in np.unique(labels[t])[1:]:
            inside = labels[t] == k
            if inside.sum() > 50:
                assert np.abs(np.median(tint[inside], axis=0) - colours[k]).max() < 12


def test_viz_redraws_a_stored_map(labelled):
    out, _ = labelled
    assert main(["viz", str(out / "vtest_labels.npz"), "--out", str(out / "again")]) == 0
    assert (out / "again.png").read_bytes() == (out / "vtest_overlay.png").read_bytes()


def test_viz_draws_a_trajvit_sidecar(tmp_path, shared_videos):
    video = tmp_path / "tree.avi"
    video.symlink_to(shared_videos / "tree.avi")
    masks = np.zeros((4, 24, 32), np.uint8)
    masks[:, :, :16], masks[:, :, 16:] = 1, 2
    np.savez_compressed(tmp_path / "tree_mask.npz", masks)
    np.savez_compressed(tmp_path / "tree_graph.npz", tensor=np.array([[1, 1, 1, 1], [2, 2, 2, 2]]))
    assert main(["viz", str(tmp_path / "tree_mask.npz")]) == 0
    picture = np.asarray(Image.open(tmp_path / "tree_overlay.png"))
    assert picture.shape == (2 * 24 + 2, 2 * 32 + 2, 3)


@pytest.mark.parametrize(
    "duration, seconds, start, end, window",
    [
        (80.0, 4.0, None, None, (38.0, 42.0)),  # the middle few seconds of a long video
        (3.0, 4.0, None, None, (None, None)),  # a short video whole
        (80.0, 4.0, 10.0, None, (10.0, 14.0)),
        (80.0, 4.0, None, 3.0, (0.0, 3.0)),
        (80.0, 4.0, 5.0, 50.0, (5.0, 50.0)),  # both ends given: as asked
        (80.0, 0.0, None, None, (None, None)),  # 0 = the whole video
    ],
)
def test_labelling_window(duration, seconds, start, end, window):
    assert labelling_window(duration, seconds, start, end) == window


def test_label_takes_a_few_seconds_of_the_middle_unless_told(shared_videos, tmp_path):
    video = shared_videos / "vtest.avi"
    with open_video(video) as reader:
        middle = reader.info.duration / 2
    assert middle > 10

    def timestamps(*args: str) -> list[float]:
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        assert main(["label", str(video), "clip.frames=4", "clip.size=64", "--out", str(out), *args]) == 0
        return json.loads((out / "vtest_labels.json").read_text())["timestamps"]

    default = timestamps()
    assert middle - 2 <= default[0] and default[-1] < middle + 2
    from_ten = timestamps("--start", "10")
    assert from_ten[0] >= 10 and from_ten[-1] < 14
    whole = timestamps("--seconds", "0")
    assert whole[-1] - whole[0] > middle


def test_user_errors_are_one_line(tmp_path, shared_videos, capsys):
    assert main(["label", str(tmp_path / "missing.mp4"), "--out", str(tmp_path)]) == 2
    assert main(["label", str(shared_videos / "tree.avi"), "--labeler", "nope", "--out", str(tmp_path)]) == 2
    assert main(["viz", str(tmp_path / "none.npz"), "--video", str(shared_videos / "tree.avi")]) == 2
    assert main(["label", str(shared_videos / "tree.avi"), "--start", "5", "--end", "2"]) == 2
    assert main(["label", str(shared_videos / "tree.avi"), "--seconds", "-1"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 5 and all(line.startswith("trajtok ") for line in errors)
    assert "--end 2 must come after --start 5" in errors[3] and "--seconds -1" in errors[4]
    assert "unknown labeler 'nope'" in errors[1]
