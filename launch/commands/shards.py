"""`trajtok shards inspect DIR`: counts, sizes, trajectories per clip, a picture, and full validation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PICTURE = "inspect.png"


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
        metavar="PNG",
        help=f"where to write the picture of a few samples and their trajectories (default: DIR/{PICTURE} "
        "for a local DIR; none for a remote one)",
    )
    inspect.add_argument(
        "--samples", type=int, default=4, help="samples in the picture (default: %(default)s)"
    )
    inspect.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    inspect.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.shard_report import inspect_shards
    from trajtok.viz import write_png

    picture = args.picture or (None if "://" in args.folder else str(Path(args.folder) / PICTURE))
    report, image = inspect_shards(args.folder, picture_samples=args.samples if picture else 0)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, default=str))
    else:
        print(report.text())
    if image is not None and picture:
        path = write_png(picture, image)
        if not args.json:
            print(f"picture: {path}")
    elif not picture and not args.json:
        print(f"no picture: {args.folder} is remote; --picture PNG writes one")
    return 0 if report.ok else 1
