"""The video reader of another revision against this tree's, in one run: CPU ms per clip of each stage.

A reader change must not slow well-formed files, and these machines are noisy, so both readers run
alternately in the same process on the same sources (`bench_pipeline.stage_costs`: open, decode 16 frames
of a 4 s window at short side 256, encode), `--rounds` times; medians and ranges are printed as JSON.

    .venv/bin/python bench/bench_reader_revisions.py --base dea6429 [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pipeline  # noqa: E402

from trajtok.data import video as current  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def reader_at(revision: str, folder: Path) -> ModuleType:
    """trajtok/data/video.py as it was at `revision`, imported under another name."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{revision}:trajtok/data/video.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = folder / "video_at_base.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("video_at_base", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision whose reader to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    stage_args = argparse.Namespace(size=256, frames=16)
    folder = Path(tempfile.mkdtemp())
    readers = {args.base: reader_at(args.base, folder), "working tree": current}
    sources = {
        "vtest.avi": bench_pipeline.VTEST,
        "h264 480x360": bench_pipeline.web_video(folder / "web.mp4"),
    }
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for label, reader in readers.items():
            for name, path in sources.items():
                costs = bench_pipeline.stage_costs(path, "pyav", stage_args, opener=reader.open_video)
                runs.setdefault(f"{name} | {label}", []).append(costs)
    summary = {
        key: {
            stage: {
                "median": statistics.median(r[stage] for r in rows),
                "range": [min(r[stage] for r in rows), max(r[stage] for r in rows)],
            }
            for stage in rows[0]
        }
        for key, rows in runs.items()
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
