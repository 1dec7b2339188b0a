"""Augmentation: frames and label maps share one geometry (in the workers); colour changes touch frames only
(drawn in the workers, applied batched on the device, checked against a per-clip numpy/OpenCV reference)."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
import torch

from trajtok.data.augment import AugmentParams, augment_clip, center_clip, colour_draws, random_resized_box
from trajtok.data.colour import NO_COLOUR, apply_colour
from trajtok.data.labels import resize_labels
from trajtok.data.synth import generate_clip

PALETTE = np.array([[0, 0, 0], [230, 40, 40], [40, 220, 40], [40, 40, 230], [230, 230, 40]], dtype=np.uint8)
GEOMETRY_ONLY = AugmentParams(jitter=0.0, grey=0.0, blur=0.0)


def _blocks(t: int = 4, h: int = 96, w: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Labels of large moving rectangles, and frames painted with one colour per label id."""
    labels = np.zeros((t, h, w), np.uint16)
    for i in range(t):
        labels[i, 10:60, 5 + 4 * i : 50 + 4 * i] = 1
        labels[i, 40:90, 70 - 3 * i : 120 - 3 * i] = 2
        labels[i, 0:30, 60:100] = 3
        labels[i, 70:96, 0:40] = 4
    return PALETTE[labels], labels


def _ids_from_colour(frames: np.ndarray) -> np.ndarray:
    distance = ((frames[..., None, :].astype(int) - PALETTE.astype(int)) ** 2).sum(-1)
    return distance.argmin(-1).astype(np.uint16)


@pytest.mark.parametrize("seed", range(6))
def test_frames_and_labels_share_crop_and_flip(seed: int):
    frames, labels = _blocks()
    out_frames, out_labels, colour = augment_clip(
        frames, labels, 64, GEOMETRY_ONLY, np.random.default_rng(seed)
    )
    assert np.array_equal(colour, NO_COLOUR)
    assert out_frames.shape == (4, 64, 64, 3) and out_labels.shape == (4, 16, 16)
    seen = resize_labels(_ids_from_colour(out_frames), (16, 16))  # what the frames show, on the label grid
    assert (seen == out_labels).mean() > 0.95  # only pixels on region edges may differ (area resampling)


def test_flip_mirrors_frames_and_labels_together():
    frames, labels = _blocks()
    rng = np.random.default_rng(3)
    kept = augment_clip(frames, labels, 64, AugmentParams(flip=0.0, jitter=0, grey=0, blur=0), rng)
    rng = np.random.default_rng(3)
    flipped = augment_clip(frames, labels, 64, AugmentParams(flip=1.0, jitter=0, grey=0, blur=0), rng)
    assert np.array_equal(flipped[0], kept[0][:, :, ::-1]) and np.array_equal(flipped[1], kept[1][:, :, ::-1])


