"""Sharding pipeline throughput, for the "Sharding pipeline" section of BENCHMARKS.md.

Clips are 4 s windows of a source video, sampled to `--frames` frames at `--size` short side, exactly as
`trajtok shard` makes them. Two sources: the real sample video vtest.avi (768x576 MPEG-4 part 2, 10 fps)
and the same pictures as typical web video (480x360 H.264, 25 fps, keyframe every 250 frames).

For each source, without labels (decode, sample, resize, encode) and with the `classical` labeler:
1. one process, no Ray, one thread: clips per second of wall time and per CPU second;
2. the Ray job with 1 and with 2 worker actors: "steady" is clips over the busiest worker's time inside
   its shards (start-up excluded), "wall" the whole job including Ray and actor start-up, "per CPU s"
   clips over the workers' CPU time; efficiency = steady / (workers x single-process wall rate).
Per-CPU-second rates are what a core gives when it is not shared; on a loaded machine the wall rates
fall and the per-CPU-second rates do not. Then, per source and decoder (PyAV, the default, and decord),
where a clip's CPU time goes: open, decode with resize, encode. Last, what crosses the object store per
shard (bytes).

    .venv/bin/python bench/bench_pipeline.py [--clips 32] [--frames 16] [--size 256] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import platform
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np
import ray
import torch

from pipeline.job import row_fingerprint, run_shard_job
from pipeline.outputs import STATS_SUFFIX
from pipeline.plan import plan_shards
from pipeline.worker import clip_sample
from pseudolabel.base import labeler_from_config
from trajtok.config import JobConfig, load_config
from trajtok.data.clips import read_clips
from trajtok.data.encode import encode_video
from trajtok.data.labels import resize_frames, short_side_size
from trajtok.data.manifest import read_manifest
from trajtok.data.video import open_video

VTEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos" / "vtest.avi"


def web_video(path: Path) -> Path:
    """vtest's pictures as a 480x360 H.264 file at 25 fps with x264's default keyframe interval."""
    with open_video(VTEST) as video:
        frames = resize_frames(video.read_frames(np.arange(video.info.num_frames)), (360, 480))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 480, 360, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def make_manifest(video: Path, clips: int, seconds: float = 4.0) -> Path:
    """`clips` distinct windows spread over the video (overlapping once it is used up)."""
    with open_video(video) as opened:
        duration = opened.info.duration
    step = (duration - seconds - 0.1) / max(1, clips - 1)
    starts = [round(i * step, 3) for i in range(clips)]
    rows = [{"video": str(video), "caption": f"window {a}", "start": a, "end": a + seconds} for a in starts]
    path = video.with_suffix(".jsonl")
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def config(manifest: Path, out: Path, args: argparse.Namespace, *extra: str) -> JobConfig:
    return load_config(
        None,
        [
            f"data.manifest={manifest}",
            f"pipeline.out={out}",
            f"run_dir={out.parent / 'run'}",
            f"clip.frames={args.frames}",
            f"clip.size={args.size}",
            "clip.clips_per_video=1",
            f"pipeline.clips_per_shard={args.clips_per_shard}",
            "tracking.enabled=false",
            *extra,
        ],
    )


def single_process(cfg: JobConfig) -> dict[str, float]:
    """The same work in this process, one thread, no Ray: clips per wall second and per CPU second."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    labeler = labeler_from_config(cfg.pseudolabel) if cfg.pipeline.label else None
    labeler_info = labeler.describe() if labeler else None
    rows = read_manifest(cfg.data.manifest).rows
    wall, cpu, clips = time.perf_counter(), time.process_time(), 0
    for row in rows:
        for clip in read_clips(row.path, row.start, row.end, cfg.clip, cfg.pipeline.decode_timeout):
            labels = labeler.label(clip.frames, clip.timestamps).labels if labeler else None
            clip_sample(clip, row, labels, labeler_info, cfg.pipeline.frame_format)
            clips += 1
    return {
        "clips_per_s": round(clips / (time.perf_counter() - wall), 3),
        "clips_per_cpu_s": round(clips / (time.process_time() - cpu), 3),
    }


