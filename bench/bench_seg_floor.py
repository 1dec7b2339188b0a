"""How far the segmentation losses can fall: trained segmenters against what the exact ground truth scores.

The segmenter learns from pseudo-labels, not from the truth. This scores, on the training shards' clips in
the evaluation view (centred, no augmentation), the focal and Dice losses of: an untrained segmenter, each
trained run given, and a "segmenter" that predicts the exact ground-truth trajectories (hard, one channel per
object). The last is the floor a segmenter that finds the true objects reaches; a loss below it means
fitting the labeller's own fragments. Needs a training manifest whose rows name `gt_labels` (the demo's
synthetic set does). The focal loss of a hard prediction is not defined, so its row shows Dice only.

    .venv/bin/trajtok bench seg-floor demo-out/runs/segmenter demo-out/runs/trajvit2 \\
        --manifest demo-out/synth-train/manifest.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report, run_record, script_main  # noqa: E402

from trajtok.config import load_config  # noqa: E402
from trajtok.data.augment import center_clip  # noqa: E402
from trajtok.data.labels import load_labels  # noqa: E402
from trajtok.data.loader import read_shard  # noqa: E402
from trajtok.data.manifest import read_manifest  # noqa: E402
from trajtok.data.normalise import normalise_frames  # noqa: E402
from trajtok.data.sample import decode_sample  # noqa: E402
from trajtok.data.shard_urls import expand_shards  # noqa: E402
from trajtok.errors import ConfigError  # noqa: E402
from trajtok.eval.evalset import GT_COLUMN  # noqa: E402
from trajtok.losses import segmentation_loss  # noqa: E402
from trajtok.models.registry import build_model  # noqa: E402
from trajtok.models.weights import load_weights, weights_file  # noqa: E402
from trajtok.rundir import CONFIG_FILE  # noqa: E402

GROUND_TRUTH, UNTRAINED = "exact ground truth", "untrained"
CONFIDENT_LOGIT = 30.0  # a hard prediction as logits: softmax puts all but e^-30 on the chosen channel


def clips(shards: str, manifest: Path, size: int, limit: int):
    """(frames (1, T, 3, S, S) uint8, pseudo-labels (1, T, g, g), ground truth (1, T, g, g)) per clip."""
    rows = read_manifest(manifest).rows
    unscored = next((row for row in rows if GT_COLUMN not in row.extra), None)
    if unscored is not None:
        raise ConfigError(f"{manifest}:{unscored.line}: no '{GT_COLUMN}' column; the floor needs the truth")
    truth = {row.path: row.resolve(row.extra[GT_COLUMN]) for row in rows}
    count = 0
    for url in expand_shards(shards):
        for raw in read_shard(url, lambda where, why: print(f"{where}: {why}", file=sys.stderr)):
            meta = json.loads(raw["json"])
            if meta["source"] not in truth:
                raise ConfigError(f"{manifest}: no row for {meta['source']} of shard {url}")
            clip = decode_sample(raw)
            frames_at = np.rint(np.asarray(meta["timestamps"]) * meta["source_fps"]).astype(np.int64)
            gt = load_labels(truth[meta["source"]])[frames_at]
            frames, labels = center_clip(clip.frames, clip.labels, size)
            _, gt = center_clip(clip.frames, gt, size)
            as_batch = [torch.from_numpy(np.ascontiguousarray(a))[None] for a in (frames, labels, gt)]
            yield as_batch[0].permute(0, 1, 4, 2, 3), as_batch[1].long(), as_batch[2].long()
            count += 1
            if count == limit:
                return


def run(args: argparse.Namespace, command: list[str]) -> dict:
    cfg = load_config(args.runs[0] / CONFIG_FILE)
    torch.manual_seed(cfg.seed)
    models = {UNTRAINED: build_model(cfg.model, cfg.clip)}
    models |= {run.name: load_weights(weights_file(str(run), "run"))[0] for run in args.runs}
    losses: dict[str, list[tuple[float, float]]] = {name: [] for name in [GROUND_TRUTH, *models]}
    for frames, labels, gt in clips(cfg.data.shards, args.manifest, cfg.clip.size, args.clips):
        with torch.no_grad():
            for name, model in models.items():
                out = model.eval()(normalise_frames(frames, torch.device("cpu"), torch.float32))
                focal, dice = segmentation_loss(out.seg_logits, labels, out.seg_grid)
                losses[name].append((focal.item(), dice.item()))
            channels = out.seg_logits.shape[-1]
            hard = F.one_hot(gt.flatten(1) % channels, channels).float() * CONFIDENT_LOGIT
            _, dice = segmentation_loss(hard, labels, out.seg_grid)
            losses[GROUND_TRUTH].append((float("nan"), dice.item()))
    rows = {}
    for name, values in losses.items():
        focal, dice = np.asarray(values).mean(0)
        rows[name] = {"focal": None if name == GROUND_TRUTH else float(focal), "dice": float(dice)}
    untrained = rows[UNTRAINED]
    for row in rows.values():
        row["dice fall %"] = 100 * (1 - row["dice"] / untrained["dice"])
        row["focal fall %"] = None if row["focal"] is None else 100 * (1 - row["focal"] / untrained["focal"])
    return {"record": run_record(command, torch.device("cpu")), "clips": len(losses[UNTRAINED]), "rows": rows}


def markdown(result: dict) -> str:
    keys = ("focal", "dice", "focal fall %", "dice fall %")
    lines = ["| segmenter | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, row in result["rows"].items():
        cells = ["-" if row[k] is None else f"{row[k]:.{0 if '%' in k else 3}f}" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    record = result["record"]
    lines += [
        "",
        f"{result['clips']} training clips against their pseudo-labels; falls from the untrained segmenter.",
        f"`{record['command']}` on {record['device']}, {record['date']}, commit {record['commit']}",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=Path, help="trained run directories (segmenter, trajvit2)")
    parser.add_argument("--manifest", type=Path, required=True, help="the training manifest, with gt_labels")
    parser.add_argument("--clips", type=int, default=128, help="training clips to score (default 128)")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")


def main(args: argparse.Namespace, command: list[str]) -> int:
    return report(run(args, command), markdown, args.json)


if __name__ == "__main__":
    script_main(__doc__, add_arguments, main)
