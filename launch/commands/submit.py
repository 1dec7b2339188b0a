"""`trajtok submit TARGET CONFIG [key=value ...]`: run a job on SLURM (or locally) through one launcher.

Each target maps to an entry point, "module:function" taking the `JobConfig`. Adding a job type is one line
in `TARGETS`: `"train": Target("trajtok.train.loop:main", "train a model")`; pipeline jobs that need a Ray
cluster across the allocation say `ray=True`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from launch.commands._common import add_config_arguments, config_from_args
from launch.commands.eval import ALIASES as EVAL_ALIASES
from trajtok.config import VLM_NAMES
from trajtok.errors import ConfigError


class Target(NamedTuple):
    entry: str  # "module:function", the function takes the JobConfig
    help: str
    ray: bool = False  # one task per node running a Ray cluster, the entry as its driver
    check: str = ""  # "module:function" run on the submit host before sbatch: refuses a job bound to fail
    aliases: Mapping[str, str] = MappingProxyType({})  # bare keys the target takes, as its own command does


TARGETS: dict[str, Target] = {
    "smoke": Target(
        "launch.smoke:smoke",
        "cluster smoke test: all ranks all_reduce; rank 0 records the attempt in the run dir and MLflow",
    ),
    "train": Target(
        "trajtok.train.loop:main",
        "DeepSpeed training: a task per GPU (or launch.nproc)",
        check="trajtok.train.checks:check_submission",
    ),
    "eval": Target(
        "trajtok.eval.run:main",
        "trajtok eval across the allocation's tasks (features split over them, the same results)",
        check="trajtok.eval.run:check_submission",
        aliases=EVAL_ALIASES,
    ),
    "shard": Target(
        "pipeline.job:run_shard_job",
        "trajtok shard on a Ray cluster over the nodes",
        ray=True,
        check="pipeline.job:check_submission",
    ),
    "ray-smoke": Target(
        "launch.ray_cluster:smoke",
        "Ray smoke test: start a Ray cluster across the nodes, run one task per CPU, report the nodes",
        ray=True,
    ),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "submit",
        help="run a job on SLURM (launch.backend=slurm) or as local processes",
        description="Submit TARGET with the given config. With launch.backend=slurm the job goes through "
        "submitit: launch.nodes nodes, one task per GPU (launch.gpus_per_node) or launch.nproc tasks per "
        "node, requeued with train.resume=auto on timeout or preemption; the job id and its log are printed, "
        "and launch.dry_run=true prints the sbatch script instead (for train, also what each rank builds). "
        "With launch.backend=local it runs here.",
    )
    targets = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, target in TARGETS.items():
        target_parser = targets.add_parser(name, help=target.help, description=target.help)
        add_config_arguments(target_parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    target = TARGETS[args.target]
    cfg = config_from_args(args, target.aliases)
    backend = cfg.launch.backend
    if backend == "slurm":
        from launch.local import load_entry
        from launch.slurm import log_folder, sbatch_script, submit

        if target.check:  # what the job would refuse after its queue wait, refused now
            load_entry(target.check)(cfg)

        if cfg.launch.dry_run:
            print(sbatch_script(cfg, ray=target.ray), end="")
            if args.target == "train" and cfg.model.name not in VLM_NAMES:  # the plan reads shards
                from trajtok.train.plan import format_plan, job_plan

                ranks = cfg.launch.nodes * (cfg.launch.gpus_per_node or cfg.launch.nproc)
                print("\n# what each rank builds\n" + format_plan(job_plan(cfg, ranks)))
            return 0
        job = submit(target.entry, cfg, ray=target.ray)
        print(f"submitted job {job.job_id}: {args.target} ({target.entry})")
        print(f"log: {job.paths.stdout}")
        print(f"run directory: {cfg.run_dir}; submitit files: {log_folder(cfg)}")
        return 0
    if backend == "local":
        if cfg.launch.dry_run:
            where = "as a Ray driver here" if target.ray else f"in {cfg.launch.nproc} local process(es)"
            print(f"would run {target.entry} {where}, run directory {cfg.run_dir}")
            return 0
        if target.ray:
            from launch.local import load_entry

            load_entry(target.entry)(cfg)
            return 0
        from launch.local import run_local

        return run_local(target.entry, cfg)
    raise ConfigError(f"launch.backend '{backend}': expected local or slurm")
