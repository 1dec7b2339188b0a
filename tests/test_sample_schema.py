"""Shard sample contract: build -> (tar) -> validate/decode round trips, and one error per wrong field."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import webdataset as wds

from trajtok.data.labels import relabel, resize_frames, resize_labels, short_side_size
from trajtok.data.sample import (
    SCHEMA_VERSION,
    LabelerInfo,
    SampleMeta,
    build_sample,
    decode_sample,
    sample_key,
    validate_sample,
)
from trajtok.data.video import load_clip
from trajtok.errors import SchemaError

LABELER = LabelerInfo("test-blocks", "1", {"block": 16})


@pytest.fixture(scope="module")
def clip(shared_videos):
    """8 frames of the real plaza video from 2 s to 6 s, at short side 64, with a block label map."""
    source = str(shared_videos / "vtest.avi")
    frames, times, info = load_clip(source, 8, "middle", start=2.0, end=6.0)
    size = short_side_size(info.height, info.width, 64, multiple=2)
    grid = np.arange(1, 13, dtype=np.uint16).reshape(3, 4)  # 12 regions over the full-size frame
    full = np.kron(grid, np.ones((info.height // 3, info.width // 4), dtype=np.uint16))
    labels = relabel(resize_labels(np.repeat(full[None], 8, axis=0), size))
    labels[2:, :8, :8] = 0  # some unlabeled pixels
    return {
        "frames": resize_frames(frames, size),
        "labels": labels,
        "kwargs": dict(
            source=source,
            clip_index=0,
            clip_start=2.0,
            clip_end=6.0,
            timestamps=times.tolist(),
            captions=["people walk across a plaza", "pedestrians near a lamp post"],
            source_fps=info.fps,
            source_width=info.width,
            source_height=info.height,
            labeler=LABELER,
            extra={"id": "vtest"},
        ),
    }


@pytest.fixture(scope="module")
def sample(clip):
    return build_sample(clip["frames"], clip["labels"], **clip["kwargs"])


def edit_meta(sample: dict, **changes) -> dict:
    meta = json.loads(sample["json"])
    for name, value in changes.items():
        if value is DROP:
            del meta[name]
        else:
            meta[name] = value
    return {**sample, "json": json.dumps(meta).encode()}


DROP = object()


# --- round trips -------------------------------------------------------------------------------------


def test_mp4_sample_round_trip_on_a_real_video(clip, sample):
    assert set(sample) == {"__key__", "json", "mp4", "labels.npz"}
    assert sample["__key__"] == sample_key(clip["kwargs"]["source"], 0, 2.0, 6.0)
    validate_sample(sample, decode_frames=True)
    decoded = decode_sample(sample)
    assert decoded.key == sample["__key__"] and not decoded.is_image
    assert decoded.frames.shape == clip["frames"].shape == (8, 64, 86, 3)
    assert np.abs(decoded.frames.astype(int) - clip["frames"]).mean() < 4  # H.264 at crf 18
    assert np.array_equal(decoded.labels, clip["labels"])
    meta = decoded.meta
    assert meta.schema_version == SCHEMA_VERSION
    assert meta.captions == clip["kwargs"]["captions"]
    assert (meta.frame_count, meta.height, meta.width) == (8, 64, 86)
    assert (meta.source_width, meta.source_height, meta.source_fps) == (768, 576, 10.0)
    assert meta.timestamps == pytest.approx(clip["kwargs"]["timestamps"])
    assert meta.timestamps[0] >= 2.0 and meta.timestamps[-1] < 6.0
    assert meta.labeler == LABELER and meta.num_trajectories == 12
    assert meta.extra == {"id": "vtest"}


def test_samples_survive_a_webdataset_tar(tmp_path, clip, sample):
    image = build_sample(
        clip["frames"][:1], clip["labels"][:1], **{**clip["kwargs"], "clip_index": 1, "timestamps": [2.5]}
    )
    frames_variant = build_sample(
        clip["frames"], clip["labels"], **{**clip["kwargs"], "clip_index": 2}, frame_format="png"
    )
    path = tmp_path / "shard-000000.tar"
    with wds.TarWriter(str(path)) as sink:
        for s in (sample, image, frames_variant):
            sink.write(s)
    read = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [r["__key__"] for r in read] == [sample["__key__"], image["__key__"], frames_variant["__key__"]]
    for original, raw in zip((sample, image, frames_variant), read):
        assert {k for k in raw if not k.startswith("__")} == {k for k in original if k != "__key__"}
        validate_sample(raw, decode_frames=True)
        assert np.array_equal(decode_sample(raw).labels, decode_sample(original).labels)


def test_frames_variants(clip):
    png = build_sample(clip["frames"], clip["labels"], **clip["kwargs"], frame_format="png")
    jpg = build_sample(clip["frames"], clip["labels"], **clip["kwargs"], frame_format="jpg")
    assert sorted(k for k in png if k.endswith(".png")) == [f"{i:03d}.png" for i in range(8)]
    assert "mp4" not in png and "mp4" not in jpg
    assert np.array_equal(decode_sample(png).frames, clip["frames"])  # lossless
    # q95 with 4:2:0 chroma: about the mp4's own error on these small frames (3.1 grey levels)
    assert np.abs(decode_sample(jpg).frames.astype(int) - clip["frames"]).mean() < 4
    assert png["__key__"] == jpg["__key__"]  # the key depends on the clip, not on how frames are stored


def test_image_and_unlabelled_samples(clip):
    kwargs = {**clip["kwargs"], "source": "photos/cat.jpg", "clip_start": 0, "clip_end": 0}
    kwargs.update(timestamps=[0.0], source_fps=None, labeler=None)
    jpg = build_sample(clip["frames"][:1], None, **kwargs)
    assert set(jpg) == {"__key__", "json", "jpg"}
    decoded = decode_sample(jpg)
    assert decoded.is_image and decoded.labels is None and decoded.frames.shape == (1, 64, 86, 3)
    assert decoded.meta.labeler is None and decoded.meta.num_trajectories is None
    png = build_sample(
        clip["frames"][:1], clip["labels"][:1], **{**kwargs, "labeler": LABELER}, frame_format="png"
    )
    assert set(png) == {"__key__", "json", "png", "labels.npz"}
    assert decode_sample(png).meta.num_trajectories == 12
    unlabelled_clip = build_sample(clip["frames"], None, **{**clip["kwargs"], "labeler": None})
    assert "labels.npz" not in unlabelled_clip and decode_sample(unlabelled_clip).labels is None


def test_sample_keys_are_stable_safe_and_distinct():
    key = sample_key("s3://bucket/raw/My Video.v2.mp4", 3, 1.5, 4.0)
    assert re.fullmatch(r"My_Video-[0-9a-f]{12}-c0003", key)
    assert key == sample_key("s3://bucket/raw/My Video.v2.mp4", 3, 1.5, 4.0)
    others = {
        sample_key("s3://bucket/raw/My Video.v2.mp4", 4, 1.5, 4.0),
        sample_key("s3://bucket/raw/My Video.v2.mp4", 3, 1.5, 4.5),
        sample_key("s3://bucket/other/My Video.v2.mp4", 3, 1.5, 4.0),
    }
    assert key not in others and len(others) == 3
    for source in ("/data/клип.mp4", "..", "", "a.b.c/d.e.f", "C:\\videos\\x y.avi"):
        k = sample_key(source, 0, 0.0, 1.0)
        assert re.fullmatch(r"[A-Za-z0-9_-]+", k) and "." not in k, k


# --- every field is checked and named --------------------------------------------------------------------

FIELDS = [f.name for f in dataclasses.fields(SampleMeta) if f.name not in ("extra", "source_decode")]


@pytest.mark.parametrize("name", FIELDS)
def test_missing_field_is_named(sample, name):
    with pytest.raises(SchemaError, match=rf"^sample {sample['__key__']}: {name}: missing$"):
        validate_sample(edit_meta(sample, **{name: DROP}))


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"schema_version": 2}, "schema_version", "2 is not supported"),
        ({"schema_version": "1"}, "schema_version", "expected an integer"),
        ({"captions": []}, "captions", "non-empty list"),
        ({"captions": "a single string"}, "captions", "non-empty list"),
        ({"captions": ["ok", " "]}, "captions", "every caption must be a non-empty string"),
        ({"source": ""}, "source", "non-empty string"),
        ({"clip_index": -1}, "clip_index", "integer >= 0"),
        ({"clip_start": -0.5}, "clip_start", "must not be negative"),
        ({"clip_start": "2"}, "clip_start", "finite number"),
        ({"clip_end": 2.0}, "clip_end", "must come after clip_start"),
        ({"clip_end": float("nan")}, "clip_end", "finite number"),
        ({"timestamps": [2.5] * 7}, "timestamps", "frame_count=8"),
        ({"timestamps": [5.0, 2.5, 3, 3.5, 4, 4.5, 5, 5.5]}, "timestamps", "must not decrease"),
        ({"timestamps": [6.5] * 8}, "timestamps", "outside the clip"),
        ({"timestamps": [2.5, 3, 3, 3, 3, 3, 3, None]}, "timestamps", "finite number"),
        ({"frame_count": 0}, "frame_count", "integer >= 1"),
        ({"frame_count": True}, "frame_count", "integer >= 1"),
        ({"height": 64.0}, "height", "integer >= 1"),
        ({"width": 0}, "width", "integer >= 1"),
        ({"source_fps": None}, "source_fps", "needs the original video's fps"),
        ({"source_fps": 0}, "source_fps", "must be positive"),
        ({"source_width": "768"}, "source_width", "integer"),
        ({"source_height": None}, "source_height", "integer"),
        (
            {"labeler": "classical"},
            "labeler",
            "expected {name, version, params} with an optional source, or null",
        ),
        ({"labeler": {"name": "x", "version": "1"}}, "labeler", "expected {name, version, params}"),
        ({"labeler": {"name": "", "version": "1", "params": {}}}, "labeler.name", "non-empty string"),
        ({"labeler": {"name": "x", "version": 1, "params": {}}}, "labeler.version", "non-empty string"),
        ({"labeler": {"name": "x", "version": "1", "params": []}}, "labeler.params", "JSON object"),
        ({"num_trajectories": 11}, "num_trajectories", "says 11, labels.npz has 12"),
        ({"num_trajectories": None}, "num_trajectories", "integer >= 0"),
        ({"extra": ["x"]}, "extra", "JSON object"),
        ({"colour": "red"}, "colour", "not a field of the sample contract"),
    ],
)
def test_wrong_field_is_named(sample, changes, field, message):
    with pytest.raises(SchemaError, match=rf"^sample {sample['__key__']}: {re.escape(field)}: .*{message}"):
        validate_sample(edit_meta(sample, **changes))


def test_label_map_must_match_the_frames(clip, sample):
    other = build_sample(clip["frames"][:, :, :84], clip["labels"][:, :, :84], **clip["kwargs"])
    mixed = {**sample, "labels.npz": other["labels.npz"]}
    with pytest.raises(SchemaError, match=r"labels\.npz: frames are 64x84 \(HxW\), the clip's are 64x86"):
        validate_sample(mixed)
    with pytest.raises(SchemaError, match=r"labels\.npz: not a readable \.npz"):
        validate_sample({**sample, "labels.npz": b"garbage"})
    unlabelled = edit_meta(sample, labeler=None, num_trajectories=None)
    with pytest.raises(SchemaError, match=r": labeler: null, but the sample has labels\.npz"):
        validate_sample(unlabelled)
    with pytest.raises(SchemaError, match=r": labels\.npz: missing \(the json names labeler 'test-blocks'\)"):
        validate_sample({k: v for k, v in sample.items() if k != "labels.npz"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: {**s, "__key__": "vtest.clip-0"}, r"^sample 'vtest\.clip-0': __key__: "),
        (lambda s: {k: v for k, v in s.items() if k != "__key__"}, r"^sample None: __key__: "),
        (lambda s: {**s, "__key__": "vtest\n"}, r"^sample 'vtest\\n': __key__: "),
        (lambda s: {k: v for k, v in s.items() if k != "json"}, r": json: missing$"),
        (lambda s: {**s, "json": b"{not json"}, r": json: not valid JSON"),
        (lambda s: {**s, "json": b"[1, 2]"}, r": json: expected a JSON object$"),
        (lambda s: {**s, "txt": b"hello"}, r": txt: not an entry of the sample contract$"),
        (lambda s: {**s, "mp4": "text, not bytes"}, r": mp4: expected bytes, got str$"),
        (lambda s: {**s, "jpg": b"\xff\xd8"}, r": mp4: a clip has one mp4 or one image per frame"),
        (lambda s: {k: v for k, v in s.items() if k != "mp4"}, r": mp4: a clip has one mp4 or one image"),
    ],
)
def test_wrong_entries_are_named(sample, change, message):
    with pytest.raises(SchemaError, match=message):
        validate_sample(change(sample))


def test_per_frame_entries_must_be_complete(clip):
    png = build_sample(clip["frames"], clip["labels"], **clip["kwargs"], frame_format="png")
    gap = {k: v for k, v in png.items() if k != "005.png"}
    with pytest.raises(
        SchemaError, match=r": frames: expected 8 entries numbered 0\.\.7 of one image type, got 7"
    ):
        validate_sample(gap)
    mixed = {**{k: v for k, v in png.items() if k != "005.png"}, "005.jpg": png["005.png"]}
    with pytest.raises(SchemaError, match=r"got 8 \(jpg, png\)"):
        validate_sample(mixed)
    image = build_sample(clip["frames"][:1], clip["labels"][:1], **{**clip["kwargs"], "timestamps": [2.5]})
    with pytest.raises(SchemaError, match=r": jpg: an image sample \(frame_count 1\) has one jpg or png"):
        validate_sample({**image, "png": image["jpg"]})


def test_frames_are_checked_when_decoded(clip, sample):
    smaller = build_sample(clip["frames"][:, :, :84], clip["labels"][:, :, :84], **clip["kwargs"])
    swapped = {**sample, "mp4": smaller["mp4"]}
    validate_sample(swapped)  # cheap checks cannot see inside the video
    with pytest.raises(
        SchemaError, match=r": mp4: decodes to \(8, 64, 84, 3\), the json says \(8, 64, 86, 3\)"
    ):
        validate_sample(swapped, decode_frames=True)
    fewer = build_sample(clip["frames"][:6], clip["labels"][:6], **{**clip["kwargs"], "timestamps": [3] * 6})
    with pytest.raises(SchemaError, match=r": mp4: decodes to \(6, 64, 86, 3\)"):
        decode_sample({**sample, "mp4": fewer["mp4"]})
    with pytest.raises(SchemaError, match=rf"^sample {sample['__key__']}: mp4: "):
        decode_sample({**sample, "mp4": sample["mp4"][: len(sample["mp4"]) // 3]})
    png = build_sample(clip["frames"], clip["labels"], **clip["kwargs"], frame_format="png")
    with pytest.raises(SchemaError, match=r": 003\.png: not a readable image"):
        decode_sample({**png, "003.png": b"\x89PNG broken"})


# --- the builder refuses what the reader would refuse -------------------------------------------------------


def test_build_errors(clip):
    frames, labels, kwargs = clip["frames"], clip["labels"], clip["kwargs"]
    with pytest.raises(SchemaError, match=r"^sample .*: mp4: H\.264 needs even height and width, got 63x86"):
        build_sample(frames[:, :63], labels[:, :63], **kwargs)
    assert "000.jpg" in build_sample(frames[:, :63], labels[:, :63], **kwargs, frame_format="jpg")
    with pytest.raises(SchemaError, match=r"^frame_format: 'gif' is not one of"):
        build_sample(frames, labels, **kwargs, frame_format="gif")
    with pytest.raises(SchemaError, match=r"^frames: expected a \(T, H, W, 3\) uint8 array"):
        build_sample(frames.astype(np.float32), labels, **kwargs)
    with pytest.raises(SchemaError, match=r"^labels\.npz: has 8 frames, the clip has 7"):
        build_sample(frames[:7], labels, **kwargs)
    with pytest.raises(SchemaError, match=r"^labeler: give both labels and labeler, or neither"):
        build_sample(frames, None, **kwargs)
    with pytest.raises(SchemaError, match=r": timestamps: expected a list of frame_count=8 numbers"):
        build_sample(frames, labels, **{**kwargs, "timestamps": [2.5, 3.0]})
    with pytest.raises(SchemaError, match=r": json: cannot be written as JSON"):
        build_sample(frames, labels, **{**kwargs, "extra": {"when": object()}})
    with pytest.raises(SchemaError, match=r": captions: every caption must be a non-empty string"):
        build_sample(frames, labels, **{**kwargs, "captions": ""})
    described = {
        "name": "classical",
        "version": "3",
        "params": {"min_area": 4},
    }  # as Labeler.describe() gives
    assert decode_sample(build_sample(frames, labels, **{**kwargs, "labeler": described})).meta.labeler == (
        LabelerInfo("classical", "3", {"min_area": 4})
    )
