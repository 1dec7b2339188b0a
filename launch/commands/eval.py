"""`trajtok eval CONFIG ckpt=... task=...`: score exported weights on retrieval, classification,
segmentation quality, probing or video question answering; JSON to the run directory, metrics to MLflow."""

from __future__ import annotations

import argparse
import dataclasses

from launch.commands._common import add_config_arguments, config_from_args
from launch.local import run_local
from trajtok.config import EvalConfig, JobConfig
from trajtok.errors import ConfigError

ENTRY = "trajtok.eval.run:main"
# Keys of the eval group may be given bare (`task=probe`), unless a top-level key has the name.
ALIASES = {
    f.name: f"eval.{f.name}"
    for f in dataclasses.fields(EvalConfig)
    if f.name not in {top.name for top in dataclasses.fields(JobConfig)}
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate exported weights: retrieval, zero-shot classification, segmentation, probing, QA",
        description="Evaluate eval.ckpt (a weights.safetensors file or the training run directory) on "
        "eval.task (retrieval | classify | segment | probe | qa) over data.manifest or data.eval_shards, "
        "with the clip protocol of the config (clip.frames, clip.size, clip.sampling). Keys of the eval "
        "group may be given bare: `ckpt=runs/x task=classify` means `eval.ckpt=... eval.task=...`. Writes "
        "<eval.out or run_dir>/eval_<task>.json and logs to MLflow, nested under the training run when the "
        "checkpoint's directory holds its mlflow_run_id. launch.nproc > 1 splits feature extraction across "
        "local processes with the same results.",
    )
    add_config_arguments(parser, config_required=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, ALIASES)
    if cfg.launch.backend != "local":
        raise ConfigError(f"launch.backend '{cfg.launch.backend}': `trajtok eval` runs on this machine")
    if cfg.launch.nproc > 1:
        return run_local(ENTRY, cfg)
    from trajtok.eval.run import main  # DeepSpeed and MLflow load only when a command runs

    return main(cfg)
