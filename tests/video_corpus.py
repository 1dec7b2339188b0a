"""A corpus of small video files that carry the traps real-world files carry, written with PyAV at test time.

Each file is a few dozen frames of a moving gradient (every frame differs from its neighbours), made in
milliseconds, the same bytes on every run for a given PyAV. What each one exercises:

- B-frames stamped with their decoding times (pts == dts) in mp4, as some libraries' video writers do;
- packed B-frames in AVI (MPEG-4 Part 2, DivX style: a P- and a B-VOP in one chunk, then a placeholder);
- B-frames in AVI, unpacked; MPEG-TS (stamps from 7200, seeks land late); variable frame rate in mkv;
- open GOPs; an edit list that cuts the first frames (negative start); a display matrix (rotation);
- anamorphic pixels (sample aspect ratio 4:3); MJPEG; VP9 in WebM; 10-bit and 4:4:4; interlaced MPEG-2;
- odd and tiny sizes; files cut short.

`sequential_reference` is the reference every reader is held to: frame i is the i-th picture a plain
decode of every packet in file order gives (damaged packets skipped, as players do), turned upright.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

VOP_START = b"\x00\x00\x01\xb6"
DIVX_PACKED = b"\x00\x00\x01\xb2DivX503b1393p"  # user data that tells a decoder B-frames come packed


def gradient(frames: int = 24, height: int = 48, width: int = 64) -> np.ndarray:
    """A moving gradient: neighbouring frames differ, so a frame read in the wrong place shows."""
    t, y, x = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width), indexing="ij")
    image = np.stack([(x * 4 + t * 9) % 256, (y * 5 + t * 7) % 256, (x + y + t * 3) % 256], axis=-1)
    return image.astype(np.uint8)


def _write(
    path: Path,
    codec: str,
    frames: np.ndarray,
    *,
    options: dict[str, str] | None = None,
    pix_fmt: str = "yuv420p",
    frame_pts: Callable[[int], int] | None = None,
    time_base: Fraction | None = None,
    setup: Callable[[av.video.stream.VideoStream], None] | None = None,
    restamp: Callable[[av.Packet], None] | None = None,
    muxer_options: dict[str, str] | None = None,
) -> Path:
    with av.open(str(path), mode="w", options=muxer_options or {}) as output:
        stream = output.add_stream(codec, rate=25, options=options or {})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        if time_base is not None:
            stream.codec_context.time_base = time_base
        if setup is not None:
            setup(stream)
        for number, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if frame_pts is not None:
                frame.pts, frame.time_base = frame_pts(number), time_base
            for packet in stream.encode(frame):
                if restamp is not None:
                    restamp(packet)
                output.mux(packet)
        for packet in stream.encode():
            if restamp is not None:
                restamp(packet)
            output.mux(packet)
    return path


def _pts_from_dts(packet: av.Packet) -> None:
    packet.pts = packet.dts


def _n_vop(time_increment: int, increment_bits: int = 5) -> bytes:
    """A not-coded P-VOP (the placeholder chunk after a packed pair), for a 25 Hz time base (5 bits)."""
    bits = "01" + "0" + "1" + format(time_increment, f"0{increment_bits}b") + "1" + "0"
    bits += "0" + "1" * ((-len(bits) - 1) % 8)  # stuffing up to the byte boundary
    return VOP_START + int(bits, 2).to_bytes(len(bits) // 8, "big")


def write_packed_b_frames_avi(path: Path, frames: np.ndarray) -> Path:
    """MPEG-4 Part 2 with one B-frame between P-frames, packed as DivX and Xvid write them: each P-VOP
    shares its AVI chunk with the B-VOP shown before it, and a not-coded VOP fills the chunk after."""
    encoder = av.CodecContext.create("mpeg4", "w")
    encoder.height, encoder.width = frames.shape[1:3]
    encoder.pix_fmt, encoder.time_base, encoder.framerate = "yuv420p", Fraction(1, 25), 25
    encoder.options = {"bf": "1", "g": "12"}
    coded = []
    for number, image in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = number
        coded += [bytes(packet) for packet in encoder.encode(frame)]
    coded += [bytes(packet) for packet in encoder.encode(None)]
    first = coded[0].index(VOP_START)
    chunks = [coded[0][:first] + DIVX_PACKED + coded[0][first:]]  # decode order: I0 P2 B1 P4 B3 ...
    for at in range(1, len(coded), 2):
        if at + 1 < len(coded):
            chunks += [coded[at] + coded[at + 1], _n_vop((len(chunks) + 1) % 25)]
        else:
            chunks.append(coded[at])
    with av.open(str(path), mode="w", format="avi") as output:
        stream = output.add_stream("mpeg4", rate=25)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for number, data in enumerate(chunks):
            packet = av.Packet(data)
            packet.stream, packet.time_base = stream, Fraction(1, 25)
            packet.pts = packet.dts = number
            vop = data.index(VOP_START) + 4
            packet.is_keyframe = number == 0 or data[vop] >> 6 == 0  # coding type 00: an I-VOP
            output.mux(packet)
    return path


def _cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _frame_pts_vfr(number: int) -> int:
    """Milliseconds, with steps of 40, 20, 80 and 33 ms: a variable frame rate."""
    steps = [40, 20, 80, 33]
    return sum(steps[i % 4] for i in range(number))


MS = Fraction(1, 1000)
PER_FRAME = Fraction(1, 25)
B_FRAMES = {"bf": "2", "g": "12"}
FASTSTART = {"movflags": "faststart"}  # the index first, so a file cut short keeps it


def _anamorphic(stream: av.video.stream.VideoStream) -> None:
    stream.codec_context.sample_aspect_ratio = Fraction(4, 3)


# name: (how to write it into a folder, whether its timestamps can be trusted)
CORPUS: dict[str, tuple[Callable[[Path], Path], bool]] = {
    "b_frames_pts_is_dts.mp4": (
        lambda p: _write(p, "libx264", gradient(), options=B_FRAMES, restamp=_pts_from_dts),
        False,
    ),
    "packed_b_frames.avi": (lambda p: write_packed_b_frames_avi(p, gradient()), False),
    "b_frames.avi": (lambda p: _write(p, "mpeg4", gradient(), options=B_FRAMES), True),
    "b_pyramid.mp4": (
        lambda p: _write(p, "libx264", gradient(40), options={"bf": "3", "b-pyramid": "normal", "g": "15"}),
        True,
    ),
    "mpegts.ts": (lambda p: _write(p, "libx264", gradient(), options=B_FRAMES), True),
    "variable_rate.mkv": (
        lambda p: _write(p, "libx264", gradient(), options=B_FRAMES, frame_pts=_frame_pts_vfr, time_base=MS),
        True,
    ),
    "open_gop.mp4": (
        lambda p: _write(
            p,
            "libx264",
            gradient(40),
            options={"bf": "3", "x264-params": "open-gop=1:keyint=8:min-keyint=8:scenecut=0"},
        ),
        True,
    ),
    "edit_list_negative_start.mp4": (
        lambda p: _write(
            p, "libx264", gradient(), options={"bf": "0"}, frame_pts=lambda i: i - 5, time_base=PER_FRAME
        ),
        True,
    ),
    "rotated_90.mp4": (
        lambda p: _write(p, "libx264", gradient(), setup=lambda s: s.set_display_rotation(90)),
        True,
    ),
    "rotated_270.mov": (
        lambda p: _write(p, "libx264", gradient(), setup=lambda s: s.set_display_rotation(-90)),
        True,
    ),
    "anamorphic.mp4": (lambda p: _write(p, "libx264", gradient(), setup=_anamorphic), True),
    "mjpeg.avi": (lambda p: _write(p, "mjpeg", gradient(), pix_fmt="yuvj420p"), True),
    "vp9.webm": (lambda p: _write(p, "libvpx-vp9", gradient()), True),
    "10_bit.mp4": (lambda p: _write(p, "libx264", gradient(), pix_fmt="yuv420p10le"), True),
    "yuv444_odd_size.mkv": (lambda p: _write(p, "libx264", gradient(24, 13, 17), pix_fmt="yuv444p"), True),
    "interlaced_mpeg2.ts": (
        lambda p: _write(p, "mpeg2video", gradient(24, 64, 64), options={"flags": "+ildct+ilme", **B_FRAMES}),
        True,
    ),
    "tiny_mjpeg.avi": (lambda p: _write(p, "mjpeg", gradient(24, 6, 8), pix_fmt="yuvj444p"), True),
    "cut_short.mkv": (
        lambda p: _cut(_write(p, "libx264", gradient(40), options={"bf": "2", "g": "8"}), 0.7),
        True,
    ),
    "cut_short_faststart.mp4": (
        lambda p: _cut(
            _write(p, "libx264", gradient(40), options={"bf": "2", "g": "8"}, muxer_options=FASTSTART), 0.6
        ),
        True,
    ),
}


def write_corpus(folder: Path) -> dict[str, Path]:
    """Every corpus file, written into `folder`: {name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    return {name: make(folder / name) for name, (make, _) in CORPUS.items()}


def sequential_reference(
    path: Path, keep: np.ndarray | list[int] | None = None, size: tuple[int, int] | None = None
) -> tuple[int, np.ndarray]:
    """A plain decode of every packet in file order: (how many frames, the frames at `keep` (None: all)),
    upright, as (N, H, W, 3) uint8: at the coded size, or converted by swscale to `size` (h, w, upright),
    area when shrinking and bilinear when growing, as the reader's output-size path promises."""
    pictures, count = {}, 0
    wanted = None if keep is None else set(np.asarray(keep).tolist())
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    continue
                for frame in frames:
                    if wanted is None or count in wanted:
                        pictures[count] = _upright(frame, size)
                    count += 1
        except av.error.FFmpegError:
            pass  # the file ends early
    order = range(count) if keep is None else np.asarray(keep).tolist()
    return count, np.stack([pictures[i] for i in order])


def _upright(frame: av.VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
    turns = round(frame.rotation / 90) % 4
    if size is None:
        picture = frame.to_ndarray(format="rgb24")
    else:
        height, width = size if turns % 2 == 0 else size[::-1]
        shrinking = height <= frame.height and width <= frame.width
        picture = frame.to_ndarray(
            format="rgb24", width=width, height=height, interpolation="AREA" if shrinking else "BILINEAR"
        )
    return np.rot90(picture, turns)
