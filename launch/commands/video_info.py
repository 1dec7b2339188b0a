"""`trajtok video-info`: what each video holds as decoded, one JSON line per file (a small ffprobe)."""

from __future__ import annotations

import argparse
import json
import sys

from trajtok.config import DECODE_TIMEOUT


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "video-info",
        help="print fps, decodable frame count, size, duration and backend of videos as JSON lines",
        description="Open each video (path or fsspec URI), check that its first and last frames decode, and "
        "print one JSON line per file. A file that cannot be read gets one error line on stderr; the "
        "others are still printed. Exit status 1 if any file failed.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="video files or URIs (file://, s3://, ...)")
    parser.add_argument(
        "--backend",
        choices=["auto", "decord", "pyav"],
        default="auto",
        help="decoder to use; auto is PyAV, decord is there to compare (default: auto)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DECODE_TIMEOUT,
        metavar="SECONDS",
        help=f"give up on a file whose decoding takes longer; 0 for no limit (default: {DECODE_TIMEOUT:g})",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from trajtok.data.video import open_video  # PyAV and numpy load only when a command runs
    from trajtok.errors import VideoDecodeError

    failed = 0
    for path in args.paths:
        try:
            with open_video(path, timeout=args.timeout or None, backend=args.backend) as video:
                print(json.dumps(video.info.to_dict()), flush=True)
        except VideoDecodeError as err:
            failed += 1
            print(f"trajtok {args.command}: error: {err}", file=sys.stderr, flush=True)
    return 1 if failed else 0
