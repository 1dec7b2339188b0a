"""`trajtok model-info MODEL [key=value ...]`: parameters per part, forward GFLOPs, tokens per clip."""

from __future__ import annotations

import argparse
import dataclasses
import json

from launch.commands._common import expand_aliases
from trajtok.config import MODEL_NAMES, ModelConfig, load_config
from trajtok.errors import ConfigError

# Bare keys: any model field, and two clip settings by the names model cards use.
ALIASES = {
    **{f.name: f"model.{f.name}" for f in dataclasses.fields(ModelConfig)},
    "frames": "clip.frames",
    "resolution": "clip.size",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "model-info",
        help="parameters, forward GFLOPs and tokens per clip of a model (no weights, no compute)",
        description="Builds MODEL on the meta device and reports its parameters per part, forward GFLOPs at "
        "batch 1 (torch's flop counter) and video tokens per clip.",
    )
    parser.add_argument("model", choices=sorted(MODEL_NAMES), help="registry name")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="size=tiny|small|base|paper, frames=16, resolution=224, any model field (num_queries=64) "
        "or a dotted config key (model.transformer=L)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def _check_dotted(item: str) -> str:
    """An override left bare after the aliases is a key this command does not know."""
    key, sep, _ = item.partition("=")
    if not sep:
        raise ConfigError(f"override '{item}': expected key=value")
    if "." not in key:
        raise ConfigError(
            f"override '{item}': unknown key; use frames, resolution, a model field or a dotted key"
        )
    return item


def run(args: argparse.Namespace) -> int:
    from trajtok.models.info import format_summary, model_summary

    overrides = [_check_dotted(item) for item in expand_aliases(args.overrides, ALIASES)]
    cfg = load_config(None, [f"model.name={args.model}", *overrides])
    summary = model_summary(cfg.model, cfg.clip)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0
