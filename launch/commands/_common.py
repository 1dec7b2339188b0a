"""Argument helpers shared by the subcommands that take a config file and overrides."""

from __future__ import annotations

import argparse

from trajtok.config import JobConfig, load_config


def add_config_arguments(parser: argparse.ArgumentParser, config_required: bool = False) -> None:
    """`CONFIG` (a YAML file under configs/) then any number of `key=value` overrides."""
    parser.add_argument(
        "config",
        nargs=None if config_required else "?",
        help="YAML config file (see configs/); values override the built-in defaults",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. train.lr=3e-4")


def config_from_args(args: argparse.Namespace) -> JobConfig:
    """Load the config named on the command line; a lone `key=value` in the CONFIG slot is an override."""
    path, overrides = args.config, list(args.overrides)
    if path is not None and "=" in path:
        path, overrides = None, [path, *overrides]
    return load_config(path, overrides)
