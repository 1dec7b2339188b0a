"""The synthetic dataset: deterministic, exact labels under occlusion, captions read off the video, and
`trajtok synth` writing a manifest whose rows point to real, decodable files."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from launch.cli import main
from trajtok.data.encode import write_video
from trajtok.data.labels import load_labels
from trajtok.data.synth import generate_clip
from trajtok.data.synth_render import render_scene
from trajtok.data.synth_scene import COLOURS, MOTIONS, SHAPES, ObjectSpec, Scene

_PALETTE = np.array(list(COLOURS.values()), np.float64)


def _nearest_colour(pixels: np.ndarray) -> str:
    """Palette name whose chromaticity (rgb / sum) is closest to the pixels' mean."""
    mean = pixels.reshape(-1, 3).mean(0)
    chroma = _PALETTE / _PALETTE.sum(1, keepdims=True)
    return list(COLOURS)[int(np.argmin(np.linalg.norm(chroma - mean / mean.sum(), axis=1)))]


def _still(colour: str, shape: str, centre: tuple[float, float], radius: float, pan, seed: int) -> ObjectSpec:
    """An object standing still in the world (the camera pan carries it across the screen)."""
    end = (centre[0] - pan[0], centre[1] - pan[1])
    return ObjectSpec(colour, shape, "rotating", "stripes", radius, centre, end, texture_seed=seed)


def test_same_seed_same_clip_different_seed_different_clip():
    a, b, c = generate_clip(7, 8, 64, 64), generate_clip(7, 8, 64, 64), generate_clip(8, 8, 64, 64)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.labels, b.labels)
    assert a.caption == b.caption and a.metadata == b.metadata
    assert not np.array_equal(a.frames, c.frames)
    assert a.frames.shape == (8, 64, 64, 3) and a.frames.dtype == np.uint8
    assert a.labels.shape == (8, 64, 64) and a.labels.dtype == np.uint16


def test_occlusion_label_is_the_front_object():
    pan = (3.0, -2.0)
    back = _still("red", "square", (36.0, 40.0), 22.0, pan, seed=1)
    front = _still("blue", "circle", (52.0, 46.0), 14.0, pan, seed=2)
    both, back_only, front_only = (
        render_scene(Scene(objects, pan, background_seed=5), 4, 80, 96)
        for objects in ((back, front), (back,), (front,))
    )
    front_mask, back_mask = front_only[1] > 0, back_only[1] > 0
    assert (front_mask & back_mask).sum() > 100, "the scene must have an overlap to test"
    behind = back_mask & ~front_mask
    assert behind.sum() > 100
    labels, frames = both[1], both[0]
    assert np.all(labels[front_mask] == 2)
    assert np.all(labels[behind] == 1)
    assert np.all(labels[~(front_mask | back_mask)] == 0)
    assert np.array_equal(frames[front_mask], front_only[0][front_mask])
    assert np.array_equal(frames[behind], back_only[0][behind])
    # each labelled area shows its object's texture: the right hue, and not a flat colour
    for label, colour in ((1, "red"), (2, "blue")):
        pixels = frames[labels == label].astype(np.float64)
        assert _nearest_colour(pixels) == colour
        assert pixels.std(0).max() > 15


def test_ids_stable_and_entering_object_appears_after_entry():
    height, width, frames = 64, 96, 12
    mover = ObjectSpec("green", "star", "moving right", "checks", 9.0, (14.0, 16.0), (60.0, 16.0))
    comer = ObjectSpec(
        "yellow", "triangle", "entering from the left", "dots", 9.0, (-10.0, 46.0), (50.0, 46.0)
    )
    _, labels, _ = render_scene(Scene((mover, comer), pan=(4.0, 1.0)), frames, height, width)
    present = np.array([[np.any(frame == k) for k in (1, 2)] for frame in labels])
    assert set(np.unique(labels)) == {0, 1, 2}
    assert present[:, 0].all()
    assert not present[0, 1] and present[-1, 1]
    entry = int(np.argmax(present[:, 1]))
    assert present[entry:, 1].all(), "once in, the entering object keeps its id in every frame"
    xs = [np.nonzero(frame == 1)[1].mean() for frame in labels]
    assert np.all(np.diff(xs) > 0), "id 1 follows the same object rightwards"


_SEEDS = range(20)  # together they show every motion and shape (checked below)


