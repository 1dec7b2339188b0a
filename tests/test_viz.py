"""Overlay pictures: one stable colour per trajectory id, grids, PNG and GIF files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trajtok.viz import (
    BOUNDARY_COLOUR,
    boundary_mask,
    comparison_picture,
    overlay_frames,
    overlay_grid,
    stack_pictures,
    trajectory_colours,
    write_gif,
    write_png,
)


def _clip(t: int = 4, h: int = 20, w: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    labels = np.zeros((t, h, w), np.uint16)
    for k in range(t):  # three trajectories moving right, unlabeled strip on top
        labels[k, 5:, : 10 + k] = 1
        labels[k, 5:, 10 + k : 20 + k] = 7
        labels[k, 5:, 20 + k :] = 300
    return frames, labels


def test_colours_depend_only_on_the_id():
    first = trajectory_colours(np.arange(129))
    again = trajectory_colours(np.array([128, 5, 0]))
    np.testing.assert_array_equal(again, first[[128, 5, 0]])
    assert tuple(first[0]) == (0, 0, 0)
    assert len({tuple(c) for c in first[1:]}) == 128  # every id of a capped map is told apart


def test_overlay_follows_the_ids():
    frames, labels = _clip()
    alpha = 0.55
    out = overlay_frames(frames, labels, alpha=alpha)
    edges = boundary_mask(labels)
    assert np.all(out[edges] == BOUNDARY_COLOUR)
    colours = trajectory_colours(np.array([1, 7, 300])).astype(np.float32)
    for k, colour in zip((1, 7, 300), colours):
        inside = (labels == k) & ~edges
        expected = np.round((1 - alpha) * frames[inside].astype(np.float32) + alpha * colour)
        np.testing.assert_array_equal(out[inside], expected.astype(np.uint8))
    unlabeled = (labels == 0) & ~edges
    np.testing.assert_array_equal(out[unlabeled], np.round(0.5 * frames[unlabeled]).astype(np.uint8))


def test_low_resolution_labels_are_drawn_at_frame_size():
    frames, labels = _clip(h=20, w=32)
    small = labels[:, ::4, ::4]  # a model predicts at 1/4 resolution
    out = overlay_frames(frames, small)
    assert out.shape == frames.shape
    with pytest.raises(ValueError, match="T = 4"):
        overlay_frames(frames, labels[:2])


def test_grid_layout():
    frames, labels = _clip(t=6, h=10, w=12)
    grid = overlay_grid(frames, labels)
    assert grid.shape == (2 * 10 + 2, 3 * 12 + 2 * 2, 3) and grid.dtype == np.uint8
    assert overlay_grid(frames, labels, columns=6).shape == (10, 6 * 12 + 5 * 2, 3)
    tiles = overlay_frames(frames, labels)
    np.testing.assert_array_equal(grid[12:22, 14:26], tiles[4])  # second row, second column


def test_png_and_gif_files(tmp_path):
    frames, labels = _clip()
    picture = overlay_grid(frames, labels)
    png = write_png(tmp_path / "a" / "grid.png", picture)
    np.testing.assert_array_equal(np.asarray(Image.open(png).convert("RGB")), picture)
    flat = np.full_like(frames, 128)  # plain frames: a trajectory's pixels share one colour in every frame
    gif = write_gif(tmp_path / "clip.gif", overlay_frames(flat, labels), fps=5)
    with Image.open(gif) as image:
        assert image.n_frames == len(frames)
        decoded = []
        for index in range(image.n_frames):
            image.seek(index)
            decoded.append(np.asarray(image.convert("RGB")))
    inside = (labels[0] == 7) & ~boundary_mask(labels)[0]
    colour = decoded[0][inside][0]
    for k, frame in enumerate(decoded):
        region = (labels[k] == 7) & ~boundary_mask(labels)[k]
        assert np.all(frame[region] == colour)


def test_comparison_picture_rows_are_frames_then_each_map_upscaled():
    frames = np.random.default_rng(0).integers(0, 256, (8, 16, 24, 3), dtype=np.uint8)
    labels = np.ones((8, 4, 6), np.uint16)
    labels[:, :2] = 2
    picture = comparison_picture(frames, [labels, None, labels], frames_shown=4, min_size=64)
    # 4 frames of 64x96 (16 px short side upscaled 4x) in 3 rows (None is skipped), 2 px gaps
    assert picture.shape == (3 * 64 + 2 * 2, 4 * 96 + 3 * 2, 3)
    plain, tinted = picture[:64, :96], picture[66:130, :96]
    assert not np.array_equal(plain, tinted)
    assert (tinted == 255).all(axis=-1).any()  # the outline between the two trajectories
    stacked = stack_pictures([picture, picture[:, :50]], gap=6)
    assert stacked.shape == (2 * picture.shape[0] + 6, picture.shape[1], 3)
