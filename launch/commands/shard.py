"""`trajtok shard`: label clips from a manifest and write WebDataset shards, as a Ray job."""

from __future__ import annotations

import argparse

from launch.commands._common import add_config_arguments, config_from_args

# Short forms of the two settings every shard job names.
ALIASES = {"manifest": "data.manifest", "out": "pipeline.out"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "shard",
        help="decode, sample and label clips from a manifest into WebDataset shards (a Ray job)",
        description="Plan shards from the manifest, then decode, sample, label and encode clips on Ray "
        "workers and write OUT/shard-NNNNNN.tar with a stats JSON per finished shard and OUT/summary.json "
        "(every manifest row: written, skipped with the reason, or failed). A rerun skips finished shards "
        "and redoes the rest. Example: trajtok shard configs/shard.yaml manifest=m.jsonl out=shards/ "
        "clip.frames=16. `manifest=` and `out=` stand for data.manifest= and pipeline.out=.",
    )
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.job import run_shard_job  # Ray loads only when a job runs, not for --help

    summary = run_shard_job(config_from_args(args, ALIASES))
    now = summary["run"]
    print(
        f"{summary['rows']} rows: {summary['written']} written ({summary['clips']} clips in "
        f"{summary['shards']} shards), {summary['skipped']} skipped, {summary['failed']} failed; "
        f"{now['shards_written']} shards written now, {now['shards_already_done']} already done"
    )
    for row in summary["skipped_rows"][:5] + summary["failed_rows"][:5]:
        print(f"  line {row['line']}: {row['reason']}")
    return 0
