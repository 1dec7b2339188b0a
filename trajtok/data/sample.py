"""The shard sample contract: one WebDataset sample per clip, written by the pipeline, read by the loader.

A sample is a dict of entries (bytes), written to a tar as `<key>.<entry>`:
- `__key__`: `sample_key(source, clip_index, start, end)`: stable, only `[A-Za-z0-9_-]` (WebDataset splits
  a file name at its first dot, so a key must have none);
- the frames, exactly the T sampled frames (the loader never re-samples, so frames and labels cannot
  drift apart): `mp4` (H.264, one coded frame per frame, even H and W), or one image per frame `000.jpg`,
  `001.jpg`, ... (or `.png`); an image sample (T = 1) has a single `jpg` or `png` entry instead;
- `labels.npz`: the (T, H, W) uint16 label map of exactly those frames (`trajtok.data.labels`); absent
  only in unlabelled samples (`labeler` and `num_trajectories` are then null);
- `json`: the fields of `SampleMeta` (captions, source, clip window, frame timestamps, original fps and
  size, labeler name/version/params (and `source`, the model a learned labeller ran), number of
  trajectories, schema version, free-form `extra`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

from trajtok.data.encode import encode_video
from trajtok.data.labels import count_trajectories, decode_labels, encode_labels, validate_labels
from trajtok.errors import LabelFormatError, SchemaError, TrajTokError

SCHEMA_VERSION = 1
LABELER_FIELDS = {"name", "version", "params", "source"}  # source: optional
FRAME_FORMATS = ("mp4", "jpg", "png")
LABELS_ENTRY = "labels.npz"
META_ENTRY = "json"
IMAGE_ENTRIES = ("jpg", "png")
JPEG_QUALITY = 95  # with 4:2:0 chroma as in the mp4 frames: no further from the source than mp4 (Data path)
_KEY = re.compile(r"[A-Za-z0-9_-]+")
_FRAME_ENTRY = re.compile(r"(\d+)\.(jpg|png)")
_IMAGE_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
_TIME_TOLERANCE = 1e-3  # seconds: timestamps may sit on the window's edges up to rounding


@dataclass(frozen=True)
class LabelerInfo:
    """Which labeler made the label map, so a sample can be traced and a changed setting detected."""

    name: str
    version: str
    params: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # the model a learned labeller ran (optional)


@dataclass(frozen=True)
class SampleMeta:
    """The `json` entry of a sample."""

    captions: list[str]
    source: str  # the video's URI or path (or the manifest row's id)
    clip_index: int
    clip_start: float  # seconds, in the source video's time
    clip_end: float
    timestamps: list[float]  # of each of the T frames, seconds
    frame_count: int  # T
    height: int  # of the stored frames and labels
    width: int
    source_fps: float | None  # of the original video; None for images
    source_width: int
    source_height: int
    labeler: LabelerInfo | None
    num_trajectories: int | None
    extra: dict[str, Any] = field(default_factory=dict)
    source_decode: dict[str, Any] = field(default_factory=dict)  # timestamps, rotation, pixel aspect applied
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True)
class ClipSample:
    """A decoded sample, as the loader uses it."""

    key: str
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    labels: np.ndarray | None  # (T, H, W) uint16, None when the sample is unlabelled
    meta: SampleMeta

    @property
    def is_image(self) -> bool:
        return self.meta.frame_count == 1


def sample_key(source: str, clip_index: int, start: float, end: float) -> str:
    """`<name>-<digest>-c<clip>`: readable, stable for the same source and clip, safe in a tar name.

    The name is the source's file name without extension (unsafe characters become `_`); the digest of
    the full source and the window (to the millisecond) tells apart equal names in different folders.
    """
    name = posixpath.basename(source.replace("\\", "/").rstrip("/")).split(".")[0]
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_-")[:40] or "clip"
    digest = hashlib.sha1(f"{source}\n{clip_index}\n{start:.3f}\n{end:.3f}".encode()).hexdigest()[:12]
    return f"{slug}-{digest}-c{clip_index:04d}"


def build_sample(
    frames: np.ndarray,
    labels: np.ndarray | None,
    *,
    source: str,
    clip_index: int,
    clip_start: float,
    clip_end: float,
    timestamps: Sequence[float],
    captions: str | Sequence[str],
    source_fps: float | None,
    source_width: int,
    source_height: int,
    labeler: LabelerInfo | Mapping[str, Any] | None,
    frame_format: str = "mp4",
    extra: Mapping[str, Any] | None = None,
    source_decode: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One clip -> the entries of its WebDataset sample (`__key__` plus bytes), checked against the contract.

    `labeler` is a `LabelerInfo` or the `{name, version, params}` dict a labeler describes itself with;
    None (with `labels=None`) makes an unlabelled sample. `frame_format` picks `mp4` or per-frame `jpg`/
    `png` entries; a single frame is always an image sample (`png` if asked, else `jpg`).
    """
    if frame_format not in FRAME_FORMATS:
        raise SchemaError(f"frame_format: {frame_format!r} is not one of {FRAME_FORMATS}")
    if (
        not isinstance(frames, np.ndarray)
        or frames.dtype != np.uint8
        or frames.ndim != 4
        or frames.shape[-1] != 3
    ):
        shape = getattr(frames, "shape", None)
        raise SchemaError(
            f"frames: expected a (T, H, W, 3) uint8 array, got {shape} {getattr(frames, 'dtype', '')}"
        )
    t, h, w, _ = frames.shape
    if labels is not None:
        try:
            validate_labels(labels, LABELS_ENTRY, num_frames=t, frame_size=(h, w))
        except LabelFormatError as err:
            raise SchemaError(str(err)) from None
    if (labels is None) != (labeler is None):
        raise SchemaError("labeler: give both labels and labeler, or neither")
    raw = {
        "schema_version": SCHEMA_VERSION,
        "captions": [captions] if isinstance(captions, str) else list(captions),
        "source": source,
        "clip_index": int(clip_index),
        "clip_start": float(clip_start),
        "clip_end": float(clip_end),
        "timestamps": [float(x) for x in timestamps],
        "frame_count": t,
        "height": h,
        "width": w,
        "source_fps": None if source_fps is None else float(source_fps),
        "source_width": int(source_width),
        "source_height": int(source_height),
        "labeler": _labeler_dict(labeler),
        "num_trajectories": None if labels is None else count_trajectories(labels),
        "extra": dict(extra or {}),
        "source_decode": dict(source_decode or {}),
    }
    key = sample_key(source, raw["clip_index"], raw["clip_start"], raw["clip_end"])
    try:
        text = json.dumps(raw, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError) as err:
        raise SchemaError(f"sample {key}: json: cannot be written as JSON ({err})") from None
    meta = _check_meta(json.loads(text), key)  # the writer obeys the rules the reader checks
    sample: dict[str, Any] = {"__key__": key, META_ENTRY: text.encode()}
    sample.update(_encode_frames(frames, frame_format, meta, key))
    if labels is not None:
        sample[LABELS_ENTRY] = encode_labels(labels, LABELS_ENTRY)
    return sample


