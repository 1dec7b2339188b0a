"""`trajtok synth`: write the built-in synthetic dataset (videos, exact label maps, captioned manifest)."""

from __future__ import annotations

import argparse
import json

from launch.commands._common import add_config_arguments, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write the synthetic dataset: textured moving shapes with exact labels and captions",
        description="Write synth.videos clips under synth.out: videos/<id>.mp4, labels/<id>.npz and "
        "manifest.jsonl. Deterministic by synth.seed; a rerun with the same config reuses the files. "
        "synth.questions=true writes long-video QA instead: one row per question (question, answer, "
        "question_type), e.g. synth.frames=64.",
    )
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from trajtok.data.synth import dataset_is_current, write_dataset  # the video stack, when it runs

    cfg = config_from_args(args).synth
    verb = "reused" if dataset_is_current(cfg) else "wrote"
    manifest = write_dataset(cfg)
    with manifest.open() as rows:
        first = json.loads(next(rows))
    sample = (
        f"question: {first['question']} ({first['answer']})"
        if cfg.questions
        else f"caption: {first['caption']}"
    )
    print(
        f"{verb} {cfg.videos} clips of {cfg.frames} frames, {cfg.width}x{cfg.height} at {cfg.fps:g} fps, "
        f"in {manifest.parent}\nmanifest: {manifest}\nsample {sample}"
    )
    return 0
