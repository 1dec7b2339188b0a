"""`trajtok config`: print the resolved config, to check a file and its overrides before a long job."""

from __future__ import annotations

import argparse

from omegaconf import OmegaConf

from launch.commands._common import add_config_arguments, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config",
        help="print the resolved config (defaults <- CONFIG <- overrides) and exit",
        description="Validate a config file and its overrides, and print the result as YAML.",
    )
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(OmegaConf.to_yaml(OmegaConf.structured(config_from_args(args))), end="")
    return 0