def _labeler_dict(labeler: LabelerInfo | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if labeler is None:
        return None
    info = dataclasses.asdict(labeler) if isinstance(labeler, LabelerInfo) else dict(labeler)
    if not info.get("source"):  # optional: absent rather than empty
        info.pop("source", None)
    return info


def validate_sample(sample: Mapping[str, Any], *, decode_frames: bool = False) -> None:
    """Raise `SchemaError` naming the sample and the field unless `sample` follows the contract.

    Checks the key, the entries, every json field, and the label map against T/H/W and the trajectory
    count; with `decode_frames`, also decodes the frames and checks their count and size.
    """
    key, meta, _ = parse_sample(sample)
    if decode_frames:
        decode_sample_frames(sample, meta, key)


def decode_sample(sample: Mapping[str, Any]) -> ClipSample:
    """Check a raw sample (entries as bytes, as read from a tar) and decode its frames and labels."""
    key, meta, labels = parse_sample(sample)
    return ClipSample(key, decode_sample_frames(sample, meta, key), labels, meta)


def frame_entries(sample: Mapping[str, Any]) -> tuple[str, list[str]]:
    """Where the sample's frames are: (format, entry names): ("mp4", ["mp4"]) or ("jpg" | "png", one image
    per frame, in frame order). Also for whoever decodes them elsewhere (`trajtok.data.device_decode`)."""
    if "mp4" in sample:
        return "mp4", ["mp4"]
    names = [n for n in sample if n in IMAGE_ENTRIES or _FRAME_ENTRY.fullmatch(n)]
    names.sort(key=lambda n: int(n.split(".")[0]) if n[0].isdigit() else 0)
    return names[0].rsplit(".", 1)[-1], names


# --- writing frames -------------------------------------------------------------------------------------


def _encode_frames(frames: np.ndarray, frame_format: str, meta: SampleMeta, key: str) -> dict[str, bytes]:
    t, h, w, _ = frames.shape
    if t == 1:
        kind = "png" if frame_format == "png" else "jpg"
        return {kind: _encode_image(frames[0], kind)}
    if frame_format != "mp4":
        digits = max(3, len(str(t - 1)))
        return {
            f"{i:0{digits}d}.{frame_format}": _encode_image(f, frame_format) for i, f in enumerate(frames)
        }
    if h % 2 or w % 2:
        raise SchemaError(
            f"sample {key}: mp4: H.264 needs even height and width, got {h}x{w} "
            "(size frames with short_side_size(..., multiple=2), or use jpg frames)"
        )
    span = meta.timestamps[-1] - meta.timestamps[0]
    fps = (t - 1) / span if span > 0 else (meta.source_fps or 1.0)
    return {"mp4": encode_video(frames, fps)}


def frame_encoding(frame_format: str) -> str:
    """The format with the encoder settings that change its bytes, for a shard job's settings digest (a
    job resumed after they change rewrites its shards instead of mixing them)."""
    return f"jpg-q{JPEG_QUALITY}-420" if frame_format == "jpg" else frame_format


def _encode_image(frame: np.ndarray, kind: str) -> bytes:
    buffer = io.BytesIO()
    if kind == "jpg":
        # 4:2:0 (subsampling 2): 0.8x the bytes of 4:4:4 and 0.7x its decoding time (BENCHMARKS.md)
        Image.fromarray(frame).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=2)
    else:
        # level 1: measured 3.4x faster than the default 6 on 224p frames for 8% more bytes
        Image.fromarray(frame).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# --- reading and checking -----------------------------------------------------------------------------------


