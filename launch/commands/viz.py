"""`trajtok viz LABELS`: draw a label map over the frames it labels, as a PNG grid and a GIF.

LABELS is a label map (`.npz` with key `labels`, as `trajtok label` and the shards hold) or a TrajViT
`_mask.npz` sidecar (its `_graph.npz` is read from beside it). The frames come from `--video`, or from the
video recorded in the `_labels.json` that `trajtok label` wrote beside its map; the frames shown are the
recorded timestamps, else the label map's T frames spread over the video (bin centres), or every frame
when the video has exactly T.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from trajtok.errors import LabelFormatError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "viz",
        help="draw a label map over its video: a PNG grid and a GIF, one colour per trajectory",
        description=__doc__.split("\n\n", 1)[1].replace("\n", " "),
    )
    parser.add_argument("labels", metavar="LABELS", help="label map .npz, or a TrajViT _mask.npz sidecar")
    parser.add_argument("--video", help="the video the labels belong to (default: the one in <stem>.json)")
    parser.add_argument(
        "--out",
        metavar="PREFIX",
        help="writes PREFIX.png and PREFIX.gif (default: <stem>_overlay beside LABELS)",
    )
    parser.add_argument("--columns", type=int, help="frames per row of the grid (default: about square)")
    parser.add_argument("--fps", type=float, default=4.0, help="GIF frame rate (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from trajtok.data.labels import resize_frames
    from trajtok.data.video import open_video
    from trajtok.viz import overlay_frames, overlay_grid, write_gif, write_png

    path = Path(args.labels)
    labels, sidecar_video = _read_labels(path)
    record = _record_beside(path)
    video = args.video or record.get("video") or sidecar_video
    if not video:
        raise LabelFormatError(f"{path}: no video recorded beside it; name it with --video")
    t = labels.shape[0]
    with open_video(video) as reader:
        if "timestamps" in record and len(record["timestamps"]) == t:  # as `trajtok label` cut them
            frames = reader.read_frames(reader.index_at(np.asarray(record["timestamps"])), labels.shape[1:])
        elif reader.info.num_frames == t:
            frames = reader.read_frames(np.arange(t))
        else:
            frames, _ = reader.sample_clip(t, "middle")
    if frames.shape[1:3] != labels.shape[1:]:  # draw at the label map's size, as it was labelled
        frames = resize_frames(frames, labels.shape[1:])
    stem = re.sub(r"(_labels|_mask.*)?\.npz$", "", path.name)
    prefix = Path(args.out) if args.out else path.with_name(f"{stem}_overlay")
    png = write_png(prefix.with_name(prefix.name + ".png"), overlay_grid(frames, labels, args.columns))
    gif = write_gif(prefix.with_name(prefix.name + ".gif"), overlay_frames(frames, labels), args.fps)
    ids = np.unique(labels)
    print(f"{path}: {t} frames, {int(np.count_nonzero(ids))} trajectories over {video}")
    print(f"  {png}\n  {gif}")
    return 0


def _read_labels(path: Path):
    """(labels, video found beside a TrajViT sidecar or None)."""
    from trajtok.data.labels import load_labels
    from trajtok.data.trajvit_format import load_trajvit

    match = re.fullmatch(r"(.*)_mask(.*)\.npz", path.name)
    if not match:
        return load_labels(path), None
    graph = path.with_name(f"{match[1]}_graph{match[2]}.npz")
    labels = load_trajvit(path, graph if graph.is_file() else None).labels
    beside = [*path.parent.glob(f"{match[1]}.*"), *path.parent.glob(f"{match[1]}_short.*")]
    videos = sorted(p for p in beside if p.suffix != ".npz")
    return labels, str(videos[0]) if videos else None


def _record_beside(path: Path) -> dict:
    record = path.with_suffix(".json")
    if not record.is_file():
        return {}
    try:
        return json.loads(record.read_text())
    except ValueError as err:
        raise LabelFormatError(f"{record}: not valid JSON ({err})") from None
