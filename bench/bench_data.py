"""Data path throughput per shard format: bytes and decoding per clip, the training loader per worker,
workers per GPU; which format to store frames in (`pipeline.frame_format`: mp4, jpg, png).

Stored clips are what `trajtok shard` writes: T-frame windows of the real sample video vtest.avi
(pedestrians, 10 fps), resized to `--short-side`, in shard samples (frames as H.264 mp4 or per-frame jpg
(quality 95, 4:2:0) or png, + label map + json), for each of `--formats`.
1. decode: each backend (decord, PyAV) decodes every frame of every stored mp4 clip from its bytes, the
   way the loader does (`open_video` on the bytes), with this process pinned to one core: clips/s per core;
   and for every format, `decode_sample` (what a loader worker runs) in milliseconds per clip.
2. loader (timed by `bench_loader`'s functions, on these shards): the training loader (random resized crop
   to `--size`, flips, label maps carried along, the colour changes drawn; they are applied on the training
   device, `trajtok.data.colour`) in this process pinned to one core, which is what one loader worker does:
   clips/s per worker, and its milliseconds per clip decoding and augmenting. Then the real DataLoader with
   1..`--workers` worker processes.
3. workers per GPU: a training step that consumes R clips/s waits for data less than 5% of the time
   once the loader delivers at least 0.95 R, i.e. ceil(0.95 R / per-worker rate) workers. R comes from
   `--step-rate`, or from every row of a `trajtok bench model --json` result (`--model-json`).

    .venv/bin/trajtok bench data --clips 16 --frames 16 --model-json bench-out/model-h100.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import torch
import webdataset as wds
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loader import clip_parts, clips_per_second, loader_config  # noqa: E402
from common import REPO_ROOT, report, run_record, script_main  # noqa: E402

from pipeline.worker import TAR_MTIME  # noqa: E402
from trajtok.config import DEVICE_DECODE_FORMATS, JobConfig  # noqa: E402
from trajtok.data.device_decode import frames_on_device, start_decoders  # noqa: E402
from trajtok.data.loader import build_loader  # noqa: E402
from trajtok.data.sample import FRAME_FORMATS, build_sample, decode_sample  # noqa: E402
from trajtok.data.video import load_clip, open_video  # noqa: E402

VIDEO = REPO_ROOT.parent / "shared" / "data" / "videos" / "vtest.avi"
WINDOW_SECONDS = 4.0
VIDEO_SECONDS = 79.0  # vtest.avi: 795 frames at 10 fps
MAX_DATA_WAIT = 0.05
BACKENDS = ("decord", "pyav")


@contextlib.contextmanager
def one_core() -> Iterator[None]:
    """Run the block on a single core (and one torch thread): rates per core, whatever the machine."""
    cores = os.sched_getaffinity(0)
    threads = torch.get_num_threads()
    os.sched_setaffinity(0, {min(cores)})
    torch.set_num_threads(1)
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)
        torch.set_num_threads(threads)


def resize_short_side(frames: np.ndarray, short_side: int) -> np.ndarray:
    """(T, H, W, 3) -> short side `short_side`, both sides even (H.264 in yuv420p)."""
    height, width = frames.shape[1:3]
    scale = short_side / min(height, width)
    size = (2 * round(width * scale / 2), 2 * round(height * scale / 2))
    return np.stack([cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in frames])


def stored_samples(
    clips: int, frames: int, short_side: int, video: Path = VIDEO, frame_format: str = "mp4"
) -> list[dict]:
    """Shard samples of `clips` windows of the sample video, labelled with a block grid of trajectories."""
    step = (VIDEO_SECONDS - WINDOW_SECONDS) / max(1, clips - 1)
    samples = []
    for index in tqdm(range(clips), desc="stored clips", leave=False):
        start = index * step
        pixels, times, info = load_clip(video, frames, "middle", start, start + WINDOW_SECONDS)
        pixels = resize_short_side(pixels, short_side)
        height, width = pixels.shape[1:3]
        rows = np.arange(height)[:, None] * 8 // height
        cols = np.arange(width)[None, :] * 8 // width
        labels = np.broadcast_to((rows * 8 + cols + 1).astype(np.uint16), (frames, height, width))
        samples.append(
            build_sample(
                pixels,
                np.ascontiguousarray(labels),
                source=f"{video.name}#{index}",
                clip_index=index,
                clip_start=start,
                clip_end=start + WINDOW_SECONDS,
                timestamps=[float(t) for t in times],
                captions="people walk across a plaza past a lamp post",
                source_fps=info.fps,
                source_width=info.width,
                source_height=info.height,
                labeler={"name": "blocks", "version": "1", "params": {}},
                frame_format=frame_format,
            )
        )
    return samples


def decode_rate(samples: list[dict], backend: str, repeats: int) -> float:
    """Clips/s of one backend decoding every frame of each clip's mp4, on one core."""
    with one_core():
        start = time.perf_counter()
        for _ in range(repeats):
            for sample in samples:
                with open_video(bytes(sample["mp4"]), backend=backend) as video:
                    video.read_frames(np.arange(video.info.num_frames))
        return repeats * len(samples) / (time.perf_counter() - start)