def parse_sample(sample: Mapping[str, Any]) -> tuple[str, SampleMeta, np.ndarray | None]:
    """Key, metadata and label map of a raw sample, every rule checked except the frames' pixels."""
    key = sample.get("__key__")
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise SchemaError(f"sample {key!r}: __key__: must be a non-empty string of A-Z a-z 0-9 _ -")
    entries = {name: value for name, value in sample.items() if not name.startswith("__")}
    for name, value in entries.items():
        if not isinstance(value, bytes | bytearray | memoryview):
            raise SchemaError(f"sample {key}: {name}: expected bytes, got {type(value).__name__}")
    if META_ENTRY not in entries:
        raise SchemaError(f"sample {key}: json: missing")
    try:
        raw_meta = json.loads(bytes(entries[META_ENTRY]))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SchemaError(f"sample {key}: json: not valid JSON ({err})") from None
    meta = _check_meta(raw_meta, key)
    _check_entries(entries, meta, key)
    labels = None
    if meta.labeler is None:
        if LABELS_ENTRY in entries:
            raise SchemaError(f"sample {key}: labeler: null, but the sample has labels.npz")
    else:
        if LABELS_ENTRY not in entries:
            raise SchemaError(
                f"sample {key}: labels.npz: missing (the json names labeler {meta.labeler.name!r})"
            )
        try:
            labels = decode_labels(bytes(entries[LABELS_ENTRY]), f"sample {key}: labels.npz")
            validate_labels(
                labels,
                f"sample {key}: labels.npz",
                num_frames=meta.frame_count,
                frame_size=(meta.height, meta.width),
            )
        except LabelFormatError as err:
            raise SchemaError(str(err)) from None
        found = count_trajectories(labels)
        if found != meta.num_trajectories:
            raise SchemaError(
                f"sample {key}: num_trajectories: says {meta.num_trajectories}, labels.npz has {found}"
            )
    return key, meta, labels


