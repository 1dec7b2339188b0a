"""The `trajtok` command: every subcommand registers and answers `--help` through the entry point."""

from __future__ import annotations

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
