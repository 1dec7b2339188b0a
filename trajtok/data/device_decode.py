"""Frames decoded where the batch lands: jpg through nvjpeg, mp4 through NVDEC, on the training GPU.

With `data.device_decode` naming a format, the loader's workers leave that format's frames encoded: they
still read the sample, check it, decode its label map and draw the clip's crop, flip and colour with its
per-sample RNG (so a resume draws the same), and pass the bytes on with the drawn geometry
(`EncodedClip`). The trainer decodes them after the batch arrives: all jpg frames of a batch in one call
(`torchvision.io.decode_jpeg` on cuda, nvjpeg), mp4 clip by clip (torchcodec's CUDA decoder, NVDEC);
then crops, resizes and flips them there, as the workers would have (`trajtok.data.augment`).

`start_decoders` checks at start that each asked-for decoder works on the device (it decodes a tiny
frame); one that does not gets one log line and its format stays with the workers. On a CPU device the
decoders are the workers' own (OpenCV, PyAV), run in the training process: the path the tests take.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from trajtok.data.augment import Geometry
from trajtok.data.encode import encode_video
from trajtok.data.labels import Box
from trajtok.data.sample import JPEG_QUALITY, decode_image
from trajtok.data.video import open_video

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedClip:
    """A clip whose frames the trainer decodes: its format, its encoded entries (the mp4, or one jpg per
    frame), which stored frames to keep, and the geometry the worker drew for it."""

    format: str
    entries: list[bytes]
    keep: list[int]
    geometry: Geometry


# (clips, device) -> each clip's kept frames, (T, 3, H, W) uint8 on the device
Decoder = Callable[[list[EncodedClip], torch.device], list[torch.Tensor]]


def start_decoders(formats: list[str], device: torch.device) -> dict[str, Decoder]:
    """The decoders for `formats` that work on `device`; each one that does not is said in one line and
    left out (its frames are decoded by the loader's workers, as without the setting)."""
    decoders: dict[str, Decoder] = {}
    for kind in formats:
        if device.type != "cuda":
            decoders[kind] = _CPU_DECODERS[kind]
            continue
        try:
            decoder = _cuda_decoder(kind)
            decoder([_probe_clip(kind)], device)
        except Exception as err:  # a missing package, a CPU-only build, no nvjpeg/NVDEC: said and left
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            log.warning(
                "data.device_decode: %s frames are decoded by the loader workers: no %s decoder on %s (%s)",
                kind,
                "nvjpeg" if kind == "jpg" else "NVDEC",
                device,
                reason,
            )
            continue
        decoders[kind] = decoder
    return decoders


def frames_on_device(batch: dict, device: torch.device, decoders: dict[str, Decoder]) -> torch.Tensor:
    """The batch's uint8 (B, T, 3, S, S) frames on `device`: the workers' frames in one host-to-device
    copy, the clips they left encoded decoded and placed here. The host's seconds in that decoding go to
    batch["loader_s"]["device_decode"] (the log line's "on the device"; no sync: queued GPU work aside)."""
    encoded: list[tuple[int, EncodedClip]] = batch.get("encoded", [])
    if not encoded:
        return batch["frames"].to(device, non_blocking=True)
    started = time.perf_counter()
    size = batch["size"]
    shape = (len(batch["keys"]), len(encoded[0][1].keep), 3, size, size)
    if batch["frames"] is None:
        frames = torch.empty(shape, dtype=torch.uint8, device=device)
    else:
        frames = batch["frames"].to(device, non_blocking=True)
    for kind in sorted({clip.format for _, clip in encoded}):
        rows = [(row, clip) for row, clip in encoded if clip.format == kind]
        for (row, clip), clip_frames in zip(rows, _decode_all(decoders[kind], rows, device), strict=True):
            if clip_frames is None:  # undecodable: counted, unlabelled and blank rather than a crash
                key = batch["keys"][row]
                log.warning("skipping sample %s: its %s frames do not decode on %s", key, kind, device)
                batch["skipped"]["device-decode"] = batch["skipped"].get("device-decode", 0) + 1
                batch["labels"][row] = 0
                frames[row] = 0
            else:
                frames[row] = place_frames(clip_frames, clip.geometry, size)
    batch["loader_s"]["device_decode"] = time.perf_counter() - started
    return frames


def _decode_all(
    decoder: Decoder, rows: list[tuple[int, EncodedClip]], device: torch.device
) -> list[torch.Tensor | None]:
    """Every clip's frames in one call; where that fails, clip by clip, None for a clip that fails alone."""
    clips = [clip for _, clip in rows]
    try:
        return list(decoder(clips, device))
    except Exception:  # one bad clip spoils the batch call: find it
        return [_decode_one(decoder, clip, device) for clip in clips]


def _decode_one(decoder: Decoder, clip: EncodedClip, device: torch.device) -> torch.Tensor | None:
    try:
        return decoder([clip], device)[0]
    except Exception:
        return None


def place_frames(frames: torch.Tensor, geometry: Geometry, size: int) -> torch.Tensor:
    """(T, 3, H, W) uint8 -> the crop resized to (T, 3, size, size) and flipped, as the workers' numpy
    version does it (area averaging when shrinking, half-pixel bilinear when growing), within a grey level."""
    box = geometry.box
    crop = frames[:, :, box.top : box.top + box.height, box.left : box.left + box.width].float()
    area = size <= box.height and size <= box.width  # shrinking: `resize_frames` averages areas
    if area:  # OpenCV's area averaging: each output pixel the overlap-weighted mean of its source box
        rows, cols = _area_weights(box.height, size, crop), _area_weights(box.width, size, crop)
        out = torch.einsum("yh,tchw,xw->tcyx", rows, crop, cols)
    else:
        out = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)
    if geometry.flip:
        out = out.flip(-1)
    return (out + 0.5).floor_().clamp_(0, 255).to(torch.uint8)