def decode_ms(samples: list[dict], repeats: int) -> float:
    """Milliseconds per clip of `decode_sample` (frames and label map from the sample's bytes), one core."""
    with one_core():
        start = time.perf_counter()
        for _ in range(repeats):
            for sample in samples:
                decode_sample(sample)
        return 1e3 * (time.perf_counter() - start) / (repeats * len(samples))


def frame_kib(sample: dict) -> float:
    """KiB of a sample's frames (the mp4, or every per-frame image), the label map and json aside."""
    return sum(len(v) for k, v in sample.items() if k.split(".")[-1] in FRAME_FORMATS) / 1024


def write_shards(samples: list[dict], folder: Path, per_shard: int = 4) -> str:
    shards = math.ceil(len(samples) / per_shard)
    for shard in range(shards):
        with wds.TarWriter(str(folder / f"bench-{shard:06d}.tar"), encoder=False, mtime=TAR_MTIME) as sink:
            for sample in samples[shard * per_shard : (shard + 1) * per_shard]:
                sink.write(sample)
    return str(folder / f"bench-{{000000..{shards - 1:06d}}}.tar")


def bench_loader_config(pattern: str, args: argparse.Namespace, workers: int) -> JobConfig:
    sizes = [f"clip.frames={args.frames}", f"clip.size={args.size}", f"train.batch_size={args.batch}"]
    return loader_config(pattern, workers, *sizes)


def loader_rate(
    pattern: str, args: argparse.Namespace, workers: int, device_formats: frozenset[str] = frozenset()
) -> float:
    """Clips/s of the training loader with `workers` processes (0: in this process), after its first batch."""
    return clips_per_second(bench_loader_config(pattern, args, workers), args.batches, device_formats)


