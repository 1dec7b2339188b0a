"""The run directory (DESIGN §3): the files every job leaves in `run_dir`, and the one way they are written.

    config.yaml          the resolved config: the run can be repeated from its directory alone
    provenance.json      git revision, Python and package versions of the first attempt
    mlflow_run_id        the MLflow run this directory logs to; a rerun of the same directory resumes it
    pending_metrics.jsonl  metrics logged while MLflow was unreachable, sent when it answers (tracking_outage)
    train.log            what rank 0 logged (trajtok.train.loop)
    checkpoints/         DeepSpeed and training state, the last k kept (trajtok.train.checkpoint)
    weights.safetensors  the trained model with its configs (trajtok.models.weights)
    eval_<task>.json     an evaluation's record (trajtok.eval.run); eval/ holds evaluation runs of it
    writer.lock          while a training job runs: its host, pid and SLURM job (`writer_lock`)

Every file is replaced atomically (written beside its target, then renamed over it), so a job killed while
writing leaves the previous version, never half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trajtok.errors import RunDirectoryInUse

CONFIG_FILE = "config.yaml"
PROVENANCE_FILE = "provenance.json"
RUN_ID_FILE = "mlflow_run_id"
PENDING_METRICS_FILE = "pending_metrics.jsonl"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed over `path` when the block ends without error,
    removed when it raises. The parent folder is created."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Replace `path` with `text`, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, value: Any, indent: int = 1) -> Path:
    """Replace `path` with `value` as JSON (one trailing newline), atomically."""
    return write_text(path, json.dumps(value, indent=indent) + "\n")


def read_run_id(run_dir: str | Path) -> str:
    """The MLflow run id kept in `run_dir`, "" when it has none."""
    path = Path(run_dir) / RUN_ID_FILE
    return path.read_text().strip() if path.is_file() else ""


def write_run_id(run_dir: str | Path, run_id: str) -> Path:
    """Keep the MLflow run id in `run_dir`, so a rerun of the same directory resumes that run."""
    return write_text(Path(run_dir) / RUN_ID_FILE, run_id + "\n")


LOCK_FILE = "writer.lock"
HEARTBEAT_S = 30.0  # how often a holder touches its lock
STALE_AFTER_S = 600.0  # a lock untouched this long belongs to a job that died on a machine we cannot see
SLURM_LIVE_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED"}


def _process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, Linux), None if it does not exist here."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_start": _process_start(os.getpid()),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _slurm_job_running(job_id: str) -> bool | None:
    """Whether SLURM still runs job `job_id`; None when this machine cannot ask (no squeue)."""
    if shutil.which("squeue") is None:
        return None
    try:
        done = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.returncode == 0 and done.stdout.strip() in SLURM_LIVE_STATES


def stale_reason(lock: Path, owner: dict[str, Any]) -> str | None:
    """Why the writer that left `lock` is gone (then the lock may be taken over), None if it may be alive."""
    job = owner.get("slurm_job_id", "")
    if job and job == os.environ.get("SLURM_JOB_ID"):
        return f"SLURM job {job} was requeued"
    if owner.get("host") == socket.gethostname():
        start = _process_start(int(owner.get("pid", -1)))
        if start is None or start != owner.get("process_start"):
            return f"process {owner.get('pid')} has ended"
        return None
    if job and _slurm_job_running(job) is False:
        return f"SLURM job {job} has ended"
    idle = time.time() - lock.stat().st_mtime
    return f"its heartbeat stopped {idle:.0f} s ago" if idle > STALE_AFTER_S else None


@contextmanager
def writer_lock(run_dir: str | Path) -> Iterator[str | None]:
    """Hold `<run_dir>/writer.lock` while the block runs: one live job writes a run directory at a time.

    Two writers (a resubmitted job while the first still runs, a launcher killed without its ranks) would
    interleave checkpoints and log into one MLflow run. The lock names its owner (host, pid, SLURM job) and is
    touched every `HEARTBEAT_S`; a lock whose owner is gone (module `stale_reason`) is taken over, and the
    block gets a line saying so (None when the directory was free). A live owner: `RunDirectoryInUse`.
    """
    lock = Path(run_dir) / LOCK_FILE
    lock.parent.mkdir(parents=True, exist_ok=True)
    taken_over = None
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text() or "{}")
                reason = stale_reason(lock, owner)
            except FileNotFoundError:  # released meanwhile
                continue
            except (ValueError, OSError):  # half-written by a writer killed while taking it
                owner, reason = {}, "it is unreadable"
            if reason is None:
                raise RunDirectoryInUse(
                    f"{run_dir}: another job writes this run directory ({_describe(owner)}, since "
                    f"{owner.get('since')}); wait for it, or delete {lock} if that job is gone"
                ) from None
            taken_over = f"{lock}: took over the lock of {_describe(owner)} ({reason})"
            lock.unlink(missing_ok=True)
    with os.fdopen(fd, "w") as stream:
        stream.write(json.dumps(_owner()) + "\n")
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(lock, stop), name="run-dir-lock", daemon=True)
    beat.start()
    try:
        yield taken_over
    finally:
        stop.set()
        beat.join()
        lock.unlink(missing_ok=True)


def _describe(owner: dict[str, Any]) -> str:
    job = owner.get("slurm_job_id")
    return f"pid {owner.get('pid')} on {owner.get('host')}" + (f", SLURM job {job}" if job else "")


def _heartbeat(lock: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        with contextlib.suppress(OSError):
            os.utime(lock)