def _area_weights(source: int, target: int, like: torch.Tensor) -> torch.Tensor:
    """(target, source) weights: how much of source pixel j lies in output pixel i's box, over its size."""
    scale = source / target
    starts = torch.arange(target, dtype=like.dtype, device=like.device)[:, None] * scale
    pixels = torch.arange(source, dtype=like.dtype, device=like.device)[None, :]
    overlap = torch.minimum(starts + scale, pixels + 1) - torch.maximum(starts, pixels)
    return overlap.clamp_(min=0) / scale


def _cuda_decoder(kind: str) -> Decoder:
    if kind == "jpg":
        from torchvision.io import ImageReadMode, decode_jpeg  # nvjpeg; the CUDA build of torchvision

        def decode(clips: list[EncodedClip], device: torch.device) -> list[torch.Tensor]:
            data = [torch.from_numpy(np.frombuffer(e, np.uint8).copy()) for c in clips for e in _kept(c)]
            images = iter(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))  # the batch, one call
            return [torch.stack([next(images) for _ in c.keep]) for c in clips]

        return decode
    from torchcodec.decoders import VideoDecoder  # NVDEC; torchcodec's CUDA build

    def decode_mp4(clips: list[EncodedClip], device: torch.device) -> list[torch.Tensor]:
        return [VideoDecoder(c.entries[0], device=str(device)).get_frames_at(c.keep).data for c in clips]

    return decode_mp4


def _kept(clip: EncodedClip) -> list[bytes]:
    return [clip.entries[i] for i in clip.keep]


def _decode_jpg_on_cpu(clips: list[EncodedClip], device: torch.device) -> list[torch.Tensor]:
    decoded = [np.stack([decode_image(e, "jpg frame") for e in _kept(c)]) for c in clips]
    return [torch.from_numpy(frames).permute(0, 3, 1, 2).to(device) for frames in decoded]


def _decode_mp4_on_cpu(clips: list[EncodedClip], device: torch.device) -> list[torch.Tensor]:
    out = []
    for clip in clips:
        with open_video(clip.entries[0], name="mp4") as video:
            frames = torch.from_numpy(video.read_frames(np.array(clip.keep)))
        out.append(frames.permute(0, 3, 1, 2).to(device))
    return out


_CPU_DECODERS: dict[str, Decoder] = {"jpg": _decode_jpg_on_cpu, "mp4": _decode_mp4_on_cpu}


def _probe_clip(kind: str) -> EncodedClip:
    """A tiny clip of `kind` to try a decoder on at start."""
    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    if kind == "mp4":
        entries = [encode_video(frames, 2.0)]
    else:
        entries = [cv2.imencode(".jpg", frames[0], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()] * 2
    return EncodedClip(kind, entries, [0, 1], Geometry(Box(0, 0, 16, 16), False))
