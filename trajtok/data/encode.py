"""Encoding frames into a video file (H.264 in MP4 through PyAV's bundled libx264)."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np


def encode_video(frames: np.ndarray, fps: float, crf: int = 18) -> bytes:
    """Encode (T, H, W, 3) uint8 RGB frames as H.264 MP4 bytes; H and W must be even (yuv420p).

    Every frame becomes one coded frame (no B-frame reordering surprises on decode) so that frame i of
    the decoded file is frame i that was given, which the shard contract relies on.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 in yuv420p needs even sizes, got {h}x{w}: resize or crop first")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=_fps_fraction(fps))
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "bf": "0", "preset": "veryfast", "g": str(max(t, 1))}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def write_video(path: str | Path, frames: np.ndarray, fps: float, crf: int = 18) -> Path:
    """Encode frames and write them to `path` (an .mp4 file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_video(frames, fps, crf))
    return path


def _fps_fraction(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)
