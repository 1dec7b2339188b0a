"""Windows of a long clip linked into one label map: a trajectory that crosses a window boundary keeps one
id, one that starts later gets a new one, a poor overlap is not a link."""

from __future__ import annotations

import numpy as np
import pytest

from trajtok.data.label_windows import link_ids, link_windows, window_starts
from trajtok.data.labels import relabel
from trajtok.data.synth import generate_clip


@pytest.mark.parametrize(
    ("frames", "window", "starts"),
    [(8, 8, [0]), (5, 8, [0]), (15, 8, [0, 7]), (16, 8, [0, 7, 8]), (24, 4, [0, 3, 6, 9, 12, 15, 18, 20])],
)
def test_windows_cover_the_clip_sharing_at_least_one_frame(frames: int, window: int, starts: list[int]):
    assert window_starts(frames, window) == starts
    covered = np.zeros(frames, int)
    for start in starts:
        covered[start : start + window] += 1
    assert covered.min() >= 1 and covered.max() <= 2
    assert all(b < a + window for a, b in zip(starts, starts[1:]))  # each shares a frame with the last


def test_a_window_of_one_frame_is_refused():
    with pytest.raises(ValueError, match="at least 2 frames"):
        window_starts(10, 1)


@pytest.mark.parametrize("seed", [3, 11, 29])
def test_windows_with_their_own_ids_link_back_into_the_clip(seed: int):
    """Each window of a synthetic clip carries the true map under ids of its own (shuffled, offset): linked,
    the clip's map is the truth again, whatever crossed a boundary included."""
    clip = generate_clip(seed, 20, 48, 48)
    truth = clip.labels.astype(np.int64)
    rng = np.random.default_rng(seed)
    starts = window_starts(len(truth), 8)
    windows = []
    for start in starts:
        own = np.concatenate([[0], rng.permutation(int(truth.max())) + 1 + rng.integers(0, 50)])
        windows.append(own[truth[start : start + 8]])
    linked = link_windows(windows, starts)
    assert np.array_equal(relabel(linked.astype(np.uint16)), relabel(truth.astype(np.uint16)))


def test_a_trajectory_that_starts_in_a_later_window_gets_a_new_id():
    first = np.zeros((4, 6, 6), np.int64)
    first[:, :3] = 1  # one trajectory on the top half
    second = np.zeros((4, 6, 6), np.int64)
    second[:, :3] = 5  # the same region, another window's id
    second[1:, 3:] = 2  # something new from the window's second frame on
    linked = link_windows([first, second], [0, 3])
    assert set(np.unique(linked[:, :3])) == {1}
    assert set(np.unique(linked[4:, 3:])) == {2}  # new: the next id free after the first window's
    assert set(np.unique(linked[:4, 3:])) == {0}
    assert linked.shape == (7, 6, 6)


def test_overlap_below_the_threshold_is_no_link():
    previous = np.zeros((10, 10), np.int64)
    previous[:, :5] = 3
    current = np.zeros((10, 10), np.int64)
    current[:, 3:8] = 1  # IoU with id 3: 2 columns of 8 = 0.25
    assert link_ids(previous, current[None], 0.5, next_id=4)[1] == 4
    assert link_ids(previous, current[None], 0.2, next_id=4)[1] == 3


def test_one_to_one_the_best_overlap_wins():
    previous = np.zeros((10, 10), np.int64)
    previous[:, :6] = 7
    current = np.zeros((10, 10), np.int64)
    current[:, :5] = 1  # IoU 5/6 with 7
    current[:, 5:7] = 2  # IoU 1/7 with 7: not a second continuation of 7
    lut = link_ids(previous, current[None], 0.1, next_id=8)
    assert lut[1] == 7 and lut[2] == 8
