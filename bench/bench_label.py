"""Pseudo-labeller benchmark: quality against exact ground truth, clips/s per core, memory, real videos.

1. quality: the labeler on synthetic clips of held-out seeds from each of the two generators (`shapes`
   and `blobs`, drawn unlike each other: trajtok/data/synth.py; the classical labeler was developed on seeds
   1000-1031 and its tests use seeds from 7000), T frames at `--size` (H x W), scored with
   `trajtok.eval.segmentation` against each target on each generator: purity >= 0.90, mean best
   overlap >= 0.60, mean trajectory duration >= 0.8 T, at most 128 trajectories; VEQ and STQ are reported too.
2. speed: labelling alone, this process pinned to one core with one thread: clips/s per core from CPU time
   (what a core delivers however busy the machine) and from wall time. Decoding is timed apart: the
   same clip from H.264 mp4 bytes (what shards hold) and 16 frames of the real vtest.avi resized to 224.
   Memory of labelling one clip: the peak of traced allocations (numpy included), and in a fresh process
   the growth of resident memory during labelling and the process's peak (what a worker needs).
3. real videos: trajectories and durations on 16 frames of vtest.avi and tree.avi at 224 px short side;
   `--picture` writes both overlays into one PNG (docs/img/labels_real.png).
4. `--compare`: every superpixel x flow choice of the classical labeler on the development seeds, the
   measurement its defaults were chosen by.

    .venv/bin/trajtok bench label --clips 32 --compare --picture docs/img/labels_real.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, report, run_record, script_main  # noqa: E402

from pseudolabel.base import Labeler, build_labeler  # noqa: E402
from pseudolabel.classical import FLOWS, SUPERPIXELS  # noqa: E402
from trajtok.config import ClipConfig  # noqa: E402
from trajtok.data.clips import read_window  # noqa: E402
from trajtok.data.encode import encode_video  # noqa: E402
from trajtok.data.synth import GENERATORS, generate_clip  # noqa: E402
from trajtok.data.video import open_video  # noqa: E402
from trajtok.eval.segmentation import evaluate_segmentation, mean_scores  # noqa: E402
from trajtok.viz import overlay_frames, tile, write_png  # noqa: E402

VIDEOS = REPO_ROOT.parent / "shared" / "data" / "videos"
REAL_CLIP = ClipConfig(frames=16, size=224, sampling="middle")  # bin centres at 224, cut as shards cut
REAL = (("vtest.avi", 8.0), ("tree.avi", None))  # (file, clip end in seconds): tree.avi has 4.5 s of frames
DEVELOPMENT_SEEDS = 1000
TARGETS = {  # score -> (bound, "min" or "max")
    "purity": (0.90, "min"),
    "mean_best_overlap": (0.60, "min"),
    "duration_fraction": (0.80, "min"),
    "num_trajectories": (128, "max"),
}
SHOWN = ("purity", "mean_best_overlap", "undersegmentation_error", "duration_fraction", "num_trajectories")


@contextlib.contextmanager
def one_core() -> Iterator[None]:
    """Run the block on a single core with one OpenCV and one torch thread: rates per core."""
    cores = os.sched_getaffinity(0)
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    os.sched_setaffinity(0, {min(cores)})
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)


def synthetic(seeds: range, frames: int, size: tuple[int, int], generator: str = "shapes") -> list:
    return [
        generate_clip(seed, frames, *size, generator)
        for seed in tqdm(seeds, desc=f"synthetic clips ({generator})", leave=False)
    ]


def score(labeler: Labeler, clips: list) -> dict:
    """Mean scores over the clips, the worst clip's best overlap, and CPU seconds per clip."""
    scores, cpu = [], 0.0
    for clip in tqdm(clips, desc=f"{labeler.name} quality", leave=False):
        times = np.arange(len(clip.frames)) / 8.0
        started = time.process_time()
        labels = labeler.label(clip.frames, times).labels
        cpu += time.process_time() - started
        scores.append(evaluate_segmentation(labels, clip.labels))
    return {
        **mean_scores(scores),
        "worst_best_overlap": min(s.mean_best_overlap for s in scores),
        "max_trajectories": max(s.num_trajectories for s in scores),
        "cpu_seconds_per_clip": cpu / len(clips),
    }


def speed(labeler: Labeler, clips: list) -> dict:
    """Labelling clips/s on one core, by CPU time and by wall time (after one warm-up clip)."""
    with one_core():
        labeler.label(clips[0].frames, np.arange(len(clips[0].frames)) / 8.0)
        wall, cpu = time.perf_counter(), time.process_time()
        for clip in clips:
            labeler.label(clip.frames, np.arange(len(clip.frames)) / 8.0)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"clips_per_s_per_core_cpu": len(clips) / cpu, "clips_per_s_per_core_wall": len(clips) / wall}