def device_decode_run(pattern: str, args: argparse.Namespace, frame_format: str) -> dict:
    """`data.device_decode`: the worker's clips/s with the frames left encoded (one core), and the clips/s
    the training device decodes and places them at: nvjpeg / NVDEC on a GPU, OpenCV / PyAV in this
    process on a CPU. Empty where the device has no decoder for the format (said in one line)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    decoders = start_decoders([frame_format], device)
    if not decoders:
        return {}
    formats = frozenset(decoders)
    with one_core():
        worker = loader_rate(pattern, args, 0, formats)
    loader, _ = build_loader(bench_loader_config(pattern, args, 0), 0, 1, device_formats=formats)
    batches = list(islice(loader, args.batches + 1))
    frames_on_device(batches[0], device, decoders)  # warm-up: first-call set-up of the decoder
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    synchronize()
    start = time.perf_counter()
    for batch in batches[1:]:
        frames_on_device(batch, device, decoders)
    synchronize()
    device_rate = args.batches * args.batch / (time.perf_counter() - start)
    return {"worker_clips_per_s": worker, "device": str(device), "device_clips_per_s": device_rate}


def workers_needed(step_rate: float, per_worker: float) -> int:
    """Loader workers whose clips keep a step consuming `step_rate` clips/s waiting < 5% of the time."""
    return max(1, math.ceil((1 - MAX_DATA_WAIT) * step_rate / per_worker))


def step_rates(args: argparse.Namespace) -> list[dict]:
    """Training consumption rates to size workers for: from a `bench model` JSON, or `--step-rate`."""
    if args.model_json:
        result = json.loads(Path(args.model_json).read_text())
        return [
            {"model": row["model"], "frames": row["frames"], "train_clips_per_s": row["train_clips_per_s"]}
            for row in result["rows"]
        ]
    return [{"model": "given", "frames": args.frames, "train_clips_per_s": rate} for rate in args.step_rate]


def format_run(args: argparse.Namespace, frame_format: str) -> dict:
    """One shard format: bytes and decode per clip, the loader per worker and with worker processes, and
    the workers per GPU each step rate needs."""
    samples = stored_samples(args.clips, args.frames, args.short_side, args.video, frame_format)
    result: dict = {
        "kib_per_clip": float(np.mean([frame_kib(s) for s in samples])),
        "decode_ms_per_clip": decode_ms(samples, args.repeats),
    }
    if frame_format == "mp4":
        result["decode_clips_per_s_per_core"] = {b: decode_rate(samples, b, args.repeats) for b in BACKENDS}
    with tempfile.TemporaryDirectory(prefix="bench-data-") as folder:
        pattern = write_shards(samples, Path(folder))
        with one_core():
            per_worker = loader_rate(pattern, args, workers=0)
            parts = clip_parts(pattern, len(samples))
        loaders = {workers: loader_rate(pattern, args, workers) for workers in range(1, args.workers + 1)}
        on_device = (
            device_decode_run(pattern, args, frame_format) if frame_format in DEVICE_DECODE_FORMATS else {}
        )
    sizing = [
        {**rate, "workers_for_5pct_wait": workers_needed(rate["train_clips_per_s"], per_worker)}
        for rate in step_rates(args)
    ]
    if on_device:
        on_device["workers_per_gpu"] = [
            {
                **rate,
                "workers_for_5pct_wait": workers_needed(
                    rate["train_clips_per_s"], on_device["worker_clips_per_s"]
                ),
            }
            for rate in step_rates(args)
        ]
    return {
        "device_decode": on_device,
        **result,
        "loader_clips_per_s_per_worker": per_worker,
        "loader_ms_per_clip": parts,
        "loader_clips_per_s": {str(w): rate for w, rate in loaders.items()},
        "workers_per_gpu": sizing,
    }


def run(args: argparse.Namespace, command: list[str]) -> dict:
    return {
        "record": run_record(command, torch.device("cpu")),
        "clip": {"frames": args.frames, "stored_short_side": args.short_side, "model_input": args.size},
        "formats": {frame_format: format_run(args, frame_format) for frame_format in args.formats},
    }


def markdown(result: dict) -> str:
    clip = result["clip"]
    formats = result["formats"]
    workers = list(next(iter(formats.values()))["loader_clips_per_s"])
    header = ["format", "KiB per clip", "decode ms per clip (1 core)", "worker: decode + crop ms"]
    header += ["clips/s per worker", *(f"{w} worker(s) clips/s" for w in workers)]
    lines = [
        f"Clips: {clip['frames']} frames, stored at short side {clip['stored_short_side']}, loader output "
        f"{clip['model_input']} px square (crop and flip in the worker; colour on the device).",
        "",
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
    ]
    for name, row in formats.items():
        parts = row["loader_ms_per_clip"]
        cells = [name, f"{row['kib_per_clip']:.0f}", f"{row['decode_ms_per_clip']:.1f}"]
        cells += [f"{parts['decode_ms']:.0f} + {parts['augment_ms']:.0f}"]
        cells += [f"{row['loader_clips_per_s_per_worker']:.1f}"]
        cells += [f"{rate:.1f}" for rate in row["loader_clips_per_s"].values()]
        lines.append("| " + " | ".join(cells) + " |")
    if "mp4" in formats:
        lines += ["", "| mp4 decoder | clips/s per core |", "|---|---|"]
        for backend, rate in formats["mp4"]["decode_clips_per_s_per_core"].items():
            lines.append(f"| decode, {backend}, per core | {rate:.1f} |")
    rows = [(name, r) for name, row in formats.items() for r in row["workers_per_gpu"]]
    if rows:
        lines += [
            "",
            "| format | model | T | step clips/s | loader workers for data-wait < 5% |",
            "|---|---|---|---|---|",
        ]
        for name, row in rows:
            lines.append(
                f"| {name} | {row['model']} | {row['frames']} | {row['train_clips_per_s']:.1f} | "
                f"{row['workers_for_5pct_wait']} |"
            )
    on_device = {name: row["device_decode"] for name, row in formats.items() if row.get("device_decode")}
    if on_device:
        lines += [
            "",
            "Frames left encoded for the training device (`data.device_decode`):",
            "",
            "| format | clips/s per worker | device | its decode + crop clips/s | workers for wait < 5% |",
            "|---|---|---|---|---|",
        ]
        for name, row in on_device.items():
            sizing = ", ".join(
                f"{r['workers_for_5pct_wait']} at {r['train_clips_per_s']:.0f}"
                for r in row["workers_per_gpu"]
            )
            cells = [
                name,
                f"{row['worker_clips_per_s']:.1f}",
                row["device"],
                f"{row['device_clips_per_s']:.1f}",
            ]
            lines.append("| " + " | ".join([*cells, sizing or "-"]) + " |")
    record = result["record"]
    lines += ["", f"`{record['command']}` on {record['device']}, {record['date']}, commit {record['commit']}"]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clips", type=int, default=16, help="stored clips (windows of vtest.avi)")
    parser.add_argument("--video", type=Path, default=VIDEO, help="the sample video vtest.avi (where it is)")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip (T)")
    parser.add_argument("--short-side", type=int, default=256, help="stored frames' short side")
    parser.add_argument("--size", type=int, default=224, help="loader output (random resized crop) side")
    parser.add_argument("--batch", type=int, default=4, help="loader batch size")
    parser.add_argument("--batches", type=int, default=8, help="timed loader batches per setting")
    parser.add_argument("--workers", type=int, default=2, help="largest number of loader workers to try")
    parser.add_argument("--repeats", type=int, default=2, help="decode passes over the stored clips")
    parser.add_argument("--step-rate", type=float, nargs="*", default=[], help="training clips/s to size for")
    parser.add_argument("--model-json", type=Path, help="a `trajtok bench model --json` result to size for")
    parser.add_argument(
        "--formats",
        nargs="+",
        default=list(FRAME_FORMATS),
        choices=FRAME_FORMATS,
        help="shard frame formats to compare (default: all)",
    )
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")


def main(args: argparse.Namespace, command: list[str]) -> int:
    return report(run(args, command), markdown, args.json)


if __name__ == "__main__":
    script_main(__doc__, add_arguments, main)
