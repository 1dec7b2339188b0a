"""The `trajtok` command: every subcommand registers and answers `--help` through the entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launch.cli import build_parser


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def _entry_point() -> str:
    installed = Path(sys.executable).with_name("trajtok")
    return str(installed) if installed.exists() else shutil.which("trajtok") or "trajtok"


def test_top_level_help_lists_commands():
    proc = subprocess.run([_entry_point(), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in _subcommands():
        assert name in proc.stdout


@pytest.mark.parametrize("name", _subcommands())
def test_subcommand_help(name: str, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([name, "--help"])
    assert exit_info.value.code == 0
    assert "usage: trajtok " + name in capsys.readouterr().out


HEAVY = ("torch", "deepspeed", "ray", "mlflow", "av", "cv2")
ASK_FOR_HELP = """
import json, sys, time
from launch.cli import main
started = time.monotonic()
for args in [["--help"], *[[name, "--help"] for name in sys.argv[1:]], ["submit", "train", "--help"]]:
    try:
        main(args)
    except SystemExit:
        pass
print(json.dumps({"seconds": time.monotonic() - started, "heavy": [m for m in HEAVY if m in sys.modules]}))
"""


def test_help_answers_at_once_without_the_heavy_packages():
    """`--help` of the command and of every subcommand loads none of torch, DeepSpeed, Ray, MLflow or the
    video stack: they load when a command runs (0.3 s for `trajtok --help` on the 2-core machine)."""
    code = f"HEAVY = {HEAVY!r}\n{ASK_FOR_HELP}"
    proc = subprocess.run(
        [sys.executable, "-c", code, *_subcommands()], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["seconds"] < 5  # generous: every help page, on a loaded machine; well under 1 s idle


def test_the_help_pages_model_names_are_the_registry_s():
    from trajtok.config import MODEL_NAMES
    from trajtok.models.registry import REGISTRY_NAMES

    assert sorted(MODEL_NAMES) == sorted(REGISTRY_NAMES)
