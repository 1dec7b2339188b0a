"""Video decoding: open a path, URI or bytes, report what it holds, read frames by index or time, sample.

The reference for every read is a plain sequential decode: frame i is the i-th picture the decoder
outputs, as players show it, turned upright by the display matrix and with square pixels. Real-world
files break timestamps in ways that look valid: an H.264 mp4 from a common library's video writer
stamps B-frames with their decoding times (pts == dts), so frames come out stamped 0, 4, 2, 6, 1, ...;
AVIs from DivX/Xvid pack a B-frame into the chunk of the P-frame after it, so packet stamps 1, 2, 3
come out as frames 1, 3, 2. An index built on such stamps asks the decoder for frames in an order it
never produces. So the container's timestamps are trusted (`VideoInfo.timestamps == "container"`)
only where checks show they name the frames in display order: every packet carries a distinct stamp,
the first `PROBE_FRAMES` frames and the last group of pictures decode in the order of the sorted
stamps (misorder shows within a few frames: it is a property of the writer, not of a scene), and
every later read checks again that each frame after a seek comes out in stamp order. Only then are
the fast paths used: seeking to keyframes, skipping unreferenced frames nobody asked for
(`skip_frame=NONREF`: 48% of an x264 stream's frames), and producing the requested size in swscale's
colour conversion (a sixth of the cost of converting at full size and resizing after). Elsewhere
(`"derived"`) the whole file is decoded once at open to count its frames, times are frame number / the
stream's rate, and reads decode sequentially from the top (or on from the last read when the frames
asked for lie ahead); a read that finds the stamps wrong after open switches the reader to that mode.
The checks at open cost 6 decoded frames (12-20 ms on 480x360 to 768x576 files); reads of trusted
files cost what they did before (BENCHMARKS.md, video reader).

The frame count is always the *decodable* count: not the container's claim (tree.avi declares 444
frames and holds 68), packets cut by an edit list excluded, the last group decoded at open, so every
index can be read. One decoder thread per reader: the jobs parallelise over processes, and ffmpeg's
own threads cost 20% more CPU per frame.

decord is still there on request (`backend="decord"`, frames as stored: no rotation or pixel aspect),
but not the default: it was no faster than PyAV on any file measured, its reader keeps a thread
spinning a whole core after each read until the next seek, and it returns wrong frames from MPEG-TS
(it seeks late), AVI with B-frames (misordered) and AVI cut short (false keyframes).

Every decoder call runs in a daemon thread with a deadline. decord and PyAV release the GIL while they
decode or block on I/O, so the caller regains control on time; the stuck thread cannot be killed and is
abandoned, and that reader refuses further calls. A subprocess per call would be killable but would cost
a process start and a copy of every frame on the happy path; a thread costs well under a millisecond.
"""

from __future__ import annotations

import atexit
import bisect
import contextlib
import dataclasses
import io
import os
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import av
import decord
import fsspec
import numpy as np
from av.video.frame import PictureType
from fsspec.implementations.local import LocalFileSystem

from trajtok.config import DECODE_TIMEOUT
from trajtok.data.labels import resize_frames
from trajtok.errors import DecodeTimeout, NoVideoStream, VideoDecodeError, VideoMissing

VideoSource = str | os.PathLike | bytes
Backend = Literal["auto", "decord", "pyav"]
SamplingMode = Literal["middle", "random"]

PROBE_FRAMES = 6  # decoded at open: frames misordered by their timestamps show within the first few

_abandoned: list[threading.Thread] = []  # decoder threads still running past their deadline

# Failures reach the user as one VideoDecodeError line, not as ffmpeg log noise.
decord.logging.set_level(decord.logging.QUIET)