def decode_seconds(clips: list) -> dict:
    """Seconds to decode one clip: from its H.264 mp4 bytes, and from the real vtest.avi (16 frames, 224)."""
    blobs = [encode_video(clip.frames, fps=8) for clip in clips]
    with one_core():
        started = time.perf_counter()
        for blob in blobs:
            with open_video(blob) as video:
                video.read_frames(np.arange(video.info.num_frames))
        from_mp4 = (time.perf_counter() - started) / len(blobs)
        started = time.perf_counter()
        for _ in range(3):
            read_window(str(VIDEOS / "vtest.avi"), REAL_CLIP)
        from_avi = (time.perf_counter() - started) / 3
    return {"mp4_clip": from_mp4, "vtest_avi_16_frames_224": from_avi}


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _labelling_process(name: str, params: dict, frames_file: str, queue) -> None:
    """In a fresh process: resident MiB before labelling one clip, and the process's peak after it."""
    frames = np.load(frames_file)
    labeler = build_labeler(name, params)
    before = _status_mib("VmRSS")
    labeler.label(frames, np.arange(len(frames)) / 8.0)
    queue.put((before, _status_mib("VmHWM")))


def memory(name: str, params: dict, frames: np.ndarray) -> dict:
    """MiB: the peak of traced allocations (numpy included) while labelling one clip; in a fresh process,
    the growth of resident memory from before labelling to the peak, and that peak (a worker's need)."""
    labeler = build_labeler(name, params)
    tracemalloc.start()
    labeler.label(frames, np.arange(len(frames)) / 8.0)
    traced = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    with tempfile.TemporaryDirectory(prefix="bench-label-") as folder:
        frames_file = str(Path(folder) / "frames.npy")
        np.save(frames_file, frames)
        child = context.Process(target=_labelling_process, args=(name, params, frames_file, queue))
        child.start()
        before, peak = queue.get(timeout=600)
        child.join()
    return {"traced_peak_mib": traced, "rss_growth_mib": peak - before, "process_peak_mib": peak}


def real_videos(labeler: Labeler, picture: Path | None) -> list[dict]:
    rows, strips = [], []
    for name, end in REAL:
        clip = read_window(str(VIDEOS / name), REAL_CLIP, end=end)
        frames, times = clip.frames, clip.timestamps
        started = time.process_time()
        result = labeler.label(frames, times)
        cpu = time.process_time() - started
        stats = result.trajectories
        rows.append(
            {
                "video": name,
                "size": list(frames.shape[1:3]),
                "trajectories": result.num_trajectories,
                "mean_frames_present": float(stats.frames_present.mean()),
                "full_length": int(np.count_nonzero(stats.frames_present == len(frames))),
                "cpu_seconds": cpu,
            }
        )
        strips.append(tile(overlay_frames(frames, result.labels)[[0, 5, 10, 15]], columns=4))
    if picture is not None:
        width = max(s.shape[1] for s in strips)
        padded = [np.pad(s, ((0, 4), (0, width - s.shape[1]), (0, 0))) for s in strips]
        write_png(picture, np.concatenate(padded)[:-4])
    return rows


def compare(frames: int, size: tuple[int, int], count: int) -> list[dict]:
    """Every superpixel x flow choice of the classical labeler on the development seeds."""
    clips = synthetic(range(DEVELOPMENT_SEEDS, DEVELOPMENT_SEEDS + count), frames, size)
    rows = []
    for superpixels in SUPERPIXELS:
        for flow in FLOWS:
            labeler = build_labeler("classical", {"superpixels": superpixels, "flow": flow})
            rows.append({"superpixels": superpixels, "flow": flow, **score(labeler, clips)})
    return rows


def run(args: argparse.Namespace, command: list[str]) -> dict:
    size = tuple(args.size)
    params = json.loads(args.params)
    labeler = build_labeler(args.labeler, params)
    seeds = range(args.first_seed, args.first_seed + args.clips)
    clips = {generator: synthetic(seeds, args.frames, size, generator) for generator in args.generators}
    quality = {generator: score(labeler, generated) for generator, generated in clips.items()}
    first = clips[args.generators[0]]
    result = {
        "record": run_record(command, torch.device("cpu")),
        "labeler": labeler.describe(),
        "clips": {"count": args.clips, "seeds": [args.first_seed, args.first_seed + args.clips - 1]},
        "frames": args.frames,
        "size": list(size),
        "quality": quality,
        "targets_met": {g: {key: _met(q, key) for key in TARGETS} for g, q in quality.items()},
        "speed": speed(labeler, first[: args.speed_clips]),
        "decode_seconds": decode_seconds(first[: args.speed_clips]),
        "memory": memory(args.labeler, params, first[0].frames),
        "real_videos": real_videos(labeler, args.picture),
    }
    if args.compare:
        result["compare"] = compare(args.frames, size, args.compare_clips)
    return result


def _met(quality: dict, key: str) -> bool:
    bound, kind = TARGETS[key]
    value = quality["max_trajectories"] if key == "num_trajectories" else quality[key]
    return value >= bound if kind == "min" else value <= bound


