"""Cutting clips out of videos, one way for every command: what `trajtok label` and the demo show is what
`trajtok shard` writes, and evaluation samples frames the same way.

`cut_clip` is the one cut: `clip.frames` frames of a window, sampled by `clip.sampling` with an RNG seeded
by the clip's sample key, resized so the short side is `clip.size` (both sides even, as H.264 wants).
`read_clips` is the shard policy over a manifest row; `read_window` the one clip a look at a video takes.

The clip policy: which clips a manifest row gives.

A row's window is its `start`/`end` (or the whole video). With `clip.seconds > 0` the window gives up to
`clip.clips_per_video` clips of that length, one centred in each of as many equal parts of the window;
with `clip.seconds = 0` the window is cut into `clip.clips_per_video` consecutive clips. Each clip gets
`clip.frames` frames (`clip.sampling`: "middle" of each bin, or "random" seeded by the clip's sample
key, so a rerun samples the same frames). A clip holding fewer than `clip.frames` frames, or a
window shorter than `clip.seconds`, is too short: no frame is ever repeated to fill a clip. Images
(jpg, png, ...) give one clip of one frame.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import fsspec
import numpy as np

from trajtok.config import ClipConfig
from trajtok.data.labels import resize_frames, short_side_size
from trajtok.data.sample import sample_key
from trajtok.data.video import VideoInfo, VideoReader, labelling_window, open_video
from trajtok.errors import TooShort, VideoDecodeError, VideoMissing

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class Clip:
    """Frames of one clip at the shard's size, and where they came from."""

    key: str  # the sample key: stable for the source and the clip window
    index: int  # clip number within the row
    frames: np.ndarray  # (T, h, w, 3) uint8 RGB, short side = clip.size
    timestamps: np.ndarray  # (T,) seconds from the video's first frame
    start: float
    end: float
    info: VideoInfo  # the source as decoded: fps, size, duration


def is_image(path: str) -> bool:
    return os.path.splitext(path.lower())[1] in IMAGE_SUFFIXES


def clip_windows(start: float, end: float, cfg: ClipConfig) -> list[tuple[float, float]]:
    """The (start, end) seconds of each clip in the window [start, end), per the policy above."""
    length = end - start
    if cfg.seconds <= 0:
        n = max(1, cfg.clips_per_video)
        edges = np.linspace(start, end, n + 1)
        return [(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:])]
    n = min(max(1, cfg.clips_per_video), int(length // cfg.seconds + 1e-9))
    part = length / n if n else 0.0
    centres = start + part * (np.arange(n) + 0.5)
    return [(float(c - cfg.seconds / 2), float(c + cfg.seconds / 2)) for c in centres]


def read_clips(
    path: str, start: float | None, end: float | None, cfg: ClipConfig, timeout: float
) -> Iterator[Clip]:
    """The clips of one row, read lazily (one open file for all of them).

    Raises `VideoDecodeError` (or its `TooShort`) when the row gives no clip at all.
    """
    if is_image(path):
        yield _image_clip(path, cfg)
        return
    with open_video(path, timeout=timeout) as video:
        info = video.info
        first, last = start or 0.0, min(end, info.duration) if end is not None else info.duration
        if last <= first:
            raise TooShort(f"{path}: the window starts at {first:g} s, after the video ends ({last:g} s)")
        if last - first < cfg.seconds:
            raise TooShort(f"{path}: {last - first:.3g} s long, shorter than clip.seconds={cfg.seconds:g}")
        all_times = video.timestamps(np.arange(info.num_frames))
        size = _even_size(info.height, info.width, cfg.size)
        given = 0
        for index, (a, b) in enumerate(clip_windows(first, last, cfg)):
            if np.diff(np.searchsorted(all_times, [a, b]))[0] < cfg.frames:
                continue  # the frames would repeat
            given += 1
            yield cut_clip(video, path, index, a, b, cfg, size)
        if not given:
            raise TooShort(
                f"{path}: no clip window holds clip.frames={cfg.frames} frames ({info.num_frames} in all)"
            )


def cut_clip(
    video: VideoReader,
    path: str,
    index: int,
    start: float,
    end: float,
    cfg: ClipConfig,
    size: tuple[int, int] | None = None,
) -> Clip:
    """Clip `index` of `path`: `cfg.frames` frames of [start, end) seconds, sampled by `cfg.sampling` with
    the sample key's seed (a rerun samples the same frames), at `size` (default: short side `cfg.size`)."""
    info = video.info
    key = sample_key(path, index, start, end)
    size = size or _even_size(info.height, info.width, cfg.size)
    frames, times = video.sample_clip(cfg.frames, cfg.sampling, start, end, rng=_seed(key), size=size)
    return Clip(key, index, frames, times, start, end, info)


def read_window(
    path: str,
    cfg: ClipConfig,
    start: float | None = None,
    end: float | None = None,
    seconds: float = 0.0,
    timeout: float | None = None,
) -> Clip:
    """The one clip a look at a video takes (`trajtok label`, the demo): [start, end) as asked, the ends not
    given filled in to `seconds` of the middle (`labelling_window`), cut as a shard's clip 0 would be."""
    with open_video(path, timeout=timeout) as video:
        first, last = labelling_window(video.info.duration, seconds, start, end)
        first = 0.0 if first is None else first
        last = video.info.duration if last is None else min(last, video.info.duration)
        if last <= first:
            raise TooShort(f"{path}: the window starts at {first:g} s, after the video ends ({last:g} s)")
        return cut_clip(video, path, 0, first, last, cfg)


def _image_clip(path: str, cfg: ClipConfig) -> Clip:
    try:
        with fsspec.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise VideoMissing(f"{path}: no such file") from None
    except (OSError, ImportError, ValueError) as err:
        raise VideoDecodeError(f"{path}: cannot fetch ({err})") from None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        raise VideoDecodeError(f"{path}: not a readable image")
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)[None]
    h, w = rgb.shape[1:3]
    info = VideoInfo(source=path, backend="image", fps=0.0, num_frames=1, width=w, height=h, duration=0.0)
    frames = resize_frames(rgb, _even_size(h, w, cfg.size))
    return Clip(sample_key(path, 0, 0.0, 0.0), 0, frames, np.zeros(1), 0.0, 0.0, info)


def _seed(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


def _even_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Short side to `short_side`, both sides even (H.264 yuv420p)."""
    return short_side_size(height, width, short_side, multiple=2)
