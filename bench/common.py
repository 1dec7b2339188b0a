"""What every benchmark result carries: the command, the device, the date and the commit it measured.

The machines are shared and noisy, so a number without its context cannot be compared with anything;
each bench writes this record beside its numbers, and BENCHMARKS.md quotes it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """Short hash of HEAD, with `+dirty` when tracked files differ from it; `unknown` outside a checkout."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU: {cpu_name()}, {len(os.sched_getaffinity(0))} cores, {threads} torch threads"


def run_record(command: list[str], device: torch.device) -> dict[str, str]:
    """The context of one benchmark run, as BENCHMARKS.md quotes it."""
    return {
        "command": shlex.join(command),
        "device": device_name(device),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def invoked_command(argv: list[str] | None, script: str) -> list[str]:
    """The command line a user would type to repeat this run (the CLI form when called through it)."""
    if argv is None:
        return [sys.executable, script, *sys.argv[1:]]
    return list(argv)


def write_json(result: dict, path: Path | None) -> None:
    """Write a bench result where `--json` asked for it (nothing when it did not), creating its folder."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def report(result: dict, markdown: Callable[[dict], str], path: Path | None) -> int:
    """Print a result as the table BENCHMARKS.md quotes and write it where `--json` asked; the exit status."""
    print(markdown(result))
    write_json(result, path)
    return 0


def script_main(
    doc: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    main: Callable[[argparse.Namespace, list[str]], int],
) -> None:
    """Run a bench module as a script: the same arguments and command record as `trajtok bench`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args(), [sys.executable, *sys.argv]))