def stage_costs(
    video: Path, backend: str, args: argparse.Namespace, clips: int = 12, opener: Callable = open_video
) -> dict[str, float]:
    """CPU milliseconds per clip of each stage, one thread: open the video (with `opener`, `open_video` unless
    another reader is compared), decode 16 frames of a 4 s window at the clip size, encode them (as
    `clip_sample` does)."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with opener(video) as opened:
        duration = opened.info.duration
    totals: dict[str, float] = defaultdict(float)
    for i in range(clips):
        start = i * (duration - 4.2) / (clips - 1)
        began = time.process_time()
        reader = opener(video, backend=backend)
        opened_at = time.process_time()
        size = short_side_size(reader.info.height, reader.info.width, args.size, multiple=2)
        frames, _ = reader.sample_clip(args.frames, "middle", start, start + 4.0, size=size)
        decoded_at = time.process_time()
        encode_video(frames, args.frames / 4.0)
        reader.close()
        totals["open_ms"] += opened_at - began
        totals["decode_and_resize_ms"] += decoded_at - opened_at
        totals["encode_ms"] += time.process_time() - decoded_at
    costs = {stage: round(1000 * total / clips, 1) for stage, total in totals.items()}
    costs["clips_per_cpu_s"] = round(1000 / sum(costs.values()), 2)
    return costs


def ray_job(cfg: JobConfig) -> dict[str, float]:
    out = Path(cfg.pipeline.out)
    shutil.rmtree(out, ignore_errors=True)
    summary = run_shard_job(cfg)
    busy: dict[str, float] = defaultdict(float)
    cpu, stats_bytes = 0.0, 0
    for path in out.glob(f"*{STATS_SUFFIX}"):
        stats = json.loads(path.read_text())
        busy[stats["worker"]] += stats["seconds"]
        cpu += stats["cpu_seconds"]
        stats_bytes = max(stats_bytes, len(path.read_bytes()))
    clips = summary["clips"]
    return {
        "workers_used": len(busy),
        "steady_clips_per_s": round(clips / max(busy.values()), 3),
        "wall_clips_per_s": round(clips / summary["run"]["seconds"], 3),
        "clips_per_cpu_s": round(clips / cpu, 3),
        "stats_bytes": stats_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--clips-per-shard", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    sources = {"vtest.avi 768x576 MPEG-4": VTEST, "480x360 H.264": web_video(work / "web.mp4")}
    results: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
        "clip": f"{args.frames} frames, short side {args.size}, {args.clips} clips of 4 s windows",
    }
    ray.init("local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        for source, video in sources.items():
            manifest = make_manifest(video, args.clips)
            for label in (False, True):
                name = f"{source}, {'classical' if label else 'no labels'}"
                switch = f"pipeline.label={str(label).lower()}"
                entry = {"single_process": single_process(config(manifest, work / "out", args, switch))}
                for workers in (1, 2):
                    actors = f"pipeline.label_actors={workers}"
                    run = ray_job(config(manifest, work / "out", args, switch, actors))
                    run["efficiency"] = round(
                        run["steady_clips_per_s"] / (workers * entry["single_process"]["clips_per_s"]), 3
                    )
                    entry[f"ray_{workers}_workers"] = run
                results[name] = entry
                print(name, json.dumps(entry), flush=True)
            stages = {backend: stage_costs(video, backend, args) for backend in ("pyav", "decord")}
            results[f"{source}, CPU per clip by stage"] = stages
            print(source, json.dumps(stages), flush=True)
            plan = plan_shards(read_manifest(manifest).rows, args.clips_per_shard, row_fingerprint)[0]
            results["object_store"] = {
                "plan_bytes": len(pickle.dumps(plan)),
                "stats_bytes": entry["ray_2_workers"]["stats_bytes"],
                "frames_bytes_per_clip": args.frames * args.size * (args.size * 4 // 3) * 3,
            }
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    results["load_average_after"] = round(os.getloadavg()[0], 1)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
