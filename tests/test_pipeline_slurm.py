"""`trajtok submit shard ... launch.backend=slurm`: the shard job inside a real SLURM allocation.

The session's one-node SLURM cluster (the `slurm_cluster` fixture) runs the job through submitit; launch/
starts a Ray head in the allocation and runs the shard driver on it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trajtok.config import SynthConfig
from trajtok.data.synth import write_dataset

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def slurm_env(slurm_cluster: Path) -> dict[str, str]:
    return {**os.environ, "SLURM_CONF": str(slurm_cluster)}


def _queued(slurm: dict[str, str], job_id: str) -> bool:
    command = ["squeue", "-h", "-j", job_id]
    listed = subprocess.run(command, env=slurm, capture_output=True, text=True, timeout=60)
    return listed.returncode == 0 and bool(listed.stdout.strip())


def _wait_for_end(slurm: dict[str, str], job_id: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while _queued(slurm, job_id) and time.monotonic() < deadline:
        time.sleep(1)


def test_submit_shard_runs_on_ray_inside_slurm(slurm_env: dict[str, str], tmp_path: Path):
    synth = SynthConfig(out=str(tmp_path / "synth"), videos=4, frames=16, height=64, width=64)
    manifest = write_dataset(synth)
    out, run_dir = tmp_path / "out", tmp_path / "run"
    submitted = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.cli",
            "submit",
            "shard",
            str(REPO / "configs" / "shard.yaml"),
            f"data.manifest={manifest}",
            f"pipeline.out={out}",
            f"run_dir={run_dir}",
            "launch.backend=slurm",
            "launch.nodes=1",
            "launch.cpus_per_task=2",
            "launch.time=10",
            "tracking.enabled=false",
            "clip.frames=8",
            "clip.size=64",
            "pipeline.clips_per_shard=2",
        ],
        cwd=tmp_path,
        env=slurm_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = re.search(r"submitted job (\d+)", submitted.stdout).group(1)
    log = Path(re.search(r"log: (\S+)", submitted.stdout).group(1))
    deadline = time.monotonic() + 300
    while not (out / "summary.json").exists():
        if time.monotonic() > deadline or not _queued(slurm_env, job_id):
            time.sleep(2)  # the job may have just finished writing
            if (out / "summary.json").exists():
                break
            tail = log.read_text()[-3000:] if log.exists() else "(no log)"
            pytest.fail(f"job {job_id} ended or timed out without a summary; log:\n{tail}")
        time.sleep(1)
    _wait_for_end(slurm_env, job_id)  # the head node stops Ray, then the job ends
    assert not _queued(slurm_env, job_id), f"job {job_id} did not end after its driver finished"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["written"] == summary["rows"] == summary["clips"] == 4
    assert summary["run"]["shards_written"] == 2
    assert (run_dir / "config.yaml").is_file()  # the job's run directory, the same for a resubmission
    text = log.read_text() if log.exists() else ""
    assert "Ray runtime started" in text and "Job completed successfully" in text, text[-2000:]
