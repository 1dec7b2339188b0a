"""Training survives what clusters do to it: a shard that turns corrupt mid-run, a disk that fills at a
checkpoint, an MLflow server that goes away. Each is the real fault (a truncated tar, ENOSPC from the
kernel, a stopped `mlflow server`), on a real `trajtok train` run on CPU."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import mlflow
import psutil

from tests.mlflow_server import mlflow_server
from trajtok.distributed import free_port
from trajtok.rundir import PENDING_METRICS_FILE
from trajtok.train.checkpoint import complete_checkpoints

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny-cpu.yaml"
TRAIN = [sys.executable, "-m", "launch.cli", "train", str(CONFIG)]


def _settings(shards: str, run_dir: Path, db: Path, *extra: str) -> list[str]:
    return [
        f"data.shards={shards}",
        f"run_dir={run_dir}",
        f"tracking.uri=sqlite:///{db}",
        "tracking.system_metrics=false",
        "train.batch_size=4",
        "train.warmup_steps=2",
        "train.log_every=1",
        "train.zero_stage=0",
        "data.samples_per_epoch=32",
        "launch.nproc=1",
        *extra,
    ]


def _history(db: Path, run_dir: Path, key: str) -> dict[int, float]:
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _wait_for_line(proc: subprocess.Popen, log: Path, text: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not (log.is_file() and text in log.read_text()):
        assert proc.poll() is None, f"training ended before '{text}'"
        assert time.monotonic() < deadline, f"no '{text}' in {log} after {timeout} s"
        time.sleep(0.05)


def _truncate_in_the_second_video(shard: Path) -> None:
    """Cut a shard in the middle of its second clip, as a failed copy or a dying disk leaves it."""
    with tarfile.open(shard) as tar:
        member = [m for m in tar.getmembers() if m.name.endswith(".mp4")][1]
    shard.write_bytes(shard.read_bytes()[: member.offset_data + member.size // 2])


def test_shards_that_turn_corrupt_mid_run_are_skipped_and_counted(synthetic_shards, tmp_path: Path):
    shards = tmp_path / "shards"
    shutil.copytree(synthetic_shards.directory, shards, ignore=shutil.ignore_patterns("image-*"))
    run_dir, db = tmp_path / "run", tmp_path / "mlflow.db"
    steps = 12
    settings = _settings(
        str(shards / "video-{000000..000007}.tar"),
        run_dir,
        db,
        f"train.steps={steps}",
        "data.shuffle_buffer=4",
        "data.num_workers=1",
    )
    proc = subprocess.Popen([*TRAIN, *settings], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_line(proc, run_dir / "train.log", "step 1/")
    for shard in shards.glob("video-*.tar"):  # every shard: whichever the loader opens next is broken
        _truncate_in_the_second_video(shard)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert f"trained {steps} steps" in (run_dir / "train.log").read_text()
    assert "leaving shard" in stderr and "corrupt shard" in stderr
    skipped = _history(db, run_dir, "train/data/skipped")
    assert sorted(_history(db, run_dir, "train/loss")) == list(range(1, steps + 1))
    assert sum(skipped.values()) >= 3, skipped  # shards opened after the cut, each counted
    by_reason = _history(db, run_dir, "train/data/skipped/shard")
    assert 3 <= sum(by_reason.values()) <= sum(skipped.values())  # and told apart by reason


def test_a_disk_that_fills_at_a_checkpoint_keeps_the_previous_one(synthetic_shards, tmp_path: Path):
    run_dir, db = tmp_path / "run", tmp_path / "mlflow.db"
    base = _settings(synthetic_shards.pattern, run_dir, db, "train.checkpoint_every=2")
    first = subprocess.run([*TRAIN, *base, "train.steps=2"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    # The step-4 checkpoint's model file is the kernel's full device: every write to it fails with ENOSPC.
    trap = run_dir / "checkpoints" / "step-00000004"
    trap.mkdir(parents=True)
    (trap / "mp_rank_00_model_states.pt").symlink_to("/dev/full")
    full = subprocess.run([*TRAIN, *base, "train.steps=6"], capture_output=True, text=True, timeout=300)
    assert full.returncode == 2, full.stderr[-3000:]
    errors = [line for line in full.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "step-00000004: cannot write the checkpoint" in errors[0], full.stderr[-3000:]
    assert "a rerun resumes from step-00000002" in errors[0]
    assert "Traceback" not in full.stderr
    assert [p.name for p in complete_checkpoints(run_dir)] == ["step-00000002"]
    assert not trap.exists()  # the half-written checkpoint is gone, its space freed

    again = subprocess.run([*TRAIN, *base, "train.steps=6"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in (run_dir / "train.log").read_text()
    assert sorted(_history(db, run_dir, "train/loss")) == list(range(1, 7))
    assert os.path.basename(complete_checkpoints(run_dir)[-1]) == "step-00000006"


def _pause(proc: subprocess.Popen, signal_name: str) -> None:
    """SIGSTOP/SIGCONT a training job (launcher, ranks, workers), so the test decides what happens between
    two steps instead of racing them."""
    root = psutil.Process(proc.pid)
    for process in [root, *root.children(recursive=True)]:
        process.send_signal(getattr(signal, signal_name))


def test_training_outlives_its_mlflow_server(synthetic_shards, tmp_path: Path):
    backend, artifacts, port = f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts", free_port()
    run_dir, steps = tmp_path / "run", 12
    log = run_dir / "train.log"
    with mlflow_server(backend, artifacts, port) as uri:
        settings = _settings(
            synthetic_shards.pattern, run_dir, tmp_path / "unused.db", f"train.steps={steps}"
        )
        train = [*TRAIN, *settings, f"tracking.uri={uri}", "train.overlay_every=4"]
        proc = subprocess.Popen(train, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait_for_line(proc, log, "step 2/")
        _pause(proc, "SIGSTOP")
    _pause(proc, "SIGCONT")  # the server is gone: steps 3.. and the step-4 picture meet a closed port
    _wait_for_line(proc, log, "is unreachable")
    _pause(proc, "SIGSTOP")
    with mlflow_server(backend, artifacts, port):  # back at the same address
        _pause(proc, "SIGCONT")
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        client = mlflow.MlflowClient(uri)
        run_id = (run_dir / "mlflow_run_id").read_text().strip()
        losses = {m.step for m in client.get_metric_history(run_id, "train/loss")}
        assert losses == set(range(1, steps + 1))  # nothing lost: kept during the outage, sent after it
        assert client.get_run(run_id).info.status == "FINISHED"
        pictures = _pictures(client, run_id)
    assert len(pictures) == 3, pictures  # steps 4 (kept during the outage), 8 and 12
    text = log.read_text()
    assert text.count("is unreachable") == 1 and "answers again" in text
    assert "(Connection refused)" in text
    assert "Traceback" not in stderr and "Retrying" not in stderr, stderr[-3000:]
    assert not (run_dir / PENDING_METRICS_FILE).exists()


def _pictures(client: mlflow.MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            found += _pictures(client, run_id, item.path)
        elif "trajectories" in item.path and item.path.endswith(".png"):
            found.append(item.path)
    return found