def test_checked_seeds_cover_the_vocabulary():
    objects = [o for seed in _SEEDS for o in generate_clip(seed, 10, 64, 80).metadata["objects"]]
    assert {o["motion"] for o in objects} == set(MOTIONS)
    assert {o["shape"] for o in objects} == set(SHAPES)
    assert {len(generate_clip(seed, 10, 64, 80).metadata["objects"]) for seed in _SEEDS} == {1, 2, 3, 4}


@pytest.mark.parametrize("seed", _SEEDS)
def test_labels_and_caption_follow_the_scene(seed: int):
    clip = generate_clip(seed, 10, 64, 80)
    objects = clip.metadata["objects"]
    count = ("one", "two", "three", "four")[len(objects) - 1]
    assert clip.caption.startswith(count + (" object:" if len(objects) == 1 else " objects:"))
    assert set(np.unique(clip.labels)) - {0} == {o["id"] for o in objects}
    for colour in set(COLOURS) - {o["colour"] for o in objects}:
        assert colour not in clip.caption
    for obj in objects:
        assert f"{obj['colour']} {obj['shape']} {obj['motion']}" in clip.caption
        mask = clip.labels == obj["id"]
        shown = np.flatnonzero(mask.any(axis=(1, 2)))
        assert (shown[0], shown[-1]) == (obj["first_frame"], obj["last_frame"])
        assert _nearest_colour(clip.frames[mask].astype(np.float64)) == obj["colour"]
        if obj["motion"].startswith("entering"):
            assert obj["first_frame"] > 0
        if obj["motion"].startswith("leaving"):
            assert obj["last_frame"] < len(clip.frames) - 1
        _check_motion_is_visible(obj["motion"], mask[shown])


def _check_motion_is_visible(motion: str, masks: np.ndarray) -> None:
    """The caption's motion word can be read off the label map: direction of travel or change of size
    (the largest area near each end, so a frame where the object is half hidden does not decide)."""
    (y0, x0), (y1, x1) = (np.argwhere(m).mean(0) for m in (masks[0], masks[-1]))
    direction = {"left": x0 - x1, "right": x1 - x0, "up": y0 - y1, "down": y1 - y0}
    areas = masks.sum(axis=(1, 2))
    early, late = areas[:3].max(), areas[-3:].max()
    if motion.startswith("moving"):
        assert direction[motion.split()[1]] > 10
    elif motion == "growing":
        assert late > 1.5 * early
    elif motion == "shrinking":
        assert early > 1.5 * late
    elif motion.startswith(("entering", "leaving")):
        way = {"entering from the left": "right", "leaving to the right": "right"}.get(motion, "left")
        assert direction[way] > 0


def test_written_video_decodes_to_the_generated_frames(tmp_path):
    clip = generate_clip(3, 16, 112, 112)
    path = write_video(tmp_path / "clip.mp4", clip.frames, fps=8.0)
    with av.open(str(path)) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert decoded.shape == clip.frames.shape
    assert np.abs(decoded.astype(np.int16) - clip.frames).mean() < 5


def test_cli_writes_manifest_reuses_it_and_rewrites_on_change(tmp_path, capsys):
    out = tmp_path / "synth"
    args = [
        "synth",
        f"synth.out={out}",
        "synth.videos=32",
        "synth.frames=4",
        "synth.height=32",
        "synth.width=48",
    ]
    assert main(args) == 0
    assert "wrote 32 clips" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 32 and len({r["caption"] for r in rows}) == 32, "one right answer per clip"
    for row in rows:
        assert set(row) == {"id", "video", "caption", "gt_labels"}
        labels = load_labels(out / row["gt_labels"])
        assert labels.shape == (4, 32, 48) and labels.dtype == np.uint16
    with av.open(str(out / rows[0]["video"])) as container:
        assert sum(1 for _ in container.decode(video=0)) == 4

    stamp = (out / rows[0]["video"]).stat().st_mtime_ns
    assert main(args) == 0
    assert "reused 32 clips" in capsys.readouterr().out
    assert (out / rows[0]["video"]).stat().st_mtime_ns == stamp

    assert main([*args[:2], "synth.videos=3", *args[3:]]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and len(list((out / "videos").glob("*.mp4"))) == 3
    assert len(list((out / "labels").glob("*.npz"))) == 3


def test_cli_rejects_odd_size_in_one_line(tmp_path, capsys):
    assert main(["synth", f"synth.out={tmp_path}", "synth.height=63"]) == 2
    err = capsys.readouterr().err.strip()
    assert "synth.height=63" in err and len(err.splitlines()) == 1