def _check_entries(entries: Mapping[str, Any], meta: SampleMeta, key: str) -> None:
    media = [name for name in entries if name not in (META_ENTRY, LABELS_ENTRY)]
    unknown = [
        name
        for name in media
        if name != "mp4" and name not in IMAGE_ENTRIES and not _FRAME_ENTRY.fullmatch(name)
    ]
    if unknown:
        raise SchemaError(f"sample {key}: {unknown[0]}: not an entry of the sample contract")
    if meta.frame_count == 1:
        if len(media) != 1 or media[0] not in IMAGE_ENTRIES:
            raise SchemaError(
                f"sample {key}: jpg: an image sample (frame_count 1) has one jpg or png, got {media}"
            )
        return
    if media == ["mp4"]:
        return
    frame_entries = sorted((int(m.group(1)), m.group(2)) for m in map(_FRAME_ENTRY.fullmatch, media) if m)
    if not frame_entries or len(frame_entries) != len(media):
        raise SchemaError(
            f"sample {key}: mp4: a clip has one mp4 or one image per frame, got {sorted(media)}"
        )
    indices = [i for i, _ in frame_entries]
    kinds = {kind for _, kind in frame_entries}
    if indices != list(range(meta.frame_count)) or len(kinds) != 1:
        raise SchemaError(
            f"sample {key}: frames: expected {meta.frame_count} entries numbered 0..{meta.frame_count - 1} "
            f"of one image type, got {len(indices)} ({', '.join(sorted(kinds))})"
        )


def decode_sample_frames(sample: Mapping[str, Any], meta: SampleMeta, key: str) -> np.ndarray:
    """The (T, H, W, 3) uint8 frames of a sample `parse_sample` has checked, checked against its json."""
    from trajtok.data.video import open_video  # the decoders load only where frames are decoded

    expected = (meta.frame_count, meta.height, meta.width, 3)
    kind, names = frame_entries(sample)
    if kind == "mp4":
        try:
            with open_video(bytes(sample["mp4"]), name=f"sample {key}: mp4") as video:
                frames = video.read_frames(np.arange(video.info.num_frames))
        except TrajTokError as err:
            raise SchemaError(str(err)) from None
        entry = "mp4"
    else:
        frames = np.stack([decode_image(bytes(sample[n]), f"sample {key}: {n}") for n in names])
        entry = names[0] if len(names) == 1 else "frames"
    if frames.shape != expected:
        raise SchemaError(f"sample {key}: {entry}: decodes to {frames.shape}, the json says {expected}")
    return frames


def decode_image(data: bytes, name: str) -> np.ndarray:
    """RGB uint8 (H, W, 3) of a jpg or png entry, with OpenCV (libjpeg-turbo, straight to RGB): the same
    pixels as Pillow in 0.5-0.8x its time (BENCHMARKS.md, Data path); orientation tags are not applied."""
    frame = cv2.imdecode(np.frombuffer(data, np.uint8), _IMAGE_FLAGS)
    if frame is None:
        raise SchemaError(f"{name}: not a readable image")
    return frame


