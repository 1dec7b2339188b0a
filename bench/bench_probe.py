"""Probing heads on a frozen model's features: linear, attentive and TrajAdapter (n = 1, 2, 4), over seeds.

The paper's TrajAdapter claim at demo scale: a trained TrajTok segmenter's trajectories pool a frozen model's
features better than attentive pooling of every feature, and more tokens per trajectory help. Writes a
labelled synthetic probe set (train and held-out test from other seeds, the class a column of each scene:
the number of objects, the first object's shape or its motion), then runs `trajtok eval task=probe` once
per seed (each seed: the heads' initialisation and mini-batch order) and reports top-1 per head, mean and
range over the seeds.

    .venv/bin/trajtok bench probe --features demo-out/runs/vit3d --segmenter demo-out/runs/segmenter
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report, run_record, script_main  # noqa: E402

from trajtok.config import load_config  # noqa: E402
from trajtok.data.synth import write_dataset  # noqa: E402
from trajtok.eval.run import evaluate  # noqa: E402

COLUMNS = {  # class of a scene (its scenes.jsonl row)
    "objects": lambda scene: str(len(scene["objects"])),
    "shape": lambda scene: scene["objects"][0]["shape"],
    "motion": lambda scene: scene["objects"][0]["motion"],
}


def probe_set(out: Path, videos: int, seed: int, column: str, frames: int, size: int) -> Path:
    """A synthetic set of `videos` clips whose manifest rows carry `label` = the scene's `column`."""
    folder = out / f"synth-{seed}"
    if not (folder / "manifest.jsonl").is_file():
        cfg = load_config(None, [f"synth.out={folder}", f"synth.videos={videos}", f"synth.seed={seed}"])
        cfg.synth.frames, cfg.synth.height, cfg.synth.width = frames, size, size
        write_dataset(cfg.synth)
    scenes = [json.loads(line) for line in (folder / "scenes.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    labelled = folder / f"probe-{column}.jsonl"
    labelled.write_text(
        "".join(
            json.dumps({**row, "label": COLUMNS[column](scene)}) + "\n" for row, scene in zip(rows, scenes)
        )
    )
    return labelled


def run(args: argparse.Namespace, command: list[str]) -> dict:
    train = probe_set(args.out, args.train_videos, 7000, args.column, args.frames, args.size)
    test = probe_set(args.out, args.test_videos, 8000, args.column, args.frames, args.size)
    per_seed = []
    for seed in args.seeds:
        cfg = load_config(
            None,
            [
                "eval.task=probe",
                f"eval.ckpt={args.features}",
                f"eval.probe.segmenter={args.segmenter}",
                f"eval.probe.train={train}",
                f"eval.probe.steps={args.steps}",
                f"eval.probe.link_iou={args.link_iou}",
                f"eval.probe.masks={args.masks}",
                f"data.manifest={test}",
                f"clip.frames={args.frames}",
                f"clip.size={args.size}",
                "data.num_workers=0",
                f"seed={seed}",
                f"run_dir={args.out / f'eval-{seed}'}",
            ],
        )
        record = evaluate(cfg)
        per_seed.append({h["head"]: h for h in record["details"]["heads"]})
    heads = list(per_seed[0])
    rows = []
    for head in heads:
        top1 = np.array([seed[head]["top1"] for seed in per_seed])
        rows.append(
            {
                "head": head,
                "top1_mean": float(top1.mean()),
                "top1_min": float(top1.min()),
                "top1_max": float(top1.max()),
                "top1_per_seed": top1.tolist(),
                "parameters": per_seed[0][head]["parameters"],
            }
        )
    return {
        "run": run_record(command, torch.device("cpu")),
        "column": args.column,
        "masks": args.masks,
        "classes": record["details"]["classes"],
        "chance_top1": record["details"]["chance_top1"],
        "train_clips": args.train_videos,
        "test_clips": args.test_videos,
        "feature_shape": record["details"]["feature_shape"],
        "trajectories_per_clip": record["details"].get("trajectories_per_clip"),
        "seeds": args.seeds,
        "heads": rows,
    }


def markdown(result: dict) -> str:
    run_info = result["run"]
    lines = [
        f"`{run_info['command']}` ({run_info['device']}, {run_info['date']}, commit {run_info['commit']})",
        "",
        f"class: {result['column']} ({len(result['classes'])} classes, "
        f"chance {result['chance_top1']:.1f} %), TrajAdapter masks: {result['masks']}, "
        f"{result['train_clips']} train / {result['test_clips']} held-out clips, features "
        f"{'x'.join(map(str, result['feature_shape']))}, {result['trajectories_per_clip']:.1f} trajectories "
        f"per clip, seeds {result['seeds']}",
        "",
        "| head | top-1 mean | range | parameters |",
        "|---|---|---|---|",
    ]
    for row in result["heads"]:
        lines.append(
            f"| {row['head']} | {row['top1_mean']:.1f} | {row['top1_min']:.1f}-{row['top1_max']:.1f} "
            f"| {row['parameters'] / 1e3:.0f} k |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features", type=Path, required=True, help="the frozen model's run (e.g. vit3d)")
    parser.add_argument("--segmenter", type=Path, required=True, help="a trained segmenter or trajvit2 run")
    parser.add_argument("--column", choices=sorted(COLUMNS), default="objects", help="the class to probe")
    parser.add_argument("--train-videos", type=int, default=256)
    parser.add_argument("--test-videos", type=int, default=128)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300, help="training steps per head")
    parser.add_argument("--masks", choices=["hard", "coverage"], default="coverage", help="TrajAdapter reads")
    parser.add_argument("--link-iou", type=float, default=0.0, help="link trajectories across windows")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("bench-out/probe"), help="probe sets and eval runs")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")


def main(args: argparse.Namespace, command: list[str]) -> int:
    return report(run(args, command), markdown, args.json)


if __name__ == "__main__":
    script_main(__doc__, add_arguments, main)
