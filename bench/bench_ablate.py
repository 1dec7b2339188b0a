"""The paper's TrajViT2 ablations through the demo's recipe: one row per switch, the paper's sign beside it.

Each row trains trajvit2 the way `trajtok demo` does (stage 1: the segmenter alone on the pseudo-labels;
stage 2: the whole model warm-started from it) with one switch changed, on the same shards, and scores it
on the same held-out clips: retrieval R@1 / R@5 (mean of text-to-video and video-to-text), the learned
segmenter's VEQ and mean best overlap against the exact ground truth, tokens per clip, training seconds.
A switch that cannot touch stage 1 (the hard mask lives in the trajectory encoder) reuses the as-built
stage 1. The paper's numbers (TrajTok Table 5) are for ViT-L on real data: what can carry over to the demo
is the sign, and a row whose sign does not reproduce is reported as such.

    .venv/bin/trajtok bench ablate --out bench-out/ablate            # the demo's size, about 25 minutes
    .venv/bin/trajtok bench ablate --out /tmp/a demo.train_videos=32 train.steps=20 demo.segmenter_steps=10
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, report, run_record, script_main  # noqa: E402

from launch.demo import (  # noqa: E402
    data_sets,
    evaluate_model,
    has_ground_truth,
    make_shards,
    segmenter_stage,
    train_model,
    training_summary,
    with_changes,
    with_held_out,
)
from trajtok.config import load_config  # noqa: E402

DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.yaml"


@dataclass(frozen=True)
class Switch:
    """One row: config changes, whether they reach stage 1, and the paper's change (metric, points)."""

    changes: dict[str, Any]
    stage_one: bool
    paper: tuple[str, float] | None


SWITCHES = {
    "as built": Switch({}, True, None),
    "no feature detach": Switch({"model.detach_features": False}, True, ("seg VEQ", -8.2)),
    "no Dice (focal only)": Switch(
        {"train.loss.dice": 0.0, "train.loss.pretrain_dice": 0.0}, True, ("R@5", -5.4)
    ),
    "no hard mask": Switch({"model.hard_mask": False}, False, ("R@5", -4.7)),
    # the cost switches and the heads they came with (no paper row: the paper has neither)
    "full-resolution read": Switch({"model.pooled_read": False}, True, None),
    "shared K/V": Switch({"model.shared_kv": True}, False, None),
    "D -> D -> D heads (mlp)": Switch({"model.assignment_head": "mlp"}, True, None),
    "the release's scale at init (3.83)": Switch({"model.logit_scale_init": 3.8333}, True, None),
}


def _folder(out: Path, name: str) -> Path:
    return out / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _row(cfg, shards: str, heldout: Path, out: Path, name: str, init: str, scored: bool) -> dict:
    switch = SWITCHES[name]
    run_dir, seconds = train_model(cfg, "trajvit2", shards, out, **{**switch.changes, "model.init": init})
    retrieval = evaluate_model(cfg, run_dir, heldout, "retrieval")
    segmentation = evaluate_model(cfg, run_dir, heldout, "segment") if scored else {}
    train = training_summary(run_dir, cfg.tracking.uri)
    return {
        "R@1": (retrieval["t2v_R@1"] + retrieval["v2t_R@1"]) / 2,
        "R@5": (retrieval["t2v_R@5"] + retrieval["v2t_R@5"]) / 2,
        "seg VEQ": 100 * segmentation["veq"] if scored else None,
        "seg mBO": 100 * segmentation["mean_best_overlap"] if scored else None,
        "tokens/clip": train.get("train/tokens_per_clip/mean"),
        "train s": seconds,
    }


def run(args: argparse.Namespace, command: list[str]) -> dict:
    out = args.out.resolve()
    cfg = load_config(args.config, [f"demo.out={out}", *args.overrides])
    cfg = with_changes(cfg, **{"tracking.uri": cfg.tracking.uri or f"sqlite:///{out / 'mlflow.db'}"})
    train_manifest, heldout = data_sets(cfg, out)
    cfg = with_held_out(cfg, heldout)
    scored = has_ground_truth(heldout)
    shards = make_shards(cfg, train_manifest, out)
    stage_one = segmenter_stage(cfg)
    rows, inits = {}, {}  # switch -> its row; stage-1 owner -> the segmenter run it warm-starts from
    for name in args.switches:
        owner = name if SWITCHES[name].stage_one else "as built"
        if owner not in inits:
            changes = {**SWITCHES[owner].changes, **stage_one}
            inits[owner] = str(train_model(cfg, "segmenter", shards, _folder(out, owner), **changes)[0])
        rows[name] = _row(cfg, shards, heldout, _folder(out, name), name, inits[owner], scored)
    return {
        "record": run_record(command, torch.device("cpu")),
        "recipe": {"segmenter_steps": cfg.demo.segmenter_steps, "steps": cfg.train.steps, "seed": cfg.seed},
        "rows": rows,
    }


def markdown(result: dict) -> str:
    keys = ("R@1", "R@5", "seg VEQ", "seg mBO", "tokens/clip", "train s")
    lines = [
        "| switch | " + " | ".join(keys) + " | paper | here |",
        "|---|" + "---|" * (len(keys) + 2),
    ]
    base = result["rows"].get("as built")
    for name, row in result["rows"].items():
        cells = ["-" if row[k] is None else f"{row[k]:.1f}" for k in keys]
        paper, here = "", ""
        if SWITCHES[name].paper:
            metric, change = SWITCHES[name].paper
            paper = f"{metric} {change:+.1f}"
            if base is not None and row[metric] is not None and base[metric] is not None:
                delta = row[metric] - base[metric]
                here = (
                    f"{metric} {delta:+.1f} ({'same sign' if delta * change > 0 else '**not reproduced**'})"
                )
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {paper} | {here} |")
    recipe, record = result["recipe"], result["record"]
    lines += [
        "",
        f"R@K in %, VEQ and mBO x 100; stage 1 {recipe['segmenter_steps']} steps, stage 2 {recipe['steps']} "
        f"steps, seed {recipe['seed']}.",
        f"`{record['command']}` on {record['device']}, {record['date']}, commit {record['commit']}",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="demo config (default: demo.yaml)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/ablate"), help="working folder")
    parser.add_argument(
        "--switches",
        nargs="+",
        choices=list(SWITCHES),
        default=list(SWITCHES),
        metavar="SWITCH",
        help=f"rows to run (default: all of {', '.join(repr(s) for s in SWITCHES)})",
    )
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (as for `trajtok demo`)")


def main(args: argparse.Namespace, command: list[str]) -> int:
    return report(run(args, command), markdown, args.json)


if __name__ == "__main__":
    script_main(__doc__, add_arguments, main)
