"""`trajtok demo`: the main job on the built-in synthetic data, every stage, small, on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from launch.commands._common import add_config_arguments, config_from_args

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the main job on built-in data: synth -> labels + shards (Ray) -> train (DeepSpeed) -> eval",
        description="Make synthetic videos with exact trajectories, pseudo-label them and write shards with "
        "Ray, train trajvit2 and vit3d with DeepSpeed in local processes, evaluate both on held-out clips, "
        "log everything to MLflow and print a comparison table. Sized to finish in minutes on 2 CPU cores; "
        "reruns reuse finished stages. CONFIG defaults to configs/demo.yaml.",
    )
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from launch.demo import run_demo

    run_demo(config_from_args(args, default=str(DEFAULT_CONFIG)))
    return 0
