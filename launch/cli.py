"""The `trajtok` command line.

Each subcommand lives in its own module under `launch/commands/` and is found at start-up, so adding
a command never touches this file. A `TrajTokError` (bad input) is printed as one line and exits 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from launch import commands
from trajtok import __version__
from trajtok.errors import TrajTokError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trajtok",
        description="Trajectory-token video pretraining: pseudo-labels, shards, training, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"trajtok {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TrajTokError as err:
        print(f"trajtok {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"trajtok {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