def markdown(result: dict) -> str:
    t, (h, w) = result["frames"], result["size"]
    seeds, generators = result["clips"]["seeds"], list(result["quality"])
    lines = [
        f"Labeler `{result['labeler']['name']}` v{result['labeler']['version']}; "
        f"{result['clips']['count']} synthetic clips (seeds {seeds[0]}-{seeds[1]}) of each generator, "
        f"{t} frames, {h}x{w} px.",
        "",
        "| score | " + " | ".join(f"`{g}`" for g in generators) + " | target |",
        "|---|" + "---|" * len(generators) + "---|",
    ]
    for key in SHOWN:
        target = TARGETS.get(key)
        bound = "" if target is None else f"{'>=' if target[1] == 'min' else '<='} {target[0]}"
        cells = []
        for g in generators:
            value = result["quality"][g]["max_trajectories" if key == "num_trajectories" else key]
            shown = f"{value:.0f} (max)" if key == "num_trajectories" else f"{value:.3f}"
            met = target is None or result["targets_met"][g][key]
            cells.append(shown if met else f"**{shown}** (missed)")
        lines.append(f"| {key.replace('_', ' ')} | {' | '.join(cells)} | {bound} |")
    rows = {
        "VEQ (SQ x RQ)": lambda q: f"{q['veq']:.3f} ({q['veq_sq']:.3f} x {q['veq_rq']:.3f})",
        "STQ (sqrt AQ x SQ)": lambda q: f"{q['stq']:.3f} (AQ {q['stq_aq']:.3f}, SQ {q['stq_sq']:.3f})",
        "mean trajectories per clip": lambda q: f"{q['num_trajectories']:.1f}",
        "worst clip's mean best overlap": lambda q: f"{q['worst_best_overlap']:.3f}",
    }
    for name, cell in rows.items():
        lines.append(f"| {name} | " + " | ".join(cell(result["quality"][g]) for g in generators) + " | |")
    lines.append("")
    s, d, m = result["speed"], result["decode_seconds"], result["memory"]
    lines += [
        "| speed and memory | value |",
        "|---|---|",
        f"| labelling, clips/s per core (CPU time) | {s['clips_per_s_per_core_cpu']:.2f} |",
        f"| labelling, clips/s per core (wall time, pinned) | {s['clips_per_s_per_core_wall']:.2f} |",
        f"| decode one clip from H.264 mp4, s | {d['mp4_clip']:.3f} |",
        f"| decode 16 frames of vtest.avi and resize to 224, s | {d['vtest_avi_16_frames_224']:.3f} |",
        f"| peak traced memory per clip, MiB | {m['traced_peak_mib']:.0f} |",
        f"| resident growth while labelling one clip, MiB | {m['rss_growth_mib']:.0f} |",
        f"| peak resident size of a labelling process, MiB | {m['process_peak_mib']:.0f} |",
        "",
        "| real video (16 frames) | size | trajectories | mean frames present | full-length | CPU s |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["real_videos"]:
        lines.append(
            f"| {row['video']} | {row['size'][0]}x{row['size'][1]} | {row['trajectories']} | "
            f"{row['mean_frames_present']:.1f} | {row['full_length']} | {row['cpu_seconds']:.2f} |"
        )
    if "compare" in result:
        lines += [
            "",
            "| superpixels | flow | purity | best overlap | under-seg. error | duration / T | "
            "trajectories | VEQ | STQ | CPU s/clip |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in result["compare"]:
            lines.append(
                f"| {row['superpixels']} | {row['flow']} | {row['purity']:.3f} | "
                f"{row['mean_best_overlap']:.3f} | {row['undersegmentation_error']:.3f} | "
                f"{row['duration_fraction']:.2f} | "
                f"{row['num_trajectories']:.1f} | {row['veq']:.3f} | {row['stq']:.3f} | "
                f"{row['cpu_seconds_per_clip']:.2f} |"
            )
    record = result["record"]
    lines += ["", f"`{record['command']}` on {record['device']}, {record['date']}, commit {record['commit']}"]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labeler", default="classical", help="labeler name (default: %(default)s)")
    parser.add_argument("--params", default="{}", help="labeler parameters as JSON (default: its defaults)")
    parser.add_argument("--clips", type=int, default=32, help="synthetic clips scored (default: %(default)s)")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="first held-out seed (default: %(default)s)"
    )
    parser.add_argument(
        "--generators",
        nargs="+",
        choices=sorted(GENERATORS),
        default=list(GENERATORS),
        help="synthetic generators scored (default: all)",
    )
    parser.add_argument("--frames", type=int, default=16, help="frames per clip, T (default: %(default)s)")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=[224, 288],
        metavar=("H", "W"),
        help="clip size (default: 224 288)",
    )
    parser.add_argument(
        "--speed-clips", type=int, default=8, help="clips timed for speed (default: %(default)s)"
    )
    parser.add_argument("--picture", type=Path, help="write the real videos' overlays to this PNG")
    parser.add_argument("--compare", action="store_true", help="also run the superpixel x flow comparison")
    parser.add_argument("--compare-clips", type=int, default=16, help="development clips per choice")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")


def main(args: argparse.Namespace, command: list[str]) -> int:
    return report(run(args, command), markdown, args.json)


if __name__ == "__main__":
    script_main(__doc__, add_arguments, main)
