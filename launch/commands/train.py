"""`trajtok train`: train a model on shards with DeepSpeed, as `launch.nproc` processes on this machine."""

from __future__ import annotations

import argparse

from launch.commands._common import add_config_arguments, config_from_args
from trajtok.errors import ConfigError

ENTRY = "trajtok.train.loop:main"  # one rank of the job


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train trajvit2, vit3d or the segmenter on shards (DeepSpeed, local processes)",
        description="Train model.name on data.shards with DeepSpeed ZeRO (train.zero_stage) in launch.nproc "
        "local processes (gloo on CPU, NCCL on GPUs). Logs every train.log_every steps, checkpoints to "
        "<run_dir>/checkpoints every train.checkpoint_every steps, resumes by default (train.resume=auto), "
        "and writes <run_dir>/weights.safetensors at the end. train.dry_run=true prints what the job would "
        "build (parameters, GFLOPs, memory per rank, each rank's first shards, where output goes) and exits. "
        "On a cluster use `trajtok submit train`.",
    )
    add_config_arguments(parser, config_required=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from launch.local import run_local
    from trajtok.train.checks import check_job  # torch loads only when a job runs

    cfg = config_from_args(args)
    if cfg.launch.backend != "local":
        raise ConfigError(
            f"launch.backend '{cfg.launch.backend}': `trajtok train` runs locally; use `trajtok submit train`"
        )
    check_job(cfg)
    if cfg.train.dry_run:
        from trajtok.train.plan import format_plan, job_plan

        print(format_plan(job_plan(cfg, cfg.launch.nproc)))
        return 0
    return run_local(ENTRY, cfg)