def _coloured(frames: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) frames through `apply_colour` as a batch of one clip would go."""
    batch = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)[None]
    return apply_colour(batch, torch.from_numpy(colour)[None])[0].permute(0, 2, 3, 1).numpy()


def test_colour_changes_leave_labels_alone():
    frames, labels = _blocks()
    plain = augment_clip(frames, labels, 64, GEOMETRY_ONLY, np.random.default_rng(0))
    loud = AugmentParams(jitter=1.0, jitter_strength=0.5, grey=1.0, blur=1.0)
    changed = augment_clip(frames, labels, 64, loud, np.random.default_rng(0))
    assert np.array_equal(plain[0], changed[0]) and np.array_equal(plain[1], changed[1])  # geometry alike
    before, after = plain[0], _coloured(changed[0], changed[2])
    assert not np.array_equal(before, after)
    assert np.array_equal(after[..., 0], after[..., 1])  # grey: R = G = B
    assert (
        np.abs(np.diff(after.astype(int), axis=2)).mean() < np.abs(np.diff(before.astype(int), axis=2)).mean()
    )


def test_the_same_draws_for_every_frame_of_a_clip():
    frames = np.repeat(_blocks()[0][:1], 4, axis=0)  # four identical frames
    out, _, colour = augment_clip(
        frames, None, 64, AugmentParams(jitter=1.0, grey=0.5, blur=0.5), np.random.default_rng(1)
    )
    out = _coloured(out, colour)
    assert all(np.array_equal(out[0], f) for f in out[1:])


_GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _reference(frames: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """The worker-side colour augmentation the device one replaced (numpy and OpenCV, one clip)."""
    jitter, brightness, contrast, saturation, grey, sigma = colour
    if jitter:
        x = frames.astype(np.float32) * brightness
        mean = float((x @ _GREY).mean())
        x = (x - mean) * contrast + mean
        grey_x = (x @ _GREY)[..., None]
        x = grey_x + (x - grey_x) * saturation
        frames = np.clip(x + 0.5, 0, 255).astype(np.uint8)
    if grey:
        grey_frames = (frames.astype(np.float32) @ _GREY + 0.5).astype(np.uint8)
        frames = np.repeat(grey_frames[..., None], 3, axis=-1)
    if sigma:
        frames = np.stack([cv2.GaussianBlur(np.ascontiguousarray(f), (0, 0), float(sigma)) for f in frames])
    return frames


def test_device_colour_matches_the_worker_side_reference():
    """A batch of 12 real-looking clips with every change drawn often: on average within 1 grey level of
    the per-clip reference (blur rounds in fixed point in OpenCV), never far off."""
    params = AugmentParams(jitter=0.8, jitter_strength=0.4, grey=0.3, blur=0.5)
    clips = [generate_clip(seed, 4, 72, 96).frames for seed in range(12)]
    draws = np.stack([colour_draws(params, np.random.default_rng(seed)) for seed in range(12)])
    assert draws[:, 0].sum() >= 4 and draws[:, 4].sum() >= 1 and (draws[:, 5] > 0).sum() >= 3  # all used
    batch = torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3)
    out = apply_colour(batch, torch.from_numpy(draws)).permute(0, 1, 3, 4, 2).numpy().astype(int)
    for clip, row, got in zip(clips, draws, out):
        want = _reference(clip, row).astype(int)
        assert np.abs(got - want).mean() <= 1.0 and np.abs(got - want).max() <= 3, row
    assert np.array_equal(apply_colour(batch, torch.from_numpy(np.tile(NO_COLOUR, (12, 1)))), batch)


def test_crop_box_stays_inside_and_covers_the_scale():
    params = AugmentParams(crop_scale=(0.3, 0.6))
    rng = np.random.default_rng(0)
    for _ in range(200):
        box = random_resized_box(90, 160, params, rng)
        box.check_inside(90, 160)
        assert 0.25 <= box.height * box.width / (90 * 160) <= 0.65


def test_center_clip_is_the_evaluation_view():
    frames, labels = _blocks(h=96, w=128)
    out_frames, out_labels = center_clip(frames, labels, 64)
    assert out_frames.shape == (4, 64, 64, 3) and out_labels.shape == (4, 16, 16)
    assert (resize_labels(_ids_from_colour(out_frames), (16, 16)) == out_labels).mean() > 0.95
    assert np.array_equal(center_clip(frames, labels, 64)[0], out_frames)


def test_augment_speed_at_paper_resolution():
    """16 frames of 256 short side to 224, crop and flip in the worker, colour on the device: cheap next to
    decoding."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (16, 256, 340, 3), dtype=np.uint8)
    labels = rng.integers(0, 20, (16, 256, 340), dtype=np.uint16)
    start = time.perf_counter()
    for _ in range(3):
        out, _, colour = augment_clip(frames, labels, 224, AugmentParams(jitter=1.0, grey=0.0, blur=1.0), rng)
        _coloured(out, colour)
    per_clip = (time.perf_counter() - start) / 3
    assert per_clip < 0.5, f"{per_clip * 1000:.0f} ms per clip"
