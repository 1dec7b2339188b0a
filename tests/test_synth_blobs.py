"""The second synthetic generator (`blobs`): deterministic, its captions read off the video, its labels exact
where objects cover each other, and written by `trajtok synth synth.generator=blobs` like the first."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from launch.cli import main
from trajtok.data.labels import load_labels
from trajtok.data.synth import generate_clip
from trajtok.data.synth_blobs import (
    HUES,
    MAX_OBJECTS,
    MOTIONS,
    SHAPES,
    BlobScene,
    render_scene,
    sample_scene,
)

_SEEDS = range(24)  # together they show every motion, shape and object count (checked below)


def _clip(seed: int):
    return generate_clip(seed, 10, 64, 80, "blobs")


def _hue_distance(a: np.ndarray, b: float) -> np.ndarray:
    d = np.abs(a - b) % 180
    return np.minimum(d, 180 - d)


def _named_hue(pixels: np.ndarray) -> str:
    """The colour word whose hue range is nearest the pixels' median hue (OpenCV hue, 0-180)."""
    hue = cv2.cvtColor(pixels.reshape(-1, 1, 3), cv2.COLOR_RGB2HSV)[:, 0, 0].astype(np.float64)
    angles = np.deg2rad(hue * 2)
    mean = np.rad2deg(np.arctan2(np.sin(angles).mean(), np.cos(angles).mean())) / 2 % 180
    centres = {name: (low + high) / 2 % 180 for name, (low, high) in HUES.items()}
    return min(centres, key=lambda name: float(_hue_distance(np.array(mean), centres[name])))


def test_same_seed_same_clip_and_unlike_the_first_generator():
    a, b = _clip(5), _clip(5)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.labels, b.labels)
    assert a.caption == b.caption and a.metadata == b.metadata
    assert not np.array_equal(a.frames, _clip(6).frames)
    shapes = generate_clip(5, 10, 64, 80)
    assert shapes.caption != a.caption and not np.array_equal(shapes.frames, a.frames)
    assert a.frames.shape == (10, 64, 80, 3) and a.labels.dtype == np.uint16


def test_checked_seeds_cover_the_vocabulary():
    clips = [_clip(seed) for seed in _SEEDS]
    objects = [o for clip in clips for o in clip.metadata["objects"]]
    assert {o["motion"] for o in objects} == set(MOTIONS)
    assert {o["shape"] for o in objects} == set(SHAPES)
    assert {len(clip.metadata["objects"]) for clip in clips} == set(range(1, MAX_OBJECTS + 1))


@pytest.mark.parametrize("seed", _SEEDS[:12])
def test_labels_and_caption_follow_the_scene(seed: int):
    clip = _clip(seed)
    objects = clip.metadata["objects"]
    count = ("one", "two", "three", "four", "five")[len(objects) - 1]
    assert clip.caption.startswith(count + (" object:" if len(objects) == 1 else " objects:"))
    assert set(np.unique(clip.labels)) - {0} == {o["id"] for o in objects}
    for colour in set(HUES) - {o["colour"] for o in objects}:
        assert f" {colour} " not in clip.caption
    for obj in objects:
        assert f"{obj['colour']} {obj['shape']} {obj['motion']}" in clip.caption
        mask = clip.labels == obj["id"]
        assert _named_hue(clip.frames[mask]) == obj["colour"]
        shown = np.flatnonzero(mask.any(axis=(1, 2)))
        (y0, x0), (y1, x1) = (np.argwhere(mask[t]).mean(0) for t in (shown[0], shown[-1]))
        travel = {"sliding left": x0 - x1, "sliding right": x1 - x0, "rising": y0 - y1, "falling": y1 - y0}
        if obj["motion"] in travel:
            assert travel[obj["motion"]] > 5, f"{obj['motion']}: the label map shows the motion"


def test_occlusion_label_is_the_front_object():
    """Two objects drawn on the same spot: where both cover a pixel the label is the front one's."""
    scenes = (sample_scene(np.random.default_rng(i), 64, 80) for i in range(50))
    back, front = next(s for s in scenes if len(s.objects) >= 2).objects[:2]
    back = dataclasses.replace(back, motion="resting")
    front = dataclasses.replace(front, centre=back.centre, motion="resting")

    def labels_of(*objects) -> np.ndarray:
        return render_scene(BlobScene(objects, (0.0, 0.0), 1.0, 1.0, 3), 3, 64, 80)[1]

    labels, back_only, front_only = labels_of(back, front), labels_of(back) > 0, labels_of(front) > 0
    assert (back_only & front_only).sum() > 20, "the scene must have an overlap to test"
    assert np.all(labels[front_only] == 2)
    assert np.all(labels[back_only & ~front_only] == 1)
    assert np.all(labels[~back_only & ~front_only] == 0)


def test_cli_writes_a_blobs_set_and_rejects_an_unknown_generator(tmp_path, capsys):
    out = tmp_path / "blobs"
    args = ["synth", f"synth.out={out}", "synth.videos=6", "synth.frames=4", "synth.height=32"]
    assert main([*args, "synth.width=48", "synth.generator=blobs"]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and len({r["caption"] for r in rows}) == 6
    assert load_labels(out / rows[0]["gt_labels"]).shape == (4, 32, 48)
    assert any(word in rows[0]["caption"] for word in SHAPES)
    capsys.readouterr()
    assert main([*args, "synth.generator=cubes"]) == 2
    err = capsys.readouterr().err.strip()
    assert "synth.generator=cubes" in err and "shapes, blobs" in err and len(err.splitlines()) == 1
