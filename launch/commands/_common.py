"""Argument helpers shared by the subcommands that take a config file and overrides."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping

from trajtok.config import JobConfig, load_config


def add_config_arguments(parser: argparse.ArgumentParser, config_required: bool = False) -> None:
    """`CONFIG` (a YAML file under configs/) then any number of `key=value` overrides."""
    parser.add_argument(
        "config",
        nargs=None if config_required else "?",
        help="YAML config file (see configs/); values override the built-in defaults",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. train.lr=3e-4")


def expand_aliases(items: Iterable[str], aliases: Mapping[str, str]) -> list[str]:
    """`key=value` -> `aliases[key]=value` for the short bare keys a command takes; other items unchanged."""
    expanded = []
    for item in items:
        key, sep, value = item.partition("=")
        expanded.append(f"{aliases[key]}={value}" if sep and key in aliases else item)
    return expanded


def config_from_args(
    args: argparse.Namespace, aliases: Mapping[str, str] | None = None, default: str | None = None
) -> JobConfig:
    """Load the config named on the command line; a lone `key=value` in the CONFIG slot is an override.

    `aliases` maps the command's short bare keys to config keys (`out` -> `pipeline.out`); `default` is the
    file a command reads when none is named (the demo's).
    """
    path, overrides = args.config, list(args.overrides)
    if path is not None and "=" in path:
        path, overrides = None, [path, *overrides]
    return load_config(path or default, expand_aliases(overrides, aliases or {}))
