"""Trainer pieces that need no process group: schedule, DeepSpeed config, checkpoint lookup, the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trajtok.config import TrainConfig, load_config
from trajtok.errors import ConfigError
from trajtok.models.registry import build_model
from trajtok.schedule import lr_at
from trajtok.train.checkpoint import (
    STATE_FILE,
    TrainState,
    complete_checkpoints,
    resolve_resume,
    set_aside_earlier_run,
)
from trajtok.train.engine import check_train_config, deepspeed_config, param_groups, scalars_as_vectors
from trajtok.train.loop import early_matching

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny-cpu.yaml"


def test_warmup_then_cosine_to_min_lr():
    train = TrainConfig(steps=100, lr=1e-3, min_lr=1e-5, warmup_steps=10)
    lrs = [lr_at(step, train) for step in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[55] == pytest.approx((1e-3 + 1e-5) / 2)
    assert lr_at(100, train) == pytest.approx(1e-5)


def test_deepspeed_config_follows_the_train_group():
    train = TrainConfig(batch_size=4, grad_accum=3, zero_stage=2, precision="bf16", grad_clip=0.5)
    ds = deepspeed_config(train, world_size=2, num_params=40_000_000)
    assert ds["train_batch_size"] == 24 and ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 3 and ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["zero_optimization"]["reduce_bucket_size"] == 10_000_000  # a quarter of the model
    assert deepspeed_config(train, 2, 500_000)["zero_optimization"]["reduce_bucket_size"] == 2**20
    assert deepspeed_config(train, 2, 10**11)["zero_optimization"]["reduce_bucket_size"] == 5 * 10**8
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]


@pytest.mark.parametrize(
    ("change", "match"),
    [({"zero_stage": 4}, "zero_stage"), ({"precision": "fp8"}, "precision"), ({"precision": "fp16"}, "CPU")],
)
def test_settings_deepspeed_would_reject_are_config_errors(change: dict, match: str):
    with pytest.raises(ConfigError, match=match):
        check_train_config(TrainConfig(**change), on_gpu=False)
    if change.get("precision") == "fp16":
        check_train_config(TrainConfig(**change), on_gpu=True)


def test_weight_decay_spares_biases_norms_and_the_temperature():
    cfg = load_config(CONFIG)
    model = build_model(cfg.model, cfg.clip)
    decay, no_decay = param_groups(model, 0.02)
    named = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.02 and no_decay["weight_decay"] == 0.0
    skipped = {named[id(p)] for p in no_decay["params"]}
    assert "logit_scale.log_scale" in skipped and any(n.endswith(".bias") for n in skipped)
    assert all(p.ndim >= 2 for p in decay["params"])


def test_scalar_parameters_become_vectors_and_compute_the_same():
    cfg = load_config(CONFIG)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.clip).eval()
    frames = torch.randn(2, 8, 3, 64, 64)
    before = model.encode_video(frames)
    scale = model.logit_scale()
    scalars_as_vectors(model)
    assert all(p.ndim >= 1 for p in model.parameters())
    assert torch.allclose(model.encode_video(frames), before)
    assert torch.allclose(model.logit_scale(), scale)


def _fake_checkpoint(run_dir: Path, step: int, complete: bool = True) -> Path:
    path = run_dir / "checkpoints" / f"step-{step:08d}"
    path.mkdir(parents=True)
    if complete:
        (path / STATE_FILE).write_text(json.dumps(TrainState(step=step).__dict__))
    return path


def test_resume_finds_the_newest_complete_checkpoint(tmp_path: Path):
    assert resolve_resume("auto", tmp_path) is None
    _fake_checkpoint(tmp_path, 4)
    newest = _fake_checkpoint(tmp_path, 8)
    _fake_checkpoint(tmp_path, 12, complete=False)  # a save that was killed
    assert complete_checkpoints(tmp_path) == [tmp_path / "checkpoints" / "step-00000004", newest]
    assert resolve_resume("auto", tmp_path) == newest
    assert resolve_resume("none", tmp_path) is None
    assert resolve_resume(str(tmp_path / "checkpoints"), "elsewhere") == newest
    assert (
        resolve_resume(str(tmp_path / "checkpoints" / "step-00000004"), "elsewhere").name == "step-00000004"
    )
    with pytest.raises(ConfigError, match="train.resume"):
        resolve_resume(str(tmp_path / "checkpoints" / "step-00000012"), tmp_path)


def test_a_fresh_start_sets_an_earlier_run_aside_and_says_so(tmp_path: Path):
    assert set_aside_earlier_run(tmp_path, ("mlflow_run_id",)) is None  # nothing there: nothing said
    _fake_checkpoint(tmp_path, 300)
    (tmp_path / "mlflow_run_id").write_text("abc\n")
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    line = set_aside_earlier_run(tmp_path, ("mlflow_run_id",))
    assert "step-00000300" in line and "previous/0" in line and "\n" not in line
    assert resolve_resume("auto", tmp_path) is None  # the new run's checkpoints are its own
    assert not (tmp_path / "mlflow_run_id").exists() and (tmp_path / "config.yaml").is_file()
    assert (tmp_path / "previous" / "0" / "mlflow_run_id").read_text() == "abc\n"
    assert resolve_resume("auto", tmp_path / "previous" / "0").name == "step-00000300"
    _fake_checkpoint(tmp_path, 4)
    assert "previous/1" in set_aside_earlier_run(tmp_path, ())  # a second fresh start keeps both


def test_train_command_refuses_bad_settings_in_one_line(tmp_path: Path, run_cli):
    for override, key in (
        ("launch.backend=slurm", "launch.backend"),
        ("model.name=trajadapter", "model.name"),
    ):
        settings = [override, f"run_dir={tmp_path}", "tracking.enabled=false", "launch.nproc=1"]
        proc = run_cli("train", str(CONFIG), *settings)
        assert proc.returncode != 0
        assert key in proc.stderr + proc.stdout and "Traceback" not in proc.stderr, proc.stderr


def test_early_matching_hooks_the_segmenter_of_models_that_segment():
    for name, segments in (("segmenter", True), ("trajvit2", True), ("vit3d", False)):
        cfg = load_config(CONFIG, [f"model.name={name}"])
        with torch.device("meta"):
            matching = early_matching(build_model(cfg.model, cfg.clip))
        assert (matching is not None) == segments, name
