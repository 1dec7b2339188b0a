"""The golden loss curve: a tiny fixed-seed training run must reproduce the per-step losses kept in
tests/assets/golden_loss.json, so a change that silently alters training (a loss term, an init, the data
order, an augmentation) fails here even when the loss still falls.

A change that is meant to change the numbers regenerates the asset, and the diff shows by how much:

    TRAJTOK_WRITE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden_loss.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pytest

from launch.cli import main as cli

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny-cpu.yaml"
ASSET = Path(__file__).resolve().parent / "assets" / "golden_loss.json"
KEYS = ("train/loss", "train/loss/contrastive", "train/loss/focal", "train/loss/dice")
SETTINGS = [
    "train.steps=6",
    "train.batch_size=4",
    "train.warmup_steps=2",
    "train.log_every=1",
    "train.checkpoint_every=100",
    "train.zero_stage=0",
    "train.precision=fp32",
    "data.samples_per_epoch=32",
    "launch.nproc=1",
    "tracking.system_metrics=false",
]
# fp32 on CPU: the same machine repeats to the last bit; other CPUs (another SIMD width) differ by ~1e-6
# per op, which six steps keep far below this bound, while a changed loss term or data order moves it by %.
RELATIVE_TOLERANCE = 2e-3


def _losses(tmp_path: Path, shards: str) -> dict[str, list[float]]:
    run_dir, db = tmp_path / "golden", tmp_path / "mlflow.db"
    assert (
        cli(
            [
                "train",
                str(CONFIG),
                f"data.shards={shards}",
                f"run_dir={run_dir}",
                f"tracking.uri=sqlite:///{db}",
                *SETTINGS,
            ]
        )
        == 0
    )
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    curves = {}
    for key in KEYS:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        curves[key] = [m.value for m in history]
    return curves


def test_a_tiny_fixed_seed_run_repeats_the_golden_loss_curve(synthetic_shards, tmp_path: Path, capfd):
    curves = _losses(tmp_path, synthetic_shards.pattern)
    printed = capfd.readouterr()
    assert "step 6/6" in printed.out + printed.err  # the ranks' output reached this process
    assert "Warning" not in printed.out + printed.err  # a normal run's log is clean (deprecations included)
    if os.environ.get("TRAJTOK_WRITE_GOLDEN"):
        ASSET.write_text(json.dumps({"settings": SETTINGS, "curves": curves}, indent=1) + "\n")
        pytest.skip(f"wrote {ASSET}")
    golden = json.loads(ASSET.read_text())
    assert golden["settings"] == SETTINGS, (
        "the run's settings changed: regenerate the asset (module docstring)"
    )
    for key, expected in golden["curves"].items():
        assert len(curves[key]) == len(expected), key
        for step, (value, reference) in enumerate(zip(curves[key], expected, strict=True), start=1):
            assert value == pytest.approx(reference, rel=RELATIVE_TOLERANCE), f"{key} at step {step}"
