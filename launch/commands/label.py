"""`trajtok label VIDEO`: pseudo-label one video and write its label map and pictures of it.

The quickest way to see what the labels look like: one clip of `clip.frames` frames at `clip.size` short
side, from a window of a few seconds in the middle of the video (frames spread over a whole long video are
too far apart to follow anything), labelled by the configured labeler, written as a label map (`.npz`), a
record of how it was made (`.json`), an overlay grid (`.png`) and an animation (`.gif`) in which each
trajectory keeps one colour.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from trajtok.config import ClipConfig, load_config
from trajtok.errors import ConfigError
from trajtok.rundir import write_json

DEFAULT_SECONDS = 4.0  # a training clip's length: long enough to move, short enough to follow


def window_seconds(clip: ClipConfig, asked: float | None = None) -> float:
    """The labelling window: what was asked, else the config's clip length, else `DEFAULT_SECONDS`."""
    if asked is not None:
        return asked
    return clip.seconds if clip.seconds > 0 else DEFAULT_SECONDS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "label",
        help="pseudo-label one video; write the label map, a PNG grid and a GIF of its trajectories",
        description="Cut clip.frames frames from --seconds of the middle of VIDEO, or from [--start, --end) "
        "seconds, exactly as `trajtok shard` cuts a clip (clip.sampling, seeded by the clip; clip.size short "
        "side), label them with pseudolabel.name and write to --out: "
        "<stem>_labels.npz (uint16 (T, H, W), 0 = unlabeled), <stem>_labels.json (labeler, parameters, "
        "timestamps, trajectories), <stem>_overlay.png and <stem>_overlay.gif.",
    )
    parser.add_argument("video", metavar="VIDEO", help="a video file or fsspec URI")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. clip.frames=16 pseudolabel.params.target_trajectories=32",
    )
    parser.add_argument("--config", metavar="YAML", help="config file (see configs/); overrides win over it")
    parser.add_argument(
        "--labeler", metavar="NAME", help="classical, sam2 or import (default: pseudolabel.name, classical)"
    )
    parser.add_argument(
        "--out", default="labels-out", metavar="DIR", help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        metavar="S",
        help=f"window length; 0 = the whole video (default: clip.seconds if set, else {DEFAULT_SECONDS:g})",
    )
    for flag, other, word in (("--start", "--end", "before"), ("--end", "--start", "after")):
        parser.add_argument(
            flag,
            type=float,
            metavar="SECONDS",
            help=f"window {flag[2:]} (default: --seconds {word} {other}, or centred)",
        )
    parser.add_argument("--fps", type=float, default=4.0, help="GIF frame rate (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pseudolabel.base import labeler_from_config
    from trajtok.data.clips import read_window
    from trajtok.data.labels import save_labels
    from trajtok.viz import overlay_frames, overlay_grid, write_gif, write_png

    if args.start is not None and args.end is not None and args.end <= args.start:
        raise ConfigError(f"--end {args.end:g} must come after --start {args.start:g}")
    if args.seconds is not None and args.seconds < 0:
        raise ConfigError(f"--seconds {args.seconds:g}: a window length, 0 for the whole video")
    overrides = list(args.overrides) + ([f"pseudolabel.name={args.labeler}"] if args.labeler else [])
    cfg = load_config(args.config, overrides)
    labeler = labeler_from_config(cfg.pseudolabel)

    started = time.perf_counter()
    clip = read_window(args.video, cfg.clip, args.start, args.end, window_seconds(cfg.clip, args.seconds))
    frames, times, info = clip.frames, clip.timestamps, clip.info
    decoded = time.perf_counter()
    result = labeler.label(frames, times, source=args.video)
    labelled = time.perf_counter()

    out = Path(args.out)
    stem = Path(info.source).stem
    labels_path = save_labels(out / f"{stem}_labels.npz", result.labels)
    record = {
        "video": args.video if "://" in args.video else str(Path(args.video).resolve()),
        "timestamps": [float(t) for t in times],
        "frame_size": list(frames.shape[1:3]),
        "labeler": labeler.describe(),
        "trajectories": result.num_trajectories,
        "ids": result.trajectories.ids.tolist(),
        "frames_present": result.trajectories.frames_present.tolist(),
        "area": result.trajectories.area.tolist(),
        "decode_seconds": round(decoded - started, 3),
        "label_seconds": round(labelled - decoded, 3),
    }
    record_path = write_json(out / f"{stem}_labels.json", record)
    png = write_png(out / f"{stem}_overlay.png", overlay_grid(frames, result.labels))
    gif = write_gif(out / f"{stem}_overlay.gif", overlay_frames(frames, result.labels), fps=args.fps)
    h, w = frames.shape[1:3]
    print(
        f"{info.source}: {len(frames)} frames {w}x{h} from {times[0]:.2f}-{times[-1]:.2f} s, decoded in "
        f"{record['decode_seconds']:.2f} s; "
        f"{labeler.name} v{labeler.version}: {result.num_trajectories} trajectories in "
        f"{record['label_seconds']:.2f} s"
    )
    for path in (labels_path, record_path, png, gif):
        print(f"  {path}")
    return 0
