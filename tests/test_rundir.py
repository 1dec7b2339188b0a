"""The run directory's one writer: a file is replaced whole or not at all, and one live job writes it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trajtok.errors import RunDirectoryInUse
from trajtok.rundir import (
    LOCK_FILE,
    STALE_AFTER_S,
    _process_start,
    atomic_path,
    read_run_id,
    write_json,
    write_run_id,
    writer_lock,
)

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny-cpu.yaml"


def test_a_write_that_fails_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = write_json(tmp_path / "run" / "state.json", {"step": 4})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"step": ')  # killed half-way through the new version
        raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"step": 4}
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]


def test_the_run_id_round_trips_and_is_empty_for_a_new_directory(tmp_path):
    assert read_run_id(tmp_path) == ""
    write_run_id(tmp_path, "0123abcd")
    assert read_run_id(tmp_path) == "0123abcd"


def _left_lock(run_dir: Path, **owner) -> Path:
    """A lock as a job left it: this host and a live process (this test's) unless told otherwise."""
    fields = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_start": _process_start(os.getpid()),
        "slurm_job_id": "",
        "since": "earlier",
        **owner,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_FILE).write_text(json.dumps(fields))
    return run_dir / LOCK_FILE


def test_a_second_live_writer_is_refused_and_the_lock_goes_with_the_first(tmp_path):
    with writer_lock(tmp_path) as taken_over:
        assert taken_over is None
        owner = json.loads((tmp_path / LOCK_FILE).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with (
            pytest.raises(RunDirectoryInUse, match=f"pid {os.getpid()} on {socket.gethostname()}"),
            writer_lock(tmp_path),
        ):
            pass
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_live_writer_on_another_machine_is_refused(tmp_path):
    _left_lock(tmp_path, host="node-elsewhere", pid=1)  # its heartbeat is fresh
    with pytest.raises(RunDirectoryInUse, match="node-elsewhere"), writer_lock(tmp_path):
        pass


def test_stale_locks_are_taken_over_and_say_why(tmp_path, monkeypatch):
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    _left_lock(tmp_path, pid=int(ended.stdout))  # a process of this host that has exited
    with writer_lock(tmp_path) as taken_over:
        assert "has ended" in taken_over
    lock = _left_lock(tmp_path, pid=os.getpid(), process_start="0")  # the pid, reused by another process
    with writer_lock(tmp_path) as taken_over:
        assert "has ended" in taken_over
    lock = _left_lock(tmp_path, host="node-elsewhere", pid=1)  # a crashed machine: its heartbeat stopped
    os.utime(lock, (time.time() - STALE_AFTER_S - 60,) * 2)
    with writer_lock(tmp_path) as taken_over:
        assert "heartbeat stopped" in taken_over
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # SLURM requeued this job: its earlier attempt is gone
    _left_lock(tmp_path, host="node-elsewhere", pid=1, slurm_job_id="4242")
    with writer_lock(tmp_path) as taken_over:
        assert "requeued" in taken_over
    (tmp_path / LOCK_FILE).write_text('{"host": ')  # a writer killed while taking the lock
    with writer_lock(tmp_path) as taken_over:
        assert "unreadable" in taken_over


def test_training_into_a_directory_another_job_writes_stops_in_one_line(tmp_path, run_cli, synthetic_shards):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _left_lock(tmp_path / "run", pid=holder.pid, process_start=_process_start(holder.pid))
        proc = run_cli(
            "train",
            str(CONFIG),
            f"data.shards={synthetic_shards.pattern}",
            f"run_dir={tmp_path / 'run'}",
            "tracking.enabled=false",
            "launch.nproc=2",
        )
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert errors and all(f"pid {holder.pid}" in line and "another job writes" in line for line in errors)
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
