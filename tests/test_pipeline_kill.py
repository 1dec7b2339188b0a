"""Kill -9 the `trajtok shard` driver, or one of its workers, mid-job: the same samples, each once, byte
for byte.

The reference is an uninterrupted run of the same job into another folder. Tars are compared whole (the
encoder is deterministic and tar members carry fixed times), so frames and label maps are both covered.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import webdataset as wds

from trajtok.config import SynthConfig
from trajtok.data.synth import write_dataset

SHARDS = 8


def _shard_command(manifest: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "launch.cli",
        "shard",
        f"manifest={manifest}",
        f"out={out}",
        "clip.frames=8",
        "clip.size=64",
        "pipeline.clips_per_shard=2",
        "ray.num_cpus=2",
        "tracking.enabled=false",
        "run_dir=run",
    ]


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _samples(out: Path) -> dict[str, dict]:
    urls = sorted(str(p) for p in out.glob("shard-*.tar"))
    samples = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        key = sample.pop("__key__")
        assert key not in samples, f"{key} written twice"
        samples[key] = {k: v for k, v in sample.items() if not k.startswith("__")}
    return samples


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path, dict[str, dict]]:
    """The synthetic manifest and an uninterrupted run of the job on it."""
    work = tmp_path_factory.mktemp("kill")
    synth = SynthConfig(out=str(work / "synth"), videos=2 * SHARDS, frames=16, height=64, width=64, fps=8)
    manifest = write_dataset(synth)
    out = work / "reference"
    _run(_shard_command(manifest, out), work)
    return manifest, out, _samples(out)


def test_kill_driver_and_rerun_gives_identical_shards(reference, tmp_path: Path):
    manifest, reference_out, expected = reference
    out = tmp_path / "killed"
    driver = _start(_shard_command(manifest, out), tmp_path)
    try:
        _wait_for_a_finished_shard(driver, out)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        _kill_session(driver)
    done_at_kill = len(list(out.glob("*.stats.json")))
    assert 0 < done_at_kill < SHARDS, f"killed with {done_at_kill} of {SHARDS} shards done"
    assert not (out / "summary.json").exists()

    rerun = _run(_shard_command(manifest, out), tmp_path)
    assert "16 rows: 16 written" in rerun.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["shards_already_done"] >= done_at_kill
    assert summary["written"] == summary["rows"] == summary["clips"] == 2 * SHARDS
    _assert_same_shards(out, reference_out, expected)


def test_kill_a_worker_mid_job_loses_nothing(reference, tmp_path: Path):
    """A worker killed by the node (OOM killer, preemption): its shard is redone, no row is blamed."""
    manifest, reference_out, expected = reference
    out = tmp_path / "worker-killed"
    driver = _start(_shard_command(manifest, out), tmp_path)
    try:
        _wait_for_a_finished_shard(driver, out)
        workers = _session_processes(driver.pid, "ray::ShardWorker")
        assert workers, "no shard worker process found"
        os.kill(workers[0], signal.SIGKILL)
        assert driver.wait(timeout=240) == 0
    finally:
        _kill_session(driver)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["written"] == summary["rows"] == summary["clips"] == 2 * SHARDS
    assert summary["failed"] == 0 and summary["run"]["worker_restarts"] >= 1
    _assert_same_shards(out, reference_out, expected)


def _start(command: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own session: Ray's helpers can be found and cleaned up after a kill
    )


def _wait_for_a_finished_shard(driver: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + 240
    while not list(out.glob("*.stats.json")):
        assert driver.poll() is None, "the job ended before it could be interrupted"
        assert time.monotonic() < deadline, "no shard finished in time"
        time.sleep(0.02)


def _session_processes(session: int, prefix: str) -> list[int]:
    """Processes of a session whose command line starts with `prefix` (Ray names its workers `ray::Class`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[3]) == session and cmdline.startswith(prefix):
            found.append(int(entry.name))
    return sorted(found)


def _kill_session(driver: subprocess.Popen) -> None:
    """Whatever the driver's Ray left behind (its process group and session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(driver.pid, signal.SIGKILL)
    for pid in _session_processes(driver.pid, ""):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _assert_same_shards(out: Path, reference_out: Path, expected: dict[str, dict]) -> None:
    got = _samples(out)
    assert sorted(got) == sorted(expected) and len(got) == 2 * SHARDS
    for key, entries in expected.items():
        assert got[key] == entries, f"{key} differs from the uninterrupted run"
    tars = sorted(p.name for p in reference_out.glob("*.tar"))
    assert tars == sorted(p.name for p in out.glob("*.tar")) and len(tars) == SHARDS
    for name in tars:
        assert (out / name).read_bytes() == (reference_out / name).read_bytes(), name
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
