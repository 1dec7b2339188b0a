"""`trajtok shards inspect DIR`: counts, sizes, trajectories per clip, a picture, and full validation."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "shards",
        help="look into a folder of WebDataset shards",
        description="Tools for folders of shards written by `trajtok shard`.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    inspect = actions.add_parser(
        "inspect",
        help="count and validate every sample; draw a few with their trajectories",
        description="Read every tar in DIR (a path or fsspec URI), validate every sample against the "
        "sample contract (frames decoded too), check each finished shard against its stats, and print "
        "counts, sizes and trajectories per clip. Exit status 1 if any problem was found.",
    )
    inspect.add_argument("folder", metavar="DIR", help="folder holding shard-NNNNNN.tar files")
    inspect.add_argument(
        "--picture",
        default="shards-inspect.png",
        metavar="PNG",
        help="where to write the picture of a few samples and their trajectories (default: %(default)s)",
    )
    inspect.add_argument(
        "--samples", type=int, default=4, help="samples in the picture (default: %(default)s)"
    )
    inspect.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    inspect.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.shard_report import inspect_shards
    from trajtok.viz import write_png

    report, image = inspect_shards(args.folder, picture_samples=args.samples)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, default=str))
    else:
        print(report.text())
    if image is not None:
        path = write_png(args.picture, image)
        if not args.json:
            print(f"picture: {path}")
    return 0 if report.ok else 1
