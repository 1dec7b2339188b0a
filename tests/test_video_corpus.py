"""Every file of the trap corpus (tests/video_corpus.py) and the shared real videos read exactly as a plain
sequential decode gives them, whatever the frames asked for and in whatever order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from video_corpus import CORPUS, sequential_reference, write_corpus

from launch.cli import main as cli_main
from trajtok.data import video as video_module
from trajtok.data.video import open_video

SHARED = ("vtest.avi", "tree.avi")
READS = 5  # random index sets per file, besides all frames and a reversed sweep


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def videos(corpus, shared_videos) -> dict[str, Path]:
    return {**corpus, **{name: shared_videos / name for name in SHARED}}


def _index_sets(name: str, count: int) -> list[np.ndarray]:
    """Random sets of frames (sorted and not), one long read, and a backwards sweep: seeks of every kind."""
    rng = np.random.default_rng(sum(name.encode()))
    sets = [rng.choice(count, size=min(count, 8), replace=False) for _ in range(READS)]
    sets.append(np.sort(rng.choice(count, size=min(count, 16), replace=False)))
    return [*sets, np.arange(count - 1, -1, -max(1, count // 7))]


@pytest.mark.parametrize("name", [*CORPUS, *SHARED])
def test_every_read_equals_the_sequential_reference(videos, name):
    path = videos[name]
    with open_video(path) as video:
        info = video.info
        reads = _index_sets(name, info.num_frames)
        wanted = np.unique(np.concatenate(reads))
        count, pictures = sequential_reference(path, wanted)
        assert info.num_frames == count
        reference = dict(zip(wanted.tolist(), pictures))
        coded_size = pictures.shape[1:3]  # upright, before the pixel aspect is applied
        for indices in reads:
            frames = video.read_frames(indices, size=coded_size)
            assert np.array_equal(frames, np.stack([reference[i] for i in indices.tolist()])), indices
        times = video.timestamps(np.arange(count))
    assert (np.diff(times) > 0).all() and times[0] == 0.0


@pytest.mark.parametrize("name", [*CORPUS, *SHARED])
def test_frames_read_at_another_size_equal_the_reference_converted_to_it(videos, name):
    """The output-size path resizes inside the colour conversion; it must still give the frames asked for."""
    path = videos[name]
    with open_video(path) as video:
        indices = _index_sets(name, video.info.num_frames)[0]
        height, width = video.info.height, video.info.width
        for size in [(max(2, height * 2 // 3), max(2, width * 2 // 3)), (height * 2, width * 2 + 1)]:
            _, reference = sequential_reference(path, indices, size)
            assert np.array_equal(video.read_frames(indices, size=size), reference), size


@pytest.mark.parametrize("name", CORPUS)
def test_timestamps_are_trusted_only_where_they_name_the_frames(corpus, name):
    trusted = CORPUS[name][1]
    with open_video(corpus[name]) as video:
        assert video.info.timestamps == ("container" if trusted else "derived")
        if not trusted:  # frame number over the stream's rate
            count = video.info.num_frames
            assert video.timestamps(np.arange(count)) == pytest.approx(np.arange(count) / 25.0)


def test_frames_come_out_upright_and_with_square_pixels(corpus):
    with open_video(corpus["rotated_90.mp4"]) as video:
        assert (video.info.rotation, video.info.width, video.info.height) == (90, 48, 64)
        upright = video.read_frames([3])[0]
    _, reference = sequential_reference(corpus["rotated_90.mp4"], [3])
    assert np.array_equal(upright, reference[0])
    _, widened = sequential_reference(corpus["anamorphic.mp4"], [0, 5], size=(48, 85))
    with open_video(corpus["anamorphic.mp4"]) as video:
        assert video.info.sample_aspect_ratio == pytest.approx(4 / 3, abs=1e-6)
        assert (video.info.width, video.info.height) == (85, 48)  # 64 coded pixels, each 4/3 wide
        assert np.array_equal(video.read_frames([0, 5]), widened)


def test_timestamps_found_wrong_while_reading_send_the_reader_to_count_frames(corpus, monkeypatch):
    """The checks at open see the first and last frames only; a misorder elsewhere must still never give a
    wrong frame: with both checks blinded, the reads themselves find the packed B-frames out."""
    backend = video_module._PyAVBackend
    monkeypatch.setattr(video_module, "PROBE_FRAMES", 1)  # the first frame alone is always in order
    monkeypatch.setattr(backend, "_check_last_group", lambda self, pts, keyframes: (pts, keyframes))
    path = corpus["packed_b_frames.avi"]
    count, everything = sequential_reference(path)
    with open_video(path) as video:
        assert video.info.timestamps == "container"  # fooled at open
        for indices in ([3, 4, 5], [20, 1, 2], np.arange(count)):
            assert np.array_equal(video.read_frames(indices), everything[indices])


def test_video_info_reports_the_reference_count_and_where_times_come_from(corpus, capfd):
    names = ["b_frames_pts_is_dts.mp4", "packed_b_frames.avi", "b_pyramid.mp4", "rotated_270.mov"]
    assert cli_main(["video-info", *(str(corpus[name]) for name in names)]) == 0
    rows = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    for name, row in zip(names, rows, strict=True):
        assert row["num_frames"] == sequential_reference(corpus[name], [0])[0]
        assert row["timestamps"] == ("container" if CORPUS[name][1] else "derived")
    assert (rows[3]["rotation"], rows[3]["width"], rows[3]["height"]) == (270, 48, 64)