def _check_meta(raw: Any, key: str) -> SampleMeta:
    """Every json field present, of the right type and consistent; a `SchemaError` names the first bad one."""

    def bad(name: str, problem: str) -> SchemaError:
        return SchemaError(f"sample {key}: {name}: {problem}")

    if not isinstance(raw, dict):
        raise bad("json", "expected a JSON object")
    names = {f.name for f in dataclasses.fields(SampleMeta)}
    for name in sorted(names - {"extra", "source_decode"}):  # both optional: older shards lack them
        if name not in raw:
            raise bad(name, "missing")
    unknown = sorted(set(raw) - names)
    if unknown:
        raise bad(unknown[0], "not a field of the sample contract")

    def integer(name: str, minimum: int) -> int:
        value = raw[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise bad(name, f"expected an integer >= {minimum}, got {value!r}")
        return value

    def number(name: str, value: Any = None) -> float:
        value = raw[name] if value is None else value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise bad(name, f"expected a finite number, got {value!r}")
        return float(value)

    version = integer("schema_version", 1)
    if version != SCHEMA_VERSION:
        raise bad("schema_version", f"{version} is not supported (this code reads {SCHEMA_VERSION})")
    captions = raw["captions"]
    if not isinstance(captions, list) or not captions:
        raise bad("captions", "expected a non-empty list of strings")
    if not all(isinstance(c, str) and c.strip() for c in captions):
        raise bad("captions", "every caption must be a non-empty string")
    source = raw["source"]
    if not isinstance(source, str) or not source:
        raise bad("source", "expected a non-empty string")
    frame_count = integer("frame_count", 1)
    height, width = integer("height", 1), integer("width", 1)
    clip_index = integer("clip_index", 0)
    start, end = number("clip_start"), number("clip_end")
    if start < 0:
        raise bad("clip_start", f"must not be negative, got {start:g}")
    if end < start or (end == start and frame_count > 1):
        raise bad("clip_end", f"{end:g} s must come after clip_start {start:g} s")
    timestamps = raw["timestamps"]
    if not isinstance(timestamps, list) or len(timestamps) != frame_count:
        raise bad("timestamps", f"expected a list of frame_count={frame_count} numbers")
    times = [number("timestamps", value) for value in timestamps]
    if any(b < a for a, b in zip(times, times[1:])):
        raise bad("timestamps", "must not decrease")
    if times[0] < start - _TIME_TOLERANCE or times[-1] > end + _TIME_TOLERANCE:
        raise bad(
            "timestamps", f"[{times[0]:g}, {times[-1]:g}] s lies outside the clip [{start:g}, {end:g}] s"
        )
    fps = raw["source_fps"]
    if fps is None:
        if frame_count > 1:
            raise bad("source_fps", "a clip needs the original video's fps")
    elif number("source_fps") <= 0:
        raise bad("source_fps", f"must be positive, got {fps!r}")
    source_width, source_height = integer("source_width", 1), integer("source_height", 1)
    labeler = _check_labeler(raw["labeler"], bad)
    num_trajectories = raw["num_trajectories"]
    if labeler is None:
        if num_trajectories is not None:
            raise bad("num_trajectories", "must be null in an unlabelled sample (labeler is null)")
    else:
        num_trajectories = integer("num_trajectories", 0)
    extra = raw.get("extra", {})
    if not isinstance(extra, dict):
        raise bad("extra", "expected a JSON object")
    source_decode = raw.get("source_decode", {})
    if not isinstance(source_decode, dict):
        raise bad("source_decode", "expected a JSON object")
    return SampleMeta(
        captions=captions,
        source=source,
        clip_index=clip_index,
        clip_start=start,
        clip_end=end,
        timestamps=times,
        frame_count=frame_count,
        height=height,
        width=width,
        source_fps=None if fps is None else float(fps),
        source_width=source_width,
        source_height=source_height,
        labeler=labeler,
        num_trajectories=num_trajectories,
        extra=extra,
        source_decode=source_decode,
        schema_version=version,
    )


def _check_labeler(value: Any, bad) -> LabelerInfo | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not {"name", "version", "params"} <= set(value) <= LABELER_FIELDS:
        raise bad("labeler", "expected {name, version, params} with an optional source, or null")
    if not isinstance(value["name"], str) or not value["name"]:
        raise bad("labeler.name", "expected a non-empty string")
    if not isinstance(value["version"], str) or not value["version"]:
        raise bad("labeler.version", "expected a non-empty string")
    if not isinstance(value["params"], dict):
        raise bad("labeler.params", "expected a JSON object")
    if not isinstance(value.get("source", {}), dict):
        raise bad("labeler.source", "expected a JSON object")
    return LabelerInfo(value["name"], value["version"], value["params"], value.get("source", {}))
