"""Kill -9 the `trajtok shard` driver mid-job, run it again: the same samples, each once, byte for byte.

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


def test_kill_driver_and_rerun_gives_identical_shards(tmp_path: Path):
    manifest = write_dataset(
        SynthConfig(out=str(tmp_path / "synth"), videos=2 * SHARDS, frames=16, height=64, width=64, fps=8)
    )
    reference = tmp_path / "reference"
    _run(_shard_command(manifest, reference), tmp_path)

    out = tmp_path / "killed"
    driver = subprocess.Popen(
        _shard_command(manifest, out),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: Ray's helpers can be cleaned up after the kill
    )
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("*.stats.json")) and time.monotonic() < deadline:
            assert driver.poll() is None, "the job ended before it could be killed"
            time.sleep(0.02)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)  # the Ray processes the driver started
    done_at_kill = len(list(out.glob("*.stats.json")))
    assert 0 < done_at_kill < SHARDS, f"killed with {done_at_kill} of {SHARDS} shards done"
    assert not (out / "summary.json").exists()

    rerun = _run(_shard_command(manifest, out), tmp_path)
    assert "16 rows: 16 written" in rerun.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["shards_already_done"] >= done_at_kill
    assert summary["written"] == summary["rows"] == summary["clips"] == 2 * SHARDS

    expected, got = _samples(reference), _samples(out)
    assert sorted(got) == sorted(expected) and len(got) == 2 * SHARDS
    for key, entries in expected.items():
        assert got[key] == entries, f"{key} differs after kill and rerun"
    tars = sorted(p.name for p in reference.glob("*.tar"))
    assert tars == sorted(p.name for p in out.glob("*.tar")) and len(tars) == SHARDS
    for name in tars:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
