"""Every shipped config loads through the real command line; bad keys and types name the key and the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from launch.cli import main
from trajtok.config import JobConfig, config_digest, flatten, load_config, save_config, to_dict
from trajtok.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_configs_exist():
    assert CONFIGS, "configs/ holds no YAML files"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_config_loads_through_the_cli(path: Path, capsys):
    assert main(["config", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "run_dir:" in printed and "train:" in printed


def test_override_wins_and_is_typed():
    cfg = load_config(None, ["train.lr=3e-4", "clip.frames=8", "model.tokens_per_trajectory=[1,2]"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.clip.frames == 8
    assert cfg.model.tokens_per_trajectory == [1, 2]


def test_unknown_override_key_names_the_path():
    with pytest.raises(ConfigError, match="train.lrr"):
        load_config(None, ["train.lrr=1"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="clip.frames"):
        load_config(None, ["clip.frames=many"])


def test_unknown_key_in_file_names_key_and_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "bad.yaml" in str(err.value) and "train.stepz" in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(broken)


def test_a_file_extends_its_base_and_overrides_it(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("train:\n  steps: 7\n  lr: 0.5\nclip:\n  frames: 4\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mid.yaml").write_text("extends: ../base.yaml\ntrain:\n  steps: 9\n")
    (tmp_path / "top.yaml").write_text("extends: sub/mid.yaml\nclip:\n  frames: 6\n")
    cfg = load_config(tmp_path / "top.yaml", ["train.lr=0.25"])
    assert (cfg.train.steps, cfg.train.lr, cfg.clip.frames) == (9, 0.25, 6)


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"}, "extends itself"),
        ({"a.yaml": "extends: gone.yaml\n"}, "gone.yaml: config file not found"),
        ({"a.yaml": "- a list\n"}, "expected a mapping of settings"),
    ],
)
def test_bad_extends_is_one_line(tmp_path: Path, files: dict[str, str], problem: str):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=problem) as err:
        load_config(tmp_path / "a.yaml")
    assert "a.yaml" in str(err.value) and "\n" not in str(err.value)


def test_cli_prints_one_line_without_traceback(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "config", "train.lrr=1"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "train.lrr" in proc.stderr and "Traceback" not in proc.stderr


def test_resolved_config_round_trips_through_the_run_dir(tmp_path: Path):
    cfg = load_config(None, ["train.steps=7", f"run_dir={tmp_path}"])
    written = save_config(cfg, tmp_path)
    again = load_config(written)
    assert to_dict(again) == to_dict(cfg)
    assert config_digest(again.train) == config_digest(cfg.train)
    assert config_digest(load_config(None, ["train.steps=8"]).train) != config_digest(cfg.train)


def test_flatten_gives_dotted_names():
    flat = flatten(to_dict(JobConfig()))
    assert flat["train.lr"] == JobConfig().train.lr
    assert "train.loss.dice" in flat