_T = TypeVar("_T")


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds, as decoded (not as the container claims).

    `num_frames` counts frames that decode; `duration` runs from the first frame's start to the last
    frame's end; `fps` is `num_frames / duration`, the container's rate for constant-rate files and
    lower where the container declares frames that are not there. `width` and `height` are those of the
    frames as read: upright (`rotation`, degrees counterclockwise, applied from the display matrix) and
    with square pixels (`sample_aspect_ratio` applied to the width). `timestamps` says where frame times
    come from: "container" (checked to name the frames in display order) or "derived" (frame number /
    the stream's rate, for files whose timestamps do not; those are read by a sequential decode).
    """

    source: str
    backend: str
    fps: float
    num_frames: int
    width: int
    height: int
    duration: float
    timestamps: str = "container"
    rotation: int = 0
    sample_aspect_ratio: float = 1.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class _Unreadable(Exception):
    """A backend cannot serve this file; the message is the reason shown to the user, `error` the kind."""

    error: type[VideoDecodeError] = VideoDecodeError


class _NoVideoStream(_Unreadable):
    error = NoVideoStream


class _Untrusted(Exception):
    """The file's timestamps do not name its frames in display order; it is read by counting frames.

    `count` is the number of frames a sequential decode gave, where one was already made (else None).
    """

    def __init__(self, reason: str, count: int | None = None):
        super().__init__(reason)
        self.count = count


class _DecordBackend:
    """decord's reader. Its frame count is the number of packets it indexed at open, which need not all
    decode; `open_video` proves the count by decoding the last frame."""

    name = "decord"
    timestamps = "container"
    rotation, sample_aspect_ratio = 0, 1.0  # frames come as stored: decord reads no display matrix

    def __init__(self, path: str):
        try:
            self._reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
            count = len(self._reader)
            if count < 1:
                raise _Unreadable("no video frames")
            first = self._reader.get_batch([0]).asnumpy()
            starts = self._reader.get_frame_timestamp(np.arange(count))[:, 0].astype(np.float64)
            rate = float(self._reader.get_avg_fps())
        except (decord.DECORDError, RuntimeError) as err:  # RuntimeError: decord's "Error reading <file>"
            raise _Unreadable(_first_line(err)) from err
        if first.ndim != 4 or first.shape[-1] != 3 or first.dtype != np.uint8:  # 16x16 H.264: 6 channels
            raise _Unreadable(f"decord returned frames of shape {first.shape} {first.dtype}")
        self.height, self.width = first.shape[1:3]
        self.times = np.round(starts - starts[0], 6)  # decord's times are float32; keep whole microseconds
        self.frame_length = 1.0 / rate if rate > 0 else _median_step(self.times)

    def decode(self, indices: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        try:
            frames = self._reader.get_batch(indices.tolist()).asnumpy()
            self._reader.seek(0)  # after a read, decord's decoder thread spins a core until the next seek
        except (decord.DECORDError, RuntimeError) as err:
            raise _Unreadable(_first_line(err)) from err
        return resize_frames(frames, size)

    def close(self) -> None:
        self._reader = None


class _PyAVBackend:
    """PyAV's reader: by the container's timestamps where they prove right, else by counting frames.

    Trusted (`timestamps = "container"`): frames are indexed by their presentation timestamps, found by
    demuxing (cheap: no decoding). The first `PROBE_FRAMES` frames are decoded at open and must come out
    in the order of the sorted packet timestamps (B-frames stamped with their decoding times, or packed
    in old AVI files, break this within a few frames); the last group of pictures is decoded too, frames
    it lacks are dropped (a truncated file) and its frames must come out in order as well. Reads seek to
    the keyframe before each wanted frame unless decoding on is shorter, and check where each seek
    landed and that every frame after it comes out in timestamp order. Where the container flags
    keyframes that do not decode as such (an AVI cut short flags every packet after its index ends), the
    whole video is decoded once at open to find the real ones.

    While `decode` runs, packets of frames it does not want are decoded with `skip_frame=NONREF`: the
    decoder drops them only if no other frame refers to them, so every wanted frame is exact. If a file's
    packet timestamps do not match its frames' (the skip would then hit a wanted frame), the read is
    repeated without skipping; if the frames still do not come out as their timestamps say, the reader
    falls back to counting.

    Untrusted (`timestamps = "derived"`): frame i is the i-th picture the decoder outputs (what players
    show), the whole file is decoded once at open to count them, timestamps are i / the stream's average
    rate, and reads decode sequentially (from the current position when the frames asked for lie ahead).
    """

    name = "pyav"

    def __init__(self, path: str | bytes):
        self._path = path  # a file, or the video's bytes (read from memory, reopened from them too)
        self._container = _open_container(path)
        self._stream = self._container.streams.video[0]
        self._damaged = False  # the decoder saw bad data; some (cinepak) never recover, even when flushed
        self._wanted: frozenset[int] | None = None  # pts that the running `decode` needs; None: all
        self._position: int | None = None  # pts of the last frame the decoder produced
        self._frames: Iterator[av.VideoFrame] = iter(())
        self._in_order: Iterator[tuple[int, av.VideoFrame]] | None = None  # sequential reads: (index, frame)
        self._next_index = 0  # the index `_in_order` yields next
        self._geometry: tuple[int, int, int, float] | None = None  # coded height, width, rotation, SAR
        try:
            try:
                self._index_timestamps()
            except _Untrusted as untrusted:
                self._index_by_counting(untrusted.count)
        except BaseException:
            self._container.close()
            raise
        coded_height, coded_width, self.rotation, self.sample_aspect_ratio = self._geometry
        display = (coded_height, max(1, round(coded_width * self.sample_aspect_ratio)))
        self.height, self.width = display if self.rotation in (0, 180) else display[::-1]

    # --- indexing ---------------------------------------------------------------------------------------
    def _index_timestamps(self) -> None:
        if self._stream.time_base is None or self._stream.time_base <= 0:
            raise _Untrusted("the stream's time base is not positive")
        pts, keyframes = self._index_packets()
        pts = self._check_first_frames(pts)
        self._keyframes = sorted({k for k in keyframes if k > pts[0]} | {pts[0]})  # the start is valid
        self._pts, self._keyframes = self._check_last_group(pts, self._keyframes)
        self._known = frozenset(self._pts)
        self.timestamps = "container"
        self.times = (np.asarray(self._pts, dtype=np.float64) - self._pts[0]) * float(self._stream.time_base)
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.frame_length = 1.0 / float(rate) if rate else _median_step(self.times)

    def _index_packets(self) -> tuple[list[int], list[int]]:
        pts, keyframes, packets = set(), set(), 0
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0 or packet.is_discard:  # flush, AVI "repeat" entries, cut by an edit list
                    continue
                packets += 1
                stamp = _stamp(packet)
                if stamp is None:
                    raise _Untrusted("video packets carry no timestamps")
                pts.add(stamp)
                if packet.is_keyframe:
                    keyframes.add(stamp)
        except av.error.FFmpegError:
            pass  # damaged or missing data ends the index; the decoding checks confirm what decodes
        if not pts:
            raise _Unreadable("no video frames")
        if len(pts) < packets:
            raise _Untrusted("several video packets carry the same timestamp")
        return sorted(pts), sorted(keyframes)

    def _check_first_frames(self, pts: list[int]) -> list[int]:
        """The index from the first frame that decodes, once the first frames prove it names them in order."""
        stamps = [_stamp(frame) for frame in self._noting_geometry(self._frames_after(None), PROBE_FRAMES)]
        if not stamps or None in stamps:
            raise _Untrusted("the first frames carry no timestamps")
        first = bisect.bisect_left(pts, stamps[0])
        if stamps != pts[first : first + len(stamps)]:
            raise _Untrusted("the first frames do not come out in timestamp order")
        return pts[first:]

    def _noting_geometry(self, frames: Iterator[av.VideoFrame], count: int | None) -> Iterator[av.VideoFrame]:
        """Up to `count` frames (None: all), noting the picture's geometry from the first."""
        for number, frame in enumerate(frames):
            if count is not None and number >= count:
                return
            if self._geometry is None:
                self._geometry = (frame.height, frame.width, _upright_rotation(frame), self._pixel_aspect())
            yield frame

    def _pixel_aspect(self) -> float:
        """The sample (pixel) aspect ratio, the container's where it sets one (as ffmpeg's guess does)."""
        for ratio in (self._stream.sample_aspect_ratio, self._stream.codec_context.sample_aspect_ratio):
            if ratio is not None and ratio > 0:
                return float(ratio)
        return 1.0

    def _check_last_group(self, pts: list[int], keyframes: list[int]) -> tuple[list[int], list[int]]:
        """Drop the frames of the last group of pictures that do not decode; check its keyframe flag."""
        while keyframes:
            key = keyframes[-1]
            stamps, starts_group = [], {}
            for frame in self._decode_from(key):
                stamp = _stamp(frame)
                stamps.append(stamp)
                starts_group[stamp] = _starts_group(frame)
            if key != pts[0] and starts_group.get(key) is False:
                return self._decode_all()
            tail = [s for s in stamps if s is None or s >= key]
            if not _strictly_rising(tail) or not set(tail) <= set(pts):
                raise _Untrusted("the last frames do not come out in timestamp order")
            if tail:
                return [p for p in pts if p < key] + tail, keyframes
            keyframes.pop()
            pts = [p for p in pts if p < key]
        raise _Unreadable("no decodable video frames")

    def _decode_all(self) -> tuple[list[int], list[int]]:
        """Every frame that decodes and the real keyframes among them (slow: only for lying containers)."""
        stamps, keyframes = [], set()
        for frame in self._noting_geometry(self._frames_after(None), None):
            stamps.append(_stamp(frame))
            if _starts_group(frame):
                keyframes.add(stamps[-1])
        if not stamps:
            raise _Unreadable("no decodable video frames")
        if not _strictly_rising(stamps):
            raise _Untrusted("frames do not come out in timestamp order", count=len(stamps))
        return stamps, sorted(keyframes | {stamps[0]})

    def _index_by_counting(self, count: int | None) -> None:
        """Frame i is the i-th picture out of the decoder; times follow from the stream's average rate."""
        if count is None:
            count = sum(1 for _ in self._noting_geometry(self._frames_after(None), None))
        if not count:
            raise _Unreadable("no decodable video frames")
        self.timestamps = "derived"
        self.frame_length = 1.0 / _declared_rate(self._stream)
        self.times = np.round(np.arange(count) * self.frame_length, 6)

    # --- decoding ---------------------------------------------------------------------------------------
    def _decode_from(self, key: int) -> Iterator[av.VideoFrame]:
        """Frames from the keyframe `key` (or an earlier point) onwards; damaged packets are skipped.

        A seek is only as exact as the container's index (in MPEG-TS it lands a keyframe late): one that
        lands past `key` is retried from the keyframe before, then from the top of the file.
        """
        for start in (key, *[k for k in self._keyframes if k < key][-1:], None):
            frames = self._frames_after(start)
            first = next(frames, None)
            stamp = None if first is None else _stamp(first)
            if first is not None and (start is None or stamp is None or stamp <= key):
                yield first
                yield from frames
                return

    def _frames_after(self, start: int | None) -> Iterator[av.VideoFrame]:
        """Decoded frames after a seek to `start` (None: from the top of the file, freshly opened)."""
        if self._damaged or start is None:
            self._container.close()
            self._container = _open_container(self._path)
            self._stream = self._container.streams.video[0]
            self._damaged = False
        if start is not None:
            self._container.seek(start, stream=self._stream, backward=True)
            self._stream.codec_context.flush_buffers()  # a decoder drained at the end refuses new packets
        context = self._stream.codec_context
        try:
            for packet in self._container.demux(self._stream):
                stamp = _stamp(packet)
                unwanted = self._wanted is not None and stamp is not None and stamp not in self._wanted
                context.skip_frame = "NONREF" if unwanted else "DEFAULT"
                try:
                    yield from packet.decode()
                except av.error.InvalidDataError:
                    self._damaged = True
        except av.error.FFmpegError:
            return

    def decode(self, indices: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        if self.timestamps == "derived":
            return self._decode_in_order(indices, size)
        for skip_unwanted in (True, False):
            try:
                return self._decode_each(indices, size, skip_unwanted)
            except _Untrusted:
                continue
        self._switch_to_counting()
        return self._decode_in_order(indices, size)

    def _decode_each(self, indices: np.ndarray, size: tuple[int, int], skip_unwanted: bool) -> np.ndarray:
        # Each call seeks afresh: packets an earlier call skipped may hold frames this one wants.
        self._position = None
        self._wanted = frozenset(self._pts[i] for i in indices) if skip_unwanted else None
        try:
            return np.stack([self._picture(self._decode_one(int(i)), size) for i in indices])
        finally:
            self._wanted = None

    def _decode_one(self, index: int) -> av.VideoFrame:
        target = self._pts[index]
        key = self._keyframes[bisect.bisect_right(self._keyframes, target) - 1]
        if self._position is None or self._position >= target or key > self._position:
            self._frames, self._position = self._decode_from(key), None
        for frame in self._frames:
            stamp = _stamp(frame)
            if stamp not in self._known or (self._position is not None and stamp <= self._position):
                self._position = None
                raise _Untrusted(f"frame {index}: the frames after a seek do not come out in timestamp order")
            self._position = stamp
            if stamp >= target:
                break
        else:
            self._position = None
            raise _Untrusted(f"frame {index} did not decode")
        if self._position != target:
            self._position = None
            raise _Untrusted(f"frame {index} did not decode (the decoder skipped to a later frame)")
        return frame

    def _switch_to_counting(self) -> None:
        """Read by counting from now on; only possible if counting finds the frames the index promised."""
        count = sum(1 for _ in self._frames_after(None))
        if count != len(self._pts):
            raise _Unreadable(
                f"its timestamps proved wrong while reading ({len(self._pts)} frames indexed, {count} decode)"
            )
        self.timestamps = "derived"

    def _decode_in_order(self, indices: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """The frames at these (sorted) indices by a sequential decode, resumed where the last one ended."""
        pictures = []
        wanted = iter(indices.tolist())
        target = next(wanted)
        if self._in_order is None or self._next_index > target:
            self._in_order, self._next_index = enumerate(self._frames_after(None)), 0
        for index, frame in self._in_order:
            self._next_index = index + 1
            if index == target:
                pictures.append(self._picture(frame, size))
                target = next(wanted, None)
                if target is None:
                    return np.stack(pictures)
        self._in_order = None
        raise _Unreadable(f"frame {target} did not decode")

    def _picture(self, frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
        """The frame upright, with square pixels, at `size` (h, w), converted and resized by swscale."""
        height, width = size if self.rotation in (0, 180) else size[::-1]
        shrinking = height <= frame.height and width <= frame.width
        interpolation = "AREA" if shrinking else "BILINEAR"  # as `resize_frames`: area down, bilinear up
        picture = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation=interpolation)
        return np.rot90(picture, self.rotation // 90) if self.rotation else picture

    def close(self) -> None:
        self._frames = iter(())
        self._in_order = None
        self._container.close()


_Decoder = _DecordBackend | _PyAVBackend


def _stamp(item: av.Packet | av.VideoFrame) -> int | None:
    """A packet's or frame's presentation time, or its decoding time where the container has only that."""
    return item.pts if item.pts is not None else item.dts


def _starts_group(frame: av.VideoFrame) -> bool:
    """Whether decoding can start at this frame: a keyframe, or an intra picture (H.264 open GOP)."""
    return bool(frame.key_frame) or frame.pict_type == PictureType.I


def _strictly_rising(stamps: Sequence[int | None]) -> bool:
    return None not in stamps and all(a < b for a, b in zip(stamps, stamps[1:]))


def _upright_rotation(frame: av.VideoFrame) -> int:
    """Degrees (0, 90, 180 or 270, counterclockwise) that turn the coded picture the way a player shows it."""
    return round(frame.rotation / 90) * 90 % 360


def _declared_rate(stream: av.video.stream.VideoStream) -> float:
    """Frames per second as the stream declares them; 25 (PAL) where it declares nothing usable."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and 0 < float(rate) <= 1000:
            return float(rate)
    return 25.0


_BACKENDS = {"decord": _DecordBackend, "pyav": _PyAVBackend}


def _open_container(path: str | bytes) -> av.container.InputContainer:
    """Open with PyAV (a file, or bytes from memory) and require a video stream (about 1 ms: headers
    only); one decoder thread."""
    try:
        container = av.open(io.BytesIO(path) if isinstance(path, bytes) else path)
    except av.error.FFmpegError as err:
        raise _Unreadable(_ffmpeg_reason(err)) from err
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        container.close()
        raise _NoVideoStream(f"no video stream (holds: {', '.join(kinds)})")
    container.streams.video[0].codec_context.thread_count = 1
    return container


class VideoReader:
    """An open video; many reads share one open file (the pipeline cuts several clips per video).

    Made by `open_video`. Frames come back as (N, H, W, 3) uint8 RGB; timestamps are seconds from the
    first frame; `timeout` is the seconds each read may take (None: no limit). Use it as a context manager,
    or call `close()`. One reader serves one thread at a time (decoders keep position state).
    """

    def __init__(self, backend: _Decoder, info: VideoInfo, timeout: float | None, spill: str | None):
        self._backend: _Decoder | None = backend
        self._times = backend.times
        self.info = info
        self.timeout = timeout
        self._stuck = False
        self._cleanup = weakref.finalize(self, _remove_quietly, spill) if spill else None

    def read_frames(
        self, indices: Sequence[int] | np.ndarray, size: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Frames at these indices, in the order given; repeats are decoded once.

        `size` (h, w) resizes them as `labels.resize_frames` does (area when shrinking), in the decoder's
        colour conversion where the backend can: far cheaper than resizing full-size frames.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = self.info.num_frames
        if indices.size and (indices.min() < 0 or indices.max() >= n):
            raise IndexError(f"{self.info.source}: frame indices must lie in [0, {n}), got {indices}")
        unique, order = np.unique(indices, return_inverse=True)
        height, width = size or (self.info.height, self.info.width)
        expected = (unique.size, height, width, 3)
        if not unique.size:
            return np.zeros(expected, dtype=np.uint8)
        frames = self._guarded(lambda: self._backend.decode(unique, (height, width)))
        if frames.shape != expected or frames.dtype != np.uint8:
            raise VideoDecodeError(
                f"{self.info.source}: {self.info.backend} returned frames of shape {frames.shape} "
                f"{frames.dtype}, expected {expected} uint8"
            )
        return frames[order]

    def timestamps(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Start times in seconds (from the first frame) of the frames at these indices."""
        return self._times[np.asarray(indices, dtype=np.int64)]

    def index_at(self, seconds: float | Sequence[float] | np.ndarray) -> np.ndarray:
        """Index of the frame on screen at each time (seconds from the first frame)."""
        seconds = np.atleast_1d(np.asarray(seconds, dtype=np.float64))
        if seconds.size and (seconds.min() < 0 or seconds.max() >= self.info.duration):
            raise ValueError(
                f"{self.info.source}: times must lie in [0, {self.info.duration:g}) s, got {seconds.tolist()}"
            )
        return np.searchsorted(self._times, seconds, side="right") - 1

    def read_at(self, seconds: float | Sequence[float] | np.ndarray) -> np.ndarray:
        """Frames on screen at these times (seconds from the first frame)."""
        return self.read_frames(self.index_at(seconds))

    def sample_clip(
        self,
        num_frames: int,
        mode: SamplingMode = "middle",
        start: float | None = None,
        end: float | None = None,
        rng: np.random.Generator | int | None = None,
        size: tuple[int, int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`num_frames` frames sampled from [start, end) seconds, at `size` (h, w) if given: (frames,
        timestamps).

        The window is cut on the decoded timestamps, so it is exact for variable-rate files too.
        """
        first, stop = self._window(start, end)
        indices = first + sample_frame_indices(stop - first, self.info.fps, num_frames, mode, rng=rng)
        return self.read_frames(indices, size), self.timestamps(indices)

    def _window(self, start: float | None, end: float | None) -> tuple[int, int]:
        start = 0.0 if start is None else start
        end = self.info.duration if end is None else end
        if end <= start:
            raise ValueError(f"{self.info.source}: clip end {end:g} s must come after its start {start:g} s")
        first, stop = np.searchsorted(self._times, [start, end], side="left")
        if stop <= first:
            raise VideoDecodeError(
                f"{self.info.source}: no frames in [{start:g}, {end:g}) s; the video lasts "
                f"{self.info.duration:g} s"
            )
        return int(first), int(stop)

    def _guarded(self, work: Callable[[], _T]) -> _T:
        if self._backend is None:
            raise ValueError(f"{self.info.source}: the video is closed")
        if self._stuck:
            raise DecodeTimeout(f"{self.info.source}: an earlier decode timed out; reopen the video")
        try:
            return _call_with_deadline(work, self.timeout, self.info.source)
        except _Unreadable as err:
            raise err.error(f"{self.info.source}: {err}") from None
        except DecodeTimeout:
            self._stuck = True  # the worker thread still owns the decoder: never touch it again
            raise

    def close(self) -> None:
        if self._backend is not None and not self._stuck:
            self._backend.close()
        self._backend = None
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_video(
    source: VideoSource,
    *,
    name: str | None = None,
    timeout: float | None = DECODE_TIMEOUT,
    backend: Backend = "auto",
) -> VideoReader:
    """Open a video from a local path, an fsspec URI (`file://`, `memory://`, `s3://` ...) or bytes.

    Bytes are decoded from memory by PyAV (the default backend: a shard's clip never touches the disk);
    remote files, and bytes for decord (which crashes on truncated in-memory AVI data), are first copied to
    a temporary file, removed on `close()`. `name` labels the video in errors and `VideoInfo.source` (defaults
    to the path or URI). `timeout` (seconds, None for none) bounds the open and each later read.
    Raises `VideoDecodeError` when the video cannot be read, with the name and the reason.
    """
    if backend not in ("auto", *_BACKENDS):
        raise ValueError(f"unknown video backend {backend!r}: use auto, decord or pyav")
    label = name or _describe(source)
    local = _local_path(source)
    from_memory = isinstance(source, bytes | bytearray | memoryview) and backend != "decord"
    spill = None if local is not None or from_memory else _new_temporary_file(label)

    def target() -> str | bytes:
        if local is not None:
            return local
        return bytes(source) if from_memory else _copy_to(source, spill)

    try:
        opened = _call_with_deadline(lambda: _open_backend(target(), backend, label), timeout, label)
    except BaseException:
        if spill is not None:
            _remove_quietly(spill)
        raise
    duration = float(opened.times[-1] + opened.frame_length)
    count = len(opened.times)
    info = VideoInfo(
        source=label,
        backend=opened.name,
        fps=round(count / duration, 6) if duration > 0 else 0.0,
        num_frames=count,
        width=int(opened.width),
        height=int(opened.height),
        duration=round(duration, 6),
        timestamps=opened.timestamps,
        rotation=opened.rotation,
        sample_aspect_ratio=round(opened.sample_aspect_ratio, 6),
    )
    return VideoReader(opened, info, timeout, spill)


def load_clip(
    source: VideoSource,
    num_frames: int,
    mode: SamplingMode = "middle",
    start: float | None = None,
    end: float | None = None,
    rng: np.random.Generator | int | None = None,
    *,
    timeout: float | None = DECODE_TIMEOUT,
) -> tuple[np.ndarray, np.ndarray, VideoInfo]:
    """Open, sample `num_frames` frames at the video's size, close: (frames (T, H, W, 3) uint8, timestamps
    (T,) seconds, info). A reader's primitive; the commands cut clips with `trajtok.data.clips`."""
    with open_video(source, timeout=timeout) as video:
        frames, times = video.sample_clip(num_frames, mode, start, end, rng)
        return frames, times, video.info


def labelling_window(
    duration: float, seconds: float, start: float | None = None, end: float | None = None
) -> tuple[float | None, float | None]:
    """The [start, end) seconds a one-off labelling reads: what was asked, else `seconds` of the middle.

    Frames spread over a whole long video are far apart in time and label poorly (walkers merge into the
    lawn); a window of a few seconds, the length of a training clip, keeps them close. Only the ends not
    given are filled in: with `start` alone the window runs `seconds` from it. `seconds <= 0` or a video
    no longer than the window gives the whole video.
    """
    if seconds <= 0 or (start is not None and end is not None):
        return start, end
    if start is not None:
        return start, start + seconds
    if end is not None:
        return max(0.0, end - seconds), end
    if duration <= seconds:
        return None, None
    first = (duration - seconds) / 2
    return first, first + seconds


def sample_frame_indices(
    num_frames: int,
    fps: float,
    num_samples: int,
    mode: SamplingMode = "middle",
    start: float | None = None,
    end: float | None = None,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Indices of `num_samples` frames from the window [start, end) seconds of a video.

    The window is split into `num_samples` equal bins; "middle" takes each bin's centre (evaluation,
    deterministic), "random" a uniformly random frame inside each bin (training). A window shorter than
    `num_samples` frames repeats frames. Seconds map to indices at a constant `fps`; for variable-rate
    files use `VideoReader.sample_clip`, which cuts the window on the decoded timestamps.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    if mode not in ("middle", "random"):
        raise ValueError(f"unknown sampling mode {mode!r}: use middle or random")
    first = 0 if start is None else max(0, _frame_at_or_after(start, fps))
    stop = num_frames if end is None else min(num_frames, _frame_at_or_after(end, fps))
    if stop <= first:
        raise ValueError(f"the window [{start}, {end}) s holds no frames of a {num_frames}-frame video")
    width = (stop - first) / num_samples
    if mode == "middle":
        offsets = np.full(num_samples, 0.5)
    else:
        offsets = np.random.default_rng(rng).random(num_samples)
    positions = first + (np.arange(num_samples) + offsets) * width
    return np.minimum(np.floor(positions).astype(np.int64), stop - 1)


def _frame_at_or_after(seconds: float, fps: float) -> int:
    return int(np.ceil(seconds * fps - 1e-6))


def _open_backend(path: str | bytes, backend: Backend, label: str) -> _Decoder:
    """The decoder for a file (or, for PyAV, the video's bytes in memory)."""
    if isinstance(path, bytes):
        if not path:
            raise VideoDecodeError(f"{label}: empty file")
    elif stat.S_ISREG((status := os.stat(path)).st_mode) and status.st_size == 0:
        raise VideoDecodeError(f"{label}: empty file")
    try:
        if backend == "decord":
            alone = _DecordBackend(path)
            alone.decode(np.array([len(alone.times) - 1]), (alone.height, alone.width))  # the count holds
            return alone
        return _PyAVBackend(path)
    except _Unreadable as err:
        raise err.error(f"{label}: {err}") from None


def _call_with_deadline(work: Callable[[], _T], timeout: float | None, label: str) -> _T:
    """Run `work` in a daemon thread; if it outlives `timeout` seconds, abandon it and raise."""
    if timeout is None:
        return work()
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as err:
            outcome["error"] = err

    worker = threading.Thread(target=run, name=f"decode {label}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        _abandoned[:] = [thread for thread in _abandoned if thread.is_alive()] + [worker]
        raise DecodeTimeout(f"{label}: decode timed out after {timeout:g}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@atexit.register
def _let_abandoned_decodes_finish(grace: float = 5.0) -> None:
    """Give decodes abandoned at their deadline up to `grace` seconds to end before the interpreter exits.

    decord aborts the process ("pure virtual method called") if it is unloaded while one of its decodes
    is still computing (in decord's own threads, hence the process-wide CPU clock). A decode blocked on
    I/O uses no CPU and is safe to leave, so exit does not wait for it.
    """
    deadline = time.monotonic() + grace
    while any(worker.is_alive() for worker in _abandoned) and time.monotonic() < deadline:
        busy_since = time.process_time()
        time.sleep(0.05)
        if time.process_time() - busy_since < 0.005:
            return


def _describe(source: VideoSource) -> str:
    if isinstance(source, bytes | bytearray | memoryview):
        return f"<{len(source)} bytes>"
    return os.fspath(source)


def _local_path(source: VideoSource) -> str | None:
    """The file system path of a local source (a path or a file:// URI), else None."""
    if isinstance(source, bytes | bytearray | memoryview):
        return None
    text = os.fspath(source)
    if "://" not in text:
        return _existing_file(text, text)
    try:
        fs, path = fsspec.core.url_to_fs(text)
    except (ImportError, ValueError) as err:  # e.g. the s3 driver is not installed
        raise VideoDecodeError(f"{text}: {err}") from None
    if isinstance(fs, LocalFileSystem):
        return _existing_file(path, text)
    return None


def _existing_file(path: str, label: str) -> str:
    """The path, if something readable could be there (a file, a pipe, a device), else a user error."""
    if not os.path.exists(path):
        raise VideoMissing(f"{label}: no such file")
    if os.path.isdir(path):
        raise VideoDecodeError(f"{label}: is a directory, not a video file")
    return path


def _new_temporary_file(label: str) -> str:
    handle, path = tempfile.mkstemp(prefix="trajtok-video-", suffix=Path(label).suffix[:8])
    os.close(handle)
    return path


def _copy_to(source: VideoSource, path: str) -> str:
    if isinstance(source, bytes | bytearray | memoryview):
        with open(path, "r+b") as local:
            local.write(source)
        return path
    uri = os.fspath(source)
    try:
        # "r+b" never recreates the file if a timed-out open already removed it.
        with fsspec.open(uri, "rb") as remote, open(path, "r+b") as local:
            while chunk := remote.read(1 << 22):
                local.write(chunk)
    except FileNotFoundError:
        raise VideoMissing(f"{uri}: no such file") from None
    except (OSError, ImportError, ValueError) as err:
        raise VideoDecodeError(f"{uri}: cannot fetch ({err})") from None
    return path


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _median_step(times: np.ndarray) -> float:
    return float(np.median(np.diff(times))) if len(times) > 1 else 0.0


def _first_line(err: BaseException) -> str:
    """decord's messages start with a source location and carry a C++ stack; keep the reason."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    return text.split(": ", 1)[-1] if text.startswith("[") else text


def _ffmpeg_reason(err: av.error.FFmpegError) -> str:
    reason = err.strerror or str(err)
    if isinstance(err, av.error.InvalidDataError):
        return f"not a readable video ({reason.lower()})"
    return reason
