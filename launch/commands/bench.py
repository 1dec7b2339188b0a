"""`trajtok bench NAME [options]`: the benchmarks behind BENCHMARKS.md, one command each.

The benchmark code lives in `bench/` of the source checkout, one script per benchmark, and each script also
runs alone (`python bench/bench_model.py ...`). Everything after the benchmark's name goes to its script,
so `trajtok bench model --help` lists the script's own options. A benchmark whose script is absent (an
installed package carries no `bench/`) is not offered.
"""

from __future__ import annotations

import argparse
import importlib
import runpy
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
BENCHMARKS = {  # name -> (script, help)
    "model": (
        "bench_model",
        "the efficiency harness: exact FLOPs (meta device) or timed clips/s, memory, tokens and MFU "
        "against clip length for vit3d, ToMe (equal FLOPs), RLT and trajvit2 (n = 1, 4, chunked)",
    ),
    "data": (
        "bench_data",
        "decode clips/s per core (decord, PyAV), loader clips/s per worker, loader workers per GPU",
    ),
    "label": ("bench_label", "pseudo-labeller clips/s per core (classical) and per GPU (sam2), and quality"),
    "pipeline": (
        "bench_pipeline",
        "sharding job clips/s and clips per CPU second, one process vs Ray with 1 and 2 workers, with and "
        "without labels; CPU per clip by stage and decoder",
    ),
    "ablate": (
        "bench_ablate",
        "the paper's trajvit2 ablations (no detach, no Dice, no hard mask) through the demo's recipe, "
        "one row each with the paper's sign",
    ),
    "seg-floor": (
        "bench_seg_floor",
        "how far the segmentation losses can fall: trained segmenters against the exact ground truth's loss "
        "on the same pseudo-labels",
    ),
    "probe": (
        "bench_probe",
        "probing heads on one frozen model's features: linear, attentive and TrajAdapter (n = 1, 2, 4), "
        "top-1 over several seeds on a labelled synthetic set",
    ),
    "reader": (
        "bench_reader_revisions",
        "the video reader of another git revision (--base REV) against this tree's, CPU ms per clip by stage",
    ),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmarks: model throughput, data path, pseudo-labels (numbers for BENCHMARKS.md)",
        description="Run one benchmark; options after its name go to it (`trajtok bench model --help`). "
        "Each prints a Markdown table with the command, device, date and commit it measured.",
    )
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, (script, text) in BENCHMARKS.items():
        if (BENCH_DIR / f"{script}.py").is_file():
            # '+' prefix: every '-' option is handed to the script's own parser untouched
            sub = benchmarks.add_parser(name, help=text, description=text, add_help=False, prefix_chars="+")
            sub.add_argument("arguments", nargs="*", help="the benchmark's options (see its --help)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    script = BENCHMARKS[args.benchmark][0]
    prog = f"trajtok bench {args.benchmark}"
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    module = importlib.import_module(script)
    if hasattr(module, "add_arguments") and hasattr(module, "main"):
        parser = argparse.ArgumentParser(prog=prog, description=module.__doc__.splitlines()[0])
        module.add_arguments(parser)
        return module.main(parser.parse_args(args.arguments), [*prog.split(), *args.arguments])
    # a plain script: run it as `python bench/<script>.py ARGS` would
    sys.argv = [prog, *args.arguments]
    try:
        runpy.run_path(str(BENCH_DIR / f"{script}.py"), run_name="__main__")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else int(done.code is not None)
    return 0
